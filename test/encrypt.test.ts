/**
 * `encrypt`: the plaintext of a 100,000-row column encrypted in place while the application
 * writes through the library (an up-to-date instance and a stale one). Made to happen at the
 * `mid-column` pause: writes to rows the reader has already read (they must be left alone and
 * counted) and plaintext written behind the watermark (another pass must encrypt it). Then:
 * every acknowledged write reads back as written, no plaintext is left, the column is
 * `encrypted`. Also: the dry run, and SIGTERM → exit 130, resumed.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson, spawnCli } from './support/cli';
import { spawnUntil } from './support/rotate-helpers';
import { openKeyring, Keyring } from '../src/core/keyring-client';
import { censusColumn } from '../src/core/census';
import { sleep } from '../src/core/rewrite/util';

let inst: Installation;
const ROWS = 100_000;
const CREDS = 'public.creds.secret';
const BLOBS = 'public.vault.payload';

const original = (id: number) => `secret number ${id} ✓`;
const originalBytes = (id: number) => Buffer.from(`blob ${id}`);

beforeAll(async () => {
  inst = await createInstallation('encrypt');
  await inst.db.query(`
    CREATE TABLE public.creds (id int PRIMARY KEY, secret text);
    INSERT INTO public.creds SELECT g, CASE WHEN g % 1000 = 0 THEN NULL ELSE 'secret number ' || g || ' ✓' END FROM generate_series(1, ${ROWS}) g;
    CREATE TABLE public.vault (id int PRIMARY KEY, payload bytea);
    INSERT INTO public.vault SELECT g, convert_to('blob ' || g, 'UTF8') FROM generate_series(1, 3000) g;
  `);
  for (const c of [CREDS, BLOBS]) expect((await runCliJson(['columns', 'add', c], { env: inst.env })).json.state).toBe('encrypting');
}, 60_000);

afterAll(async () => {
  await inst?.cleanup();
});

async function stateOf(table: string): Promise<string> {
  return (await inst.db.query(`SELECT state FROM alation_keys.encrypted_columns WHERE table_name = $1`, [table])).rows[0].state;
}

test('encrypt --dry-run: plaintext per column, a sample, nothing changed', async () => {
  const r = await runCliJson(['encrypt', '--dry-run', '--skip-backup-check'], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, expect.any(String)]);
  expect(r.json.columns.find((c: any) => c.column === CREDS)).toMatchObject({ state: 'encrypting', plaintext: ROWS - ROWS / 1000, envelopes: 0, nulls: ROWS / 1000 });
  expect(r.json.sample.rows).toBeGreaterThan(0);
  expect(r.json.preflight).toEqual([]);
  const text = await runCli(['encrypt', '--dry-run', '--skip-backup-check'], { env: inst.env });
  expect(text.stdout).toMatch(/dry run: would encrypt under data key v1/);
  expect(text.stdout).toMatch(/nothing was changed/);
  expect((await censusColumn(inst.db.pool, { table_schema: 'public', table_name: 'creds', column_name: 'secret', storage: 'text' })).plaintext).toBe(ROWS - ROWS / 1000);
  expect((await inst.db.query(`SELECT count(*)::int AS n FROM alation_keys.jobs WHERE kind = 'encrypt'`)).rows[0].n).toBe(0);
});

test('SIGTERM during encrypt: exit 130, the job interrupted and resumable', async () => {
  const run = spawnUntil(['encrypt', BLOBS, '--skip-backup-check', '--settle-time', '0', '--batch-size', '500'], 'ALATION_KEYS_TEST_PAUSED mid-column', {
    env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: 'mid-column' },
  });
  await run.seen;
  run.child.kill('SIGTERM');
  const res = await run.exited;
  expect([res.code, res.stderr]).toEqual([130, expect.stringContaining('run `alation-keys encrypt` again to resume it')]);
  const job = (await inst.db.query(`SELECT id::int, state, detail FROM alation_keys.jobs WHERE kind = 'encrypt' ORDER BY id DESC LIMIT 1`)).rows[0];
  expect(job.state).toBe('interrupted');
  expect(job.detail.columns[BLOBS].rowsDone).toBe(500);
  expect(await stateOf('vault')).toBe('encrypting');
  const again = await runCliJson(['encrypt', BLOBS, '--skip-backup-check', '--settle-time', '0'], { env: inst.env });
  expect([again.code, again.stderr]).toEqual([0, expect.stringContaining(`resuming job ${job.id}`)]);
  expect(again.json).toMatchObject({ result: 'encrypted', jobId: job.id, resumed: true, rows: 3000 });
  expect(await stateOf('vault')).toBe('encrypted');
  await inst.keyring.refresh();
  const rows = (await inst.db.query('SELECT id, payload FROM public.vault ORDER BY id')).rows;
  for (const r of rows) expect(await inst.keyring.decrypt(r.payload, BLOBS)).toEqual(originalBytes(r.id));
});

test('100,000 plaintext values encrypted while a fresh and a stale instance write: nothing lost, no plaintext left, encrypted', async () => {
  const fresh = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 1 });
  const stale = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 3600 });
  // What each row must read back as; ids are split by writer (id % 3) so no row has two writers.
  const written = new Map<number, string>();
  let stop = false;
  const counts = { fresh: 0, stale: 0, raced: 0, behind: 0 };

  async function writer(k: Keyring, residue: number, count: () => void) {
    let n = 0;
    while (!stop) {
      let id = 1 + Math.floor(Math.random() * ROWS);
      id -= (id % 3) - residue;
      if (id < 1 || id > ROWS || id % 1000 === 0) continue; // the NULLs stay NULL
      const plain = `written by ${residue} #${n++}`;
      // Reads as the application does: the row's current value, plaintext or envelope.
      const before = (await inst.db.query('SELECT secret FROM public.creds WHERE id = $1', [id])).rows[0].secret;
      if (before !== null) expect(await k.decrypt(before, CREDS)).toBe(written.get(id) ?? original(id));
      await inst.db.query('UPDATE public.creds SET secret = $1 WHERE id = $2', [await k.encrypt(plain, CREDS), id]);
      written.set(id, plain);
      count();
      await sleep(3);
    }
  }

  const child = spawnCli(['encrypt', '--skip-backup-check', '--settle-time', '3s', '--batch-size', '500', '--json'], {
    env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: 'mid-column' },
  });
  let stdout = '';
  let stderr = '';
  let atPause: Promise<void> | undefined;
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => {
    stderr += d;
    if (!atPause && stderr.includes('ALATION_KEYS_TEST_PAUSED mid-column')) {
      atPause = (async () => {
        await sleep(1000); // the reader thread fills its two chunks of credit ahead of the writer
        const j = await inst.db.query(`SELECT detail FROM alation_keys.jobs WHERE kind = 'encrypt' AND state = 'running' ORDER BY id DESC LIMIT 1`);
        const wm = Number(j.rows[0].detail.columns[CREDS].watermark[0]);
        // Rows the reader has read but the writer not yet written: the application's writes win.
        for (let id = wm + 1 + ((2 - ((wm + 1) % 3) + 3) % 3); id <= wm + 300; id += 3) {
          if (id % 1000 === 0) continue;
          const plain = `raced ${id}`;
          await inst.db.query('UPDATE public.creds SET secret = $1 WHERE id = $2', [await fresh.encrypt(plain, CREDS), id]);
          written.set(id, plain);
          counts.raced++;
        }
        // Plaintext written behind the watermark (something not using the library): another pass.
        for (let id = 2; id < wm && counts.behind < 20; id += 3) {
          const plain = `plain behind ${id}`;
          await inst.db.query('UPDATE public.creds SET secret = $1 WHERE id = $2', [plain, id]);
          written.set(id, plain);
          counts.behind++;
        }
        child.kill('SIGUSR2');
      })();
    }
  });
  child.stdin!.end('');
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  const writers = [writer(fresh, 0, () => counts.fresh++), writer(stale, 1, () => counts.stale++)];
  const code = await exited;
  await atPause;
  stop = true;
  await Promise.all(writers);

  expect([code, stderr]).toEqual([0, expect.any(String)]);
  const summary = JSON.parse(stdout);
  expect(counts.fresh).toBeGreaterThan(20);
  expect(counts.stale).toBeGreaterThan(20);
  expect(counts.raced).toBeGreaterThan(50);
  expect(counts.behind).toBe(20);
  expect(summary).toMatchObject({ ok: true, result: 'encrypted', version: 1 });
  expect(summary.columns.map((c: any) => c.column)).toEqual([CREDS]);
  // The raced rows were left to the application and counted; the plaintext behind needed a pass.
  expect(summary.skippedConcurrent).toBeGreaterThanOrEqual(counts.raced);
  expect(summary.passes).toBeGreaterThan(1);
  expect(await stateOf('creds')).toBe('encrypted');

  const census = await censusColumn(inst.db.pool, { table_schema: 'public', table_name: 'creds', column_name: 'secret', storage: 'text' });
  expect(census).toMatchObject({ plaintext: 0, malformed: 0, nulls: ROWS / 1000, versions: { '1': { values: ROWS - ROWS / 1000 } } });
  // Every value, as an instance that learnt the new state reads it (plaintext is now an error).
  const reader = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile });
  try {
    const rows = (await inst.db.query('SELECT id, secret FROM public.creds ORDER BY id')).rows;
    let checked = 0;
    for (const r of rows) {
      if (r.id % 1000 === 0 && !written.has(r.id)) {
        expect(r.secret).toBeNull();
        continue;
      }
      const got = await reader.decrypt(r.secret, CREDS);
      if (got !== (written.get(r.id) ?? original(r.id))) throw new Error(`row ${r.id}: ${got} != ${written.get(r.id) ?? original(r.id)}`);
      checked++;
    }
    expect(checked).toBeGreaterThan(ROWS - ROWS / 1000 - 1);
  } finally {
    await reader.close();
    await fresh.close();
    await stale.close();
  }
  const job = (await inst.db.query(`SELECT state, to_version FROM alation_keys.jobs WHERE id = $1`, [summary.jobId])).rows[0];
  expect(job).toEqual({ state: 'succeeded', to_version: 1 });
  // Nothing left: a second run says so.
  const again = await runCli(['encrypt', '--skip-backup-check'], { env: inst.env });
  expect([again.code, again.stdout]).toEqual([0, expect.stringContaining('no column is encrypting')]);
}, 180_000);
