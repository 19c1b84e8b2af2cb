/**
 * One table, many workers: rotate --workers 4 cuts a column much larger than the rest into key
 * ranges, each with its own checkpoint in the job. kill -9 in the middle, then a re-run (with
 * another --workers) resumes every range where it stopped: nothing lost, every value under the
 * new key, every range done and added into the column's state.
 */
import { randomBytes } from 'node:crypto';
import { addColumn } from '../src/core/columns';
import { envelopeFromText, envelopeVersion } from '../src/crypto/envelope';
import { createInstallation, Installation } from './support/fixtures';
import { runCliJson } from './support/cli';
import { FAST, spawnUntil } from './support/rotate-helpers';

const BIG = 'public.big_profiles.payload';
const ROWS = 24_000;

let inst: Installation;
const originals = new Map<number, string>();

beforeAll(async () => {
  inst = await createInstallation('keyranges', { values: 300 });
  await inst.db.query('CREATE TABLE public.big_profiles (id bigint PRIMARY KEY, payload text)');
  await addColumn(inst.db.pool, BIG);
  await inst.keyring.refresh();
  for (let start = 1; start <= ROWS; start += 2000) {
    const ids: number[] = [];
    const values: string[] = [];
    for (let id = start; id < start + 2000; id++) {
      const plain = `profile ${id} ${randomBytes(24).toString('hex')}`;
      originals.set(id, plain);
      ids.push(id);
      values.push(await inst.keyring.encrypt(plain, BIG));
    }
    await inst.db.query('INSERT INTO public.big_profiles SELECT * FROM unnest($1::bigint[], $2::text[])', [ids, values]);
  }
  await inst.db.query('ANALYZE public.big_profiles');
}, 120_000);

afterAll(async () => {
  await inst?.cleanup();
});

async function jobDetail(): Promise<any> {
  const r = await inst.db.query(`SELECT detail FROM alation_keys.jobs WHERE kind = 'rotate' ORDER BY id DESC LIMIT 1`);
  return r.rows[0].detail;
}

/** Values of the big column under data key `version`, from their headers. */
async function valuesUnder(version: number): Promise<number> {
  const rows = await inst.db.query<{ payload: string }>('SELECT payload FROM public.big_profiles');
  return rows.rows.filter((r) => envelopeVersion(envelopeFromText(r.payload)) === version).length;
}

test('a column much larger than the rest is rotated as key ranges with their own checkpoints; kill -9 in the middle, resumed with other --workers: every range done, nothing lost', async () => {
  const run = spawnUntil(['rotate', ...FAST, '--workers', '4', '--batch-size', '500'], 'ALATION_KEYS_TEST_PAUSED mid-column', {
    env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: 'mid-column' },
  });
  await run.seen;
  run.child.kill('SIGKILL');
  expect((await run.exited).signal).toBe('SIGKILL');
  expect(run.stderr).toMatch(/public\.big_profiles\.payload: first pass in 4 key ranges/);

  // The kill left the ranges where their last committed chunk put them: the checkpoints and the
  // rows under the new key agree exactly (each chunk and its checkpoint commit together).
  const killed = await jobDetail();
  expect(killed.ranges[BIG]).toHaveLength(3);
  const rangeNames = [1, 2, 3, 4].map((i) => `${BIG} [${i}/4]`);
  const started = rangeNames.filter((n) => killed.columns[n]);
  expect(started.length).toBeGreaterThan(0);
  const checkpointed = started.reduce((a, n) => a + killed.columns[n].rowsDone, 0);
  expect(checkpointed).toBeGreaterThan(0);
  expect(await valuesUnder(2)).toBe(checkpointed);
  expect(rangeNames.some((n) => !killed.columns[n]?.done)).toBe(true);

  const resumed = await runCliJson(['rotate', ...FAST, '--workers', '1', '--batch-size', '500'], { env: inst.env });
  expect([resumed.code, resumed.stderr]).toEqual([0, expect.stringMatching(/resuming job \d+/)]);
  const after = await jobDetail();
  for (const n of rangeNames) expect(after.columns[n].done).toBe(true);
  expect(after.columns[BIG].done).toBe(true);
  const big = resumed.json.columns.find((c: { column: string }) => c.column === BIG);
  // The ranges cover the column exactly: no row twice (it would count as changed meanwhile), none
  // missed (a second pass would have found it).
  expect(big).toMatchObject({ rows: ROWS, skippedConcurrent: 0, passes: 1 });
  expect(resumed.json.valuesAfter).toEqual({ '2': expect.any(Number) });

  // Every value reads back as written, under the new key.
  await inst.keyring.refresh();
  const rows = await inst.db.query<{ id: string; payload: string }>('SELECT id::text, payload FROM public.big_profiles');
  expect(rows.rows).toHaveLength(ROWS);
  for (const row of rows.rows) {
    expect(await inst.keyring.decrypt(row.payload, BIG)).toBe(originals.get(Number(row.id)));
  }
}, 180_000);
