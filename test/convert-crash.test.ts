/**
 * kill -9 of real `encrypt` and `decrypt` processes at several points — held there by the
 * test pause points (job-start, chunk-read, mid-column, convergence) and once at a random
 * checkpoint of a throttled run — each time resumed by running the command again: the same job
 * goes on, nothing is lost, the column ends `encrypted`, then `removed` with the original
 * plaintext bytes back and no value naming any data key. Also: decrypt needs its confirmation.
 */
import { createHash } from 'node:crypto';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { spawnUntil } from './support/rotate-helpers';
import { censusColumn } from '../src/core/census';
import { sleep } from '../src/core/rewrite/util';

let inst: Installation;
const TEXT_ROWS = 4000;
const BYTEA_ROWS = 1500;
const SECRET = 'public.secrets.secret';
const BLOB = 'public.secrets.blob';
const FAST = ['--skip-backup-check', '--settle-time', '0', '--batch-size', '200'];

/** A digest of every stored value: equal before encrypt and after decrypt means the same bytes. */
async function digest(): Promise<string> {
  const r = await inst.db.query(`SELECT id, secret, blob FROM public.secrets ORDER BY id`);
  const h = createHash('sha256');
  for (const row of r.rows) h.update(`${row.id}|${row.secret ?? '∅'}|${row.blob ? (row.blob as Buffer).toString('hex') : '∅'}\n`);
  return h.digest('hex');
}

async function latestJob(kind: string) {
  const r = await inst.db.query(`SELECT id::int, state, detail FROM alation_keys.jobs WHERE kind = $1 ORDER BY id DESC LIMIT 1`, [kind]);
  return r.rows[0];
}

async function state(column: string): Promise<string> {
  return (await inst.db.query(`SELECT state FROM alation_keys.encrypted_columns WHERE table_name = 'secrets' AND column_name = $1`, [column])).rows[0].state;
}

async function killAt(args: string[], point: string): Promise<void> {
  const run = spawnUntil(args, `ALATION_KEYS_TEST_PAUSED ${point}`, { env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: point } });
  await run.seen;
  run.child.kill('SIGKILL');
  expect((await run.exited).signal).toBe('SIGKILL');
}

/** Kills a throttled run once it has checkpointed a random number (1–5) of chunks more. */
async function killAtRandomCheckpoint(args: string[], kind: string): Promise<void> {
  const rowsDone = async () => Object.values((await latestJob(kind))?.detail?.columns ?? {}).reduce((a: number, c: any) => a + (c.rowsDone ?? 0), 0);
  const before = await rowsDone();
  const run = spawnUntil([...args, '--max-rate', '2000', '--batch-size', '100'], `${kind === 'encrypt' ? 'encrypting' : 'decrypting'}`, { env: inst.env });
  await run.seen;
  const chunks = 1 + Math.floor(Math.random() * 5);
  for (let waited = 0; (await rowsDone()) < before + chunks * 100 && waited < 60_000; waited += 20) await sleep(20);
  run.child.kill('SIGKILL');
  await run.exited;
}

let original: string;

beforeAll(async () => {
  inst = await createInstallation('convcrash');
  await inst.db.query(`
    CREATE TABLE public.secrets (id int PRIMARY KEY, secret text, blob bytea);
    INSERT INTO public.secrets
      SELECT g, CASE WHEN g % 97 = 0 THEN NULL ELSE 'sëcret ' || g || repeat('x', g % 300) END,
                CASE WHEN g <= ${BYTEA_ROWS} THEN decode(md5(g::text) || md5((g * 7)::text), 'hex') END
        FROM generate_series(1, ${TEXT_ROWS}) g;
  `);
  for (const c of [SECRET, BLOB]) expect((await runCliJson(['columns', 'add', c], { env: inst.env })).json.state).toBe('encrypting');
  original = await digest();
}, 60_000);

afterAll(async () => {
  await inst?.cleanup();
});

test('encrypt killed with SIGKILL at job-start, chunk-read, mid-column, a random checkpoint and convergence; resumed: one job, nothing lost, encrypted', async () => {
  await killAt(['encrypt', ...FAST], 'job-start');
  const job = await latestJob('encrypt');
  expect(job.state).toBe('running'); // the process died without a word
  expect(await state('secret')).toBe('encrypting');
  await killAt(['encrypt', ...FAST], 'chunk-read');
  await killAt(['encrypt', ...FAST], 'mid-column');
  await killAtRandomCheckpoint(['encrypt', ...FAST], 'encrypt');
  await killAt(['encrypt', ...FAST], 'convergence');
  const after = await latestJob('encrypt');
  expect(after.id).toBe(job.id);
  const done = Object.values(after.detail.columns).reduce((a: number, c: any) => a + c.rowsDone, 0);
  expect(done).toBeGreaterThan(0);

  const r = await runCliJson(['encrypt', ...FAST], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, expect.stringContaining(`resuming job ${job.id}`)]);
  expect(r.json).toMatchObject({ ok: true, result: 'encrypted', jobId: job.id, resumed: true });
  expect((await inst.db.query(`SELECT count(*)::int AS n FROM alation_keys.jobs WHERE kind = 'encrypt'`)).rows[0].n).toBe(1);
  expect([await state('secret'), await state('blob')]).toEqual(['encrypted', 'encrypted']);
  for (const [column, storage] of [['secret', 'text'], ['blob', 'bytea']] as const) {
    const c = await censusColumn(inst.db.pool, { table_schema: 'public', table_name: 'secrets', column_name: column, storage });
    expect([c.plaintext, c.malformed]).toEqual([0, 0]);
  }
  // Every value decrypts to what was there before.
  await inst.keyring.refresh();
  const rows = (await inst.db.query(`SELECT id, secret, blob FROM public.secrets ORDER BY id`)).rows;
  const h = createHash('sha256');
  for (const row of rows) {
    const secret = await inst.keyring.decrypt(row.secret, SECRET);
    const blob = (await inst.keyring.decrypt(row.blob, BLOB)) as unknown as Buffer | null;
    h.update(`${row.id}|${secret ?? '∅'}|${blob ? blob.toString('hex') : '∅'}\n`);
  }
  expect(h.digest('hex')).toBe(original);
}, 240_000);

test('decrypt without a terminal and without --yes: exit 2, nothing changed', async () => {
  const before = await digest();
  const r = await runCli(['decrypt', SECRET, '--skip-backup-check'], { env: inst.env });
  expect(r.code).toBe(2);
  expect(r.stderr).toContain('confirmation needed');
  expect(r.stderr).toContain('--yes');
  expect(r.stderr).not.toMatch(/\n\s+at /);
  expect(await state('secret')).toBe('encrypted');
  expect(await digest()).toBe(before);
  expect((await inst.db.query(`SELECT count(*)::int AS n FROM alation_keys.jobs WHERE kind = 'decrypt'`)).rows[0].n).toBe(0);
});

test('decrypt killed with SIGKILL at job-start, mid-column, a random checkpoint and convergence; resumed: the original plaintext bytes, removed, no value names a data key', async () => {
  const args = (column: string) => ['decrypt', column, '--yes', ...FAST];
  await killAt(args(SECRET), 'job-start');
  const job = await latestJob('decrypt');
  expect(await state('secret')).toBe('decrypting');
  await killAt(args(SECRET), 'mid-column');
  await killAtRandomCheckpoint(args(SECRET), 'decrypt');
  await killAt(args(SECRET), 'convergence');
  expect((await latestJob('decrypt')).id).toBe(job.id);
  const r = await runCliJson(args(SECRET), { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, expect.stringContaining(`resuming job ${job.id}`)]);
  expect(r.json).toMatchObject({ ok: true, result: 'decrypted', jobId: job.id, resumed: true, column: SECRET });
  expect(await state('secret')).toBe('removed');

  // The bytea column in one go, with a settle wait before the first value.
  const b = await runCliJson(['decrypt', BLOB, '--yes', '--skip-backup-check', '--settle-time', '2s'], { env: inst.env });
  expect([b.code, b.stderr]).toEqual([0, expect.stringMatching(/waiting [12]s for application instances to see public\.secrets\.blob as decrypting/)]);
  expect(await state('blob')).toBe('removed');

  expect(await digest()).toBe(original);
  for (const [column, storage] of [['secret', 'text'], ['blob', 'bytea']] as const) {
    const c = await censusColumn(inst.db.pool, { table_schema: 'public', table_name: 'secrets', column_name: column, storage });
    expect([c.envelopes, c.versions]).toEqual([0, {}]);
  }
  const jobs = await inst.db.query(`SELECT state FROM alation_keys.jobs WHERE kind = 'decrypt' ORDER BY id`);
  expect(jobs.rows.map((j) => j.state)).toEqual(['succeeded', 'succeeded']);
  // The library, which learnt the state on its refresh, writes and reads plaintext.
  await inst.keyring.refresh();
  expect(await inst.keyring.encrypt('plain now', SECRET)).toBe('plain now');
}, 240_000);
