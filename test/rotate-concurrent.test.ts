/**
 * The application keeps writing during a rotation: an up-to-date instance (refreshes its
 * keyring every second) and a stale one (still encrypting with the old key) update values
 * through the library while `rotate` runs. None of their writes may be lost, and the
 * rotation must converge: no value under an old key at the end. The two races this is about
 * are made to happen with pause points (src/core/test-hooks.ts), never hoped for: a row
 * changed between the read of its chunk and the chunk's write (`chunk-read`), and values
 * written under the old key once the first pass is over (`convergence`).
 */
import { createInstallation, Installation } from './support/fixtures';
import { openKeyring, Keyring } from '../src/core/keyring-client';
import { BLOBS, CREDENTIALS, DOCUMENTS, RosemetaColumn, verifyRosemeta } from '../scripts/lib/rosemeta';
import { keyringRows } from './support/rotate-helpers';
import { sleep } from '../src/core/rewrite/util';
import { spawnCli } from './support/cli';

let inst: Installation;
const installations: Installation[] = [];

afterAll(async () => {
  for (const i of installations) await i.cleanup();
});

const TABLES: Record<RosemetaColumn, [string, string]> = {
  [CREDENTIALS]: ['public.credentials', 'secret'],
  [DOCUMENTS]: ['public.documents', 'body'],
  [BLOBS]: ['public.blobs', 'payload'],
};

function newPlain(column: RosemetaColumn, id: number, n: number): string | Buffer {
  const s = `rewritten ${column} ${id} #${n} ✓`;
  return column === BLOBS ? Buffer.from(s) : s;
}

test('concurrent writers lose nothing; a row changed between its chunk\'s read and write is skipped and counted; stale writes are re-rotated', async () => {
  inst = await createInstallation('rotconc', { values: 4000 });
  installations.push(inst);
  const overrides = new Map<string, string | Buffer | null>();
  const fresh = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 1 });
  const stale = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 3600 });
  let stop = false;
  let writes = 0;
  let staleWrites = 0;
  const shape = inst.shape!;
  const maxId: Record<RosemetaColumn, number> = { [CREDENTIALS]: shape.credentials, [DOCUMENTS]: shape.documents, [BLOBS]: shape.blobs };

  /** Writes rows just ahead of the rotation's watermark, where it has read but not yet written. */
  async function writer(keyring: Keyring, isStale: () => boolean, count: () => void) {
    let n = 0;
    while (!stop) {
      const j = await inst.db.query(`SELECT detail FROM alation_keys.jobs WHERE kind = 'rotate' AND state = 'running' ORDER BY id DESC LIMIT 1`);
      const cols = j.rows[0]?.detail?.columns ?? {};
      for (const column of [CREDENTIALS, DOCUMENTS, BLOBS] as RosemetaColumn[]) {
        const wm = Number(cols[column]?.watermark?.[0] ?? 0);
        let id = Math.min(maxId[column], wm + 1 + Math.floor(Math.random() * 150));
        if (column === DOCUMENTS) id = Math.max(2, id - (id % 2)); // even ids; the stale writer takes odd ones
        const plain = newPlain(column, id, n++);
        const [table, col] = TABLES[column];
        await inst.db.query(`UPDATE ${table} SET ${col} = $1 WHERE id = $2`, [await keyring.encrypt(plain as any, column), id]);
        overrides.set(`${column}/${id}`, plain);
        count();
      }
      await sleep(isStale() ? 30 : 5);
    }
  }

  // At the `chunk-read` pause (the first chunk of a column read, not yet written) a row of that
  // chunk is updated: the chunk's compare-and-swap must leave it alone and count it. Then both
  // instances start writing. At the `convergence` pause (the first pass is over) the stale
  // instance writes values under v1: another pass must rewrite them. SIGUSR2 carries on.
  const child = spawnCli(['rotate', '--skip-backup-check', '--settle-time', '6s', '--batch-size', '100', '--max-rate', '1500', '--workers', '2', '--json'], {
    env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: 'chunk-read,convergence' },
  });
  let stdout = '';
  let stderr = '';
  let changedInChunk: Promise<{ column: RosemetaColumn; id: number }> | undefined;
  let staleAfterFirstPass: Promise<void> | undefined;
  let w1: Promise<void> = Promise.resolve();
  let w2: Promise<void> = Promise.resolve();
  const startWriters = () => {
    const started = Date.now();
    w1 = writer(fresh, () => false, () => writes++);
    // The stale instance writes under v1 for the first 3 s of the rotation only.
    w2 = (async () => {
      const staleStop = () => Date.now() - started > 3000;
      while (!stop && !staleStop() && !staleAfterFirstPass) {
        const id = 1 + 2 * Math.floor((Math.random() * (shape.documents - 1)) / 2);
        const plain = newPlain(DOCUMENTS, id, 100000 + staleWrites);
        await inst.db.query(`UPDATE public.documents SET body = $1 WHERE id = $2`, [await stale.encrypt(plain as string, DOCUMENTS), id]);
        overrides.set(`${DOCUMENTS}/${id}`, plain);
        staleWrites++;
        await sleep(20);
      }
    })();
  };
  /** Runs `step` at a pause; should it fail, the paused child is killed rather than left waiting. */
  const atPause = <T>(step: () => Promise<T>): Promise<T> =>
    step().catch((err) => {
      child.kill('SIGKILL');
      throw err;
    });
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => {
    stderr += d;
    const read = /ALATION_KEYS_TEST_PAUSED chunk-read (\S+) (\[[^\]]*\]) (\[[^\]]*\])/.exec(stderr);
    if (!changedInChunk && read) {
      changedInChunk = atPause(async () => {
        const column = read[1] as RosemetaColumn;
        const [table, col] = TABLES[column];
        const [lo, hi] = [JSON.parse(read[2])[0], JSON.parse(read[3])[0]].map(Number);
        const r = await inst.db.query(`SELECT id FROM ${table} WHERE id BETWEEN $1 AND $2 AND ${col} IS NOT NULL ORDER BY id LIMIT 1`, [lo, hi]);
        const id = Number(r.rows[0].id);
        const plain = newPlain(column, id, 300000);
        await inst.db.query(`UPDATE ${table} SET ${col} = $1 WHERE id = $2`, [await fresh.encrypt(plain as any, column), id]);
        overrides.set(`${column}/${id}`, plain);
        startWriters();
        child.kill('SIGUSR2');
        return { column, id };
      });
    }
    if (!staleAfterFirstPass && stderr.includes('ALATION_KEYS_TEST_PAUSED convergence')) {
      staleAfterFirstPass = atPause(async () => {
        await w2; // the early stale writer stops first, so no row has two writers at once
        for (let i = 0; i < 20; i++) {
          const id = 1 + 2 * Math.floor((Math.random() * (shape.documents - 1)) / 2);
          const plain = newPlain(DOCUMENTS, id, 200000 + i);
          await inst.db.query(`UPDATE public.documents SET body = $1 WHERE id = $2`, [await stale.encrypt(plain as string, DOCUMENTS), id]);
          overrides.set(`${DOCUMENTS}/${id}`, plain);
          staleWrites++;
        }
        child.kill('SIGUSR2');
      });
    }
  });
  child.stdin!.end('');
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));

  const code = await exited;
  const changed = await changedInChunk;
  await staleAfterFirstPass;
  stop = true;
  await Promise.all([w1, w2]);
  await fresh.close();
  await stale.close();

  expect([code, stderr]).toEqual([0, expect.any(String)]);
  const summary = JSON.parse(stdout);
  expect(writes).toBeGreaterThan(50);
  expect(staleWrites).toBeGreaterThan(10);
  // The row changed between its chunk's read and write was left alone (and counted), not overwritten.
  expect(changed).toBeDefined();
  expect(summary.columns.find((c: any) => c.column === changed!.column).skippedConcurrent).toBeGreaterThan(0);
  expect(summary.skippedConcurrent).toBeGreaterThan(0);
  // The stale instance's v1 values needed another pass.
  expect(summary.passes).toBeGreaterThan(1);
  expect(summary.valuesAfter).toEqual({ '2': expect.any(Number) });
  expect(summary.retiredVersions).toEqual([1]);

  // Every write of both instances survived, every value decrypts, all under v2.
  await inst.keyring.refresh();
  const report = await verifyRosemeta(inst.db.pool, inst.keyring, shape, { overrides });
  expect(report.mismatched).toEqual([]);
  expect(report.missing).toEqual([]);
  for (const perVersion of Object.values(report.versions)) expect(Object.keys(perVersion)).toEqual(['2']);
  expect((await keyringRows(inst.db.pool)).map((k) => `${k.version}:${k.state}`)).toEqual(['1:retired', '2:primary']);
});
