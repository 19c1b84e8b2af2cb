/**
 * `encrypt` and envelopes that do not decrypt among the plaintext of an `encrypting` column:
 * without --skip-undecryptable it stops at the first (exit 5 naming the row) before writing
 * that chunk; with it, every plaintext value is encrypted, the bad ones stay untouched byte for
 * byte and are listed in the job, and it exits 5 naming the count and `verify`.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { censusColumn } from '../src/core/census';

let inst: Installation;
const COLUMN = 'public.notes.body';
const ROWS = 3000;
const BAD = [700, 1900];

beforeAll(async () => {
  inst = await createInstallation('encundec');
  await inst.db.query(`CREATE TABLE public.notes (id int PRIMARY KEY, body text)`);
  // Registered on an empty table (encrypted), so the library can write envelopes for the bad rows.
  expect((await runCliJson(['columns', 'add', COLUMN], { env: inst.env })).json.state).toBe('encrypted');
  await inst.keyring.refresh();
  await inst.db.query(`INSERT INTO public.notes SELECT g, 'note ' || g FROM generate_series(1, ${ROWS}) g`);
  for (const id of BAD) {
    const sealed = (await inst.keyring.encrypt(`good ${id}`, COLUMN)) as string;
    // A flipped bit in the ciphertext: still an envelope, no longer authenticates.
    const bytes = Buffer.from(sealed.slice(4), 'base64');
    bytes[25] ^= 0x01;
    await inst.db.query('UPDATE public.notes SET body = $1 WHERE id = $2', [`ak1:${bytes.toString('base64')}`, id]);
  }
  await inst.db.query(`UPDATE alation_keys.encrypted_columns SET state = 'encrypting' WHERE table_name = 'notes'`);
}, 60_000);

afterAll(async () => {
  await inst?.cleanup();
});

async function bodies(ids: number[]): Promise<string[]> {
  return (await inst.db.query('SELECT body FROM public.notes WHERE id = ANY($1) ORDER BY id', [ids])).rows.map((r) => r.body);
}

test('without --skip-undecryptable: exit 5 at the first bad value, naming the row and the flag', async () => {
  const r = await runCli(['encrypt', COLUMN, '--skip-backup-check', '--settle-time', '0', '--batch-size', '500'], { env: inst.env });
  expect(r.code).toBe(5);
  expect(r.stderr).toMatch(/value in public\.notes\.body at id=700 failed authentication under data key v1; the encryption stopped before writing its chunk/);
  expect(r.stderr).toContain('--skip-undecryptable');
});

test('with --skip-undecryptable: everything else encrypted, the bad values untouched and listed, exit 5, the column encrypted', async () => {
  const before = await bodies(BAD);
  const r = await runCliJson(['encrypt', COLUMN, '--skip-backup-check', '--settle-time', '0', '--batch-size', '500', '--skip-undecryptable'], { env: inst.env });
  expect(r.code).toBe(5);
  expect(r.json).toMatchObject({ ok: false, result: 'encrypted' });
  expect(r.json.undecryptable).toEqual(BAD.map((id) => ({ column: COLUMN, key: { id: String(id) }, reason: 'authentication', version: 1 })));
  expect(r.stderr).toMatch(/2 values do not decrypt and were left untouched \(--skip-undecryptable\); data key v1 stays active for them/);
  expect(await bodies(BAD)).toEqual(before);
  const c = await censusColumn(inst.db.pool, { table_schema: 'public', table_name: 'notes', column_name: 'body', storage: 'text' });
  expect([c.plaintext, c.envelopes]).toEqual([0, ROWS]);
  const job = (await inst.db.query(`SELECT state, error, detail FROM alation_keys.jobs WHERE id = $1`, [r.json.jobId])).rows[0];
  expect(job.state).toBe('failed');
  expect(job.detail.undecryptable).toHaveLength(2);
  expect((await inst.db.query(`SELECT state FROM alation_keys.encrypted_columns WHERE table_name = 'notes'`)).rows[0].state).toBe('encrypted');
  await inst.keyring.refresh();
  const good = (await inst.db.query('SELECT id, body FROM public.notes WHERE id IN (1, 1500, 3000) ORDER BY id')).rows;
  for (const row of good) expect(await inst.keyring.decrypt(row.body, COLUMN)).toBe(`note ${row.id}`);
});
