/** mapWithConcurrency: results in input order, never more than the limit in flight, no call left running after a failure. */
import { mapWithConcurrency } from '../src/core/concurrency';

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

test('results come back in the order of the items, whatever order the calls finish in', async () => {
  const gates = [deferred(), deferred(), deferred()];
  const run = mapWithConcurrency([0, 1, 2], 3, async (i) => {
    await gates[i].promise;
    return `item ${i}`;
  });
  gates[2].resolve();
  gates[1].resolve();
  gates[0].resolve();
  expect(await run).toEqual(['item 0', 'item 1', 'item 2']);
});

test('never more than the limit run at once, and every item runs', async () => {
  let inFlight = 0;
  let most = 0;
  const seen: number[] = [];
  await mapWithConcurrency([...Array(7).keys()], 2, async (i) => {
    inFlight++;
    most = Math.max(most, inFlight);
    await new Promise((r) => setImmediate(r));
    seen.push(i);
    inFlight--;
  });
  expect(most).toBe(2);
  expect(seen.sort()).toEqual([0, 1, 2, 3, 4, 5, 6]);
});

test('the first failure is thrown after the calls already started have settled, and no new one starts', async () => {
  const slow = deferred();
  let slowDone = false;
  const started: number[] = [];
  const run = mapWithConcurrency([0, 1, 2, 3], 2, async (i) => {
    started.push(i);
    if (i === 0) throw new Error('item 0 failed');
    await slow.promise;
    slowDone = true;
  });
  let settled = false;
  run.catch(() => (settled = true));
  await new Promise((r) => setImmediate(r));
  expect(settled).toBe(false);
  slow.resolve();
  await expect(run).rejects.toThrow('item 0 failed');
  expect(slowDone).toBe(true);
  expect(started).toEqual([0, 1]);
});
