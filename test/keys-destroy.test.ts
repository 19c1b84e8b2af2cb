/**
 * `keys destroy` and the backup/rotation round trip: rotate --backup, destroying the old key
 * (refusals, warning about backups that need it), and verify telling which backups can still
 * be restored with today's keys.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client } from 'pg';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { verifyRosemeta } from '../scripts/lib/rosemeta';
import { addPrimaryDataKeyInTransaction } from '../src/core/keyring';
import { LocalKeyProvider } from '../src/kms';
import { createMasterKeyFile } from '../src/kms/master-key-file';
// Every test here takes or reads backups: skipped, with the reason, where no pg_dump fits the server.
import { describeWithPgDump as describe, testWithPgDump as test } from './support/pg-dump';

let inst: Installation;
let out: string;
let preRotation: { jobId: number; file: string };
let postRotation: { jobId: number; file: string };
let v1Secret: string;
let v2Secret: string;

beforeAll(async () => {
  inst = await createInstallation('keys', { values: 200 });
  out = path.join(inst.dir, 'backups');
});

afterAll(async () => {
  await inst?.cleanup();
});

async function keyRow(version: number) {
  const r = await inst.db.query(
    'SELECT state, wrapped_key, destroyed_at, retired_at FROM alation_keys.keyring WHERE version = $1',
    [version],
  );
  return r.rows[0];
}

async function secretOf(id: number): Promise<string> {
  return (await inst.db.query('SELECT secret FROM public.credentials WHERE id = $1', [id])).rows[0].secret;
}

test('rotate without a fresh backup: exit 3; rotate --backup takes one under its lock, then rotates', async () => {
  v1Secret = await secretOf(1);
  const refused = await runCli(['rotate', '--settle-time', '0'], { env: inst.env });
  expect(refused.code).toBe(3);
  expect((await inst.db.query('SELECT count(*)::int AS n FROM alation_keys.keyring')).rows[0].n).toBe(1);

  const r = await runCli(['rotate', '--backup', '--backup-dir', out, '--settle-time', '0'], { env: inst.env });
  expect(r.code).toBe(0);
  const jobs = (await inst.db.query(`SELECT id::int, state, detail FROM alation_keys.jobs WHERE kind = 'backup' ORDER BY id`)).rows;
  expect(jobs.length).toBe(1);
  expect(jobs[0].state).toBe('succeeded');
  expect(jobs[0].detail.manifest.keys.needed_versions).toEqual([1]);
  expect(fs.existsSync(jobs[0].detail.path)).toBe(true);
  preRotation = { jobId: jobs[0].id, file: jobs[0].detail.path };
  expect((await keyRow(1)).state).toBe('retired');
  expect((await keyRow(2)).state).toBe('primary');
  v2Secret = await secretOf(1);
  expect(v2Secret).not.toBe(v1Secret);

  // A backup after the rotation needs only the new key; status no longer asks for one.
  const b = await runCliJson(['backup', '--out', out], { env: inst.env });
  expect(b.code).toBe(0);
  expect(b.json.manifest.keys.needed_versions).toEqual([2]);
  expect(b.json.manifest.keys.deks.map((d: any) => [d.version, d.state, d.needed])).toEqual([
    [1, 'retired', false],
    [2, 'primary', true],
  ]);
  postRotation = { jobId: b.json.jobId, file: b.json.file };
});

describe('keys destroy refuses (exit 3, nothing changes)', () => {
  test('the primary key', async () => {
    const r = await runCli(['keys', 'destroy', '2', '--yes'], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/data key v2 is the primary key/);
    expect(r.stderr).toMatch(/only retired keys can be destroyed/);
    expect((await keyRow(2)).state).toBe('primary');
  });

  test('a retired key that a value still uses, naming the column and count', async () => {
    await inst.db.query('UPDATE public.credentials SET secret = $1 WHERE id = 1', [v1Secret]);
    try {
      const r = await runCli(['keys', 'destroy', '1', '--yes'], { env: inst.env });
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/1 value\(s\) still use data key v1: public\.credentials\.secret 1/);
      const row = await keyRow(1);
      expect(row.state).toBe('retired');
      expect(row.wrapped_key).not.toBeNull();
    } finally {
      await inst.db.query('UPDATE public.credentials SET secret = $1 WHERE id = 1', [v2Secret]);
    }
  });

  test('while another job holds the maintenance lock', async () => {
    const c = new Client({ connectionString: inst.db.url, application_name: 'busy' });
    await c.connect();
    try {
      await c.query('SELECT pg_advisory_lock($1, $2)', [0x414b4559, 1]);
      const r = await runCli(['keys', 'destroy', '1', '--yes'], { env: inst.env });
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/maintenance lock/);
      expect((await keyRow(1)).state).toBe('retired');
    } finally {
      await c.end();
    }
  });

  test('bad or unknown versions: exit 2', async () => {
    expect((await runCli(['keys', 'destroy', 'abc', '--yes'], { env: inst.env })).code).toBe(2);
    const r = await runCli(['keys', 'destroy', '99', '--yes'], { env: inst.env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/there is no data key v99/);
  });

  test('without a terminal and without --yes: exit 2, after warning about the backups', async () => {
    const r = await runCli(['keys', 'destroy', '1'], { env: inst.env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/confirmation needed/);
    expect(r.stderr).toMatch(/1 recorded backup\(s\) need data key v1/);
    expect((await keyRow(1)).state).toBe('retired');
  });
});

test('keys destroy warns, listing the backups that need the key, then destroys it', async () => {
  const r = await runCli(['keys', 'destroy', '1', '--yes'], { env: inst.env });
  expect(r.code).toBe(0);
  expect(r.stderr).toMatch(/1 recorded backup\(s\) need data key v1/);
  expect(r.stderr).toContain(`job ${preRotation.jobId}`);
  expect(r.stderr).toContain(preRotation.file);
  expect(r.stderr).not.toContain(postRotation.file);
  expect(r.stdout).toMatch(/destroyed data key v1/);
  const row = await keyRow(1);
  expect(row.state).toBe('destroyed');
  expect(row.wrapped_key).toBeNull();
  expect(row.destroyed_at).toBeInstanceOf(Date);
  const job = (await inst.db.query(`SELECT state, from_version FROM alation_keys.jobs WHERE kind = 'keys-destroy' ORDER BY id DESC LIMIT 1`)).rows[0];
  expect(job).toEqual({ state: 'succeeded', from_version: 1 });
  // The application still reads every value (none used v1).
  await inst.keyring.refresh();
  const report = await verifyRosemeta(inst.db.pool, inst.keyring, inst.shape!);
  expect(report.mismatched).toEqual([]);
  expect(report.checked).toBeGreaterThan(150);
  const list = await runCliJson(['keys', 'list'], { env: inst.env });
  expect(list.json.keys.find((k: any) => k.version === 1)).toMatchObject({ state: 'destroyed' });

  const again = await runCli(['keys', 'destroy', '1', '--yes'], { env: inst.env });
  expect(again.code).toBe(0);
  expect(again.stdout).toMatch(/already destroyed on .*; nothing to do/);
});

test('verify: the backup that needs the destroyed key fails with exit 5; the later one passes', async () => {
  const bad = await runCliJson(['backup', 'verify', preRotation.file], { env: inst.env });
  expect(bad.code).toBe(5);
  expect(bad.json.ok).toBe(false);
  expect(bad.json.checks.find((c: any) => c.check === 'checksum').ok).toBe(true);
  expect(bad.json.keys).toEqual([expect.objectContaining({ version: 1, ok: false, stateNow: 'destroyed' })]);
  expect(bad.stderr).toMatch(/could not be restored with today's keys/);

  const good = await runCliJson(['backup', 'verify', postRotation.file], { env: inst.env });
  expect(good.code).toBe(0);
  expect(good.json.keys).toEqual([expect.objectContaining({ version: 2, ok: true })]);

  const human = await runCli(['backup', 'verify', preRotation.file], { env: inst.env });
  expect(human.code).toBe(5);
  expect(human.stdout).toMatch(/FAIL keys +v1: data key v1 was destroyed/);
});

test('verify fails (exit 5) when the master key that wraps a needed key is not in the master key file', async () => {
  const other = path.join(inst.dir, 'other.key');
  createMasterKeyFile(other);
  const r = await runCliJson(['backup', 'verify', postRotation.file], { env: { ...inst.env, ALATION_KEYS_MASTER_KEY_FILE: other } });
  expect(r.code).toBe(5);
  expect(r.json.keys[0].detail).toMatch(/master key mk_[0-9a-f]+ .* is not in/);
});

test('an active key is refused too', async () => {
  await addPrimaryDataKeyInTransaction(inst.db.pool, new LocalKeyProvider(inst.masterKeyFile));
  const r = await runCli(['keys', 'destroy', '2', '--yes'], { env: inst.env });
  expect(r.code).toBe(3);
  expect(r.stderr).toMatch(/data key v2 is active/);
  expect((await keyRow(2)).state).toBe('active');
  // status warns that the newest backup predates the new primary key.
  const s = await runCliJson(['status', '--no-provider-check'], { env: inst.env });
  expect(s.json.lastBackup.predatesPrimary).toBe(true);
  expect(s.json.attention.join('\n')).toMatch(/predates the primary data key v3/);
});
