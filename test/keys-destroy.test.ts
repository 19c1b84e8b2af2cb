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
import { DOCUMENTS, verifyRosemeta } from '../scripts/lib/rosemeta';
import { addPrimaryDataKeyInTransaction } from '../src/core/keyring';
import { LocalKeyProvider } from '../src/kms';
import { createMasterKeyFile, readMasterKeyFile } from '../src/kms/master-key-file';
import { parseDumpKeyring } from '../src/core/backup-catalog';
import { unwrapDataKey } from '../src/crypto/wrap';
import { execFileSync, spawnSync } from 'node:child_process';
import * as os from 'node:os';
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
      expect(r.stderr).toMatch(/1 value still uses data key v1: public\.credentials\.secret 1/);
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
      const r = await runCli(['keys', 'destroy', '1', '--force', '--yes'], { env: inst.env });
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/maintenance lock/);
      expect((await keyRow(1)).state).toBe('retired');
    } finally {
      await c.end();
    }
  });

  test('while a job whose client process is gone holds the lock: names the dead pid and pg_terminate_backend(pid)', async () => {
    // A pid that was just used and has exited: the "client" of the orphaned job.
    const gone = spawnSync(process.execPath, ['-e', '0']).pid!;
    const c = new Client({ connectionString: inst.db.url, application_name: 'alation-keys/rotate' });
    await c.connect();
    const job = (
      await inst.db.query(`INSERT INTO alation_keys.jobs (kind, state, actor) VALUES ('rotate', 'running', $1) RETURNING id`, [
        `someone@${os.hostname()} pid ${gone}`,
      ])
    ).rows[0].id;
    try {
      await c.query('SELECT pg_advisory_lock($1, $2)', [0x414b4559, 1]);
      const backend = (await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
      const r = await runCli(['keys', 'destroy', '1', '--force', '--yes'], { env: inst.env });
      expect(r.code).toBe(3);
      expect(r.stderr).toContain(`its client process ${gone} on this host is gone`);
      expect(r.stderr).toContain(`SELECT pg_terminate_backend(${backend})`);
    } finally {
      await c.end();
      await inst.db.query('DELETE FROM alation_keys.jobs WHERE id = $1', [job]);
    }
  });

  test('bad or unknown versions: exit 2', async () => {
    expect((await runCli(['keys', 'destroy', 'abc', '--yes'], { env: inst.env })).code).toBe(2);
    const r = await runCli(['keys', 'destroy', '99', '--yes'], { env: inst.env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/there is no data key v99/);
  });

  test('while a recorded backup younger than --backup-retention needs it, naming the backup', async () => {
    const r = await runCli(['keys', 'destroy', '1', '--yes'], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain(`1 recorded backup younger than the retention needs data key v1: job ${preRotation.jobId}`);
    expect(r.stderr).toContain(preRotation.file);
    expect(r.stderr).toContain('--force');
    expect((await keyRow(1)).state).toBe('retired');
  });

  test('without a terminal and without --yes: exit 2, after saying what still holds the key', async () => {
    const r = await runCli(['keys', 'destroy', '1', '--force'], { env: inst.env });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/confirmation needed/);
    expect(r.stderr).toMatch(/1 backup within the retention needs data key v1/);
    expect((await keyRow(1)).state).toBe('retired');
  });
});

test('keys destroy --force says which dumps still hold the key (and under which master key), then destroys it', async () => {
  const masterKeysBefore = readMasterKeyFile(inst.masterKeyFile).keys.map((k) => k.id);
  const r = await runCli(['keys', 'destroy', '1', '--force', '--yes'], { env: inst.env });
  expect(r.code).toBe(0);
  expect(r.stderr).toMatch(/still holding data key v1 after this \(wrapped\)/);
  expect(r.stderr).toContain(`backup job ${preRotation.jobId}`);
  expect(r.stderr).toContain(preRotation.file);
  expect(r.stderr).toContain(`backup job ${postRotation.jobId}`);
  expect(r.stderr).toContain(postRotation.file);
  expect(r.stderr).toContain(`wrapped under ${masterKeysBefore[0]}, needed to restore it`);
  expect(r.stdout).toMatch(/destroyed data key v1/);
  // The remaining keys were re-wrapped under a new master key.
  const after = readMasterKeyFile(inst.masterKeyFile).keys.map((k) => k.id);
  expect(after.slice(0, masterKeysBefore.length)).toEqual(masterKeysBefore);
  expect(after).toHaveLength(masterKeysBefore.length + 1);
  expect((await inst.db.query(`SELECT kek_id FROM alation_keys.keyring WHERE version = 2`)).rows[0].kek_id).toBe(after[after.length - 1]);
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
  await createMasterKeyFile(other);
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

/** The wrapped bytes of DEK `version` inside a dump, as pg_restore gives them back. */
function wrappedInDump(file: string, version: number): { wrapped: Buffer; kekId: string } {
  const sql = execFileSync('pg_restore', ['--data-only', '--schema=alation_keys', '--table=keyring', '--file=-', file], { encoding: 'utf8' });
  const row = parseDumpKeyring(sql).find((k) => k.version === version);
  if (!row?.wrapped) throw new Error(`v${version} not in ${file}`);
  return { wrapped: row.wrapped, kekId: row.kekId };
}

test('after destroy + prune-master-keys, no master key left in the file unwraps the destroyed key taken from either earlier dump', async () => {
  const fromDumps = [wrappedInDump(preRotation.file, 1), wrappedInDump(postRotation.file, 1)];
  // Before the prune the dumps' master keys are still in the file: the destroyed key is recoverable.
  const before = readMasterKeyFile(inst.masterKeyFile);
  for (const d of fromDumps) {
    const mk = before.keys.find((k) => k.id === d.kekId)!;
    expect(unwrapDataKey(mk.material, 1, d.wrapped)).toHaveLength(32);
  }
  // The post-rotation backup is within the 30-day retention and needs v2 under its master key.
  const dry = await runCliJson(['keys', 'prune-master-keys', '--dry-run'], { env: inst.env });
  expect(dry.code).toBe(0);
  expect(dry.json.removable).toEqual([fromDumps[0].kekId]);
  expect(dry.json.neededByBackups).toEqual([fromDumps[1].kekId]);
  const noConfirm = await runCli(['keys', 'prune-master-keys', '--backup-retention', '0s'], { env: inst.env });
  expect(noConfirm.code).toBe(2);
  expect(readMasterKeyFile(inst.masterKeyFile).keys).toHaveLength(before.keys.length);

  const r = await runCliJson(['keys', 'prune-master-keys', '--backup-retention', '0s', '--yes'], { env: inst.env });
  expect(r.code).toBe(0);
  expect(r.json.removed.sort()).toEqual([...new Set(fromDumps.map((d) => d.kekId))].sort());
  const after = readMasterKeyFile(inst.masterKeyFile);
  expect(after.keys.length).toBeGreaterThan(0);
  for (const d of fromDumps) {
    for (const mk of after.keys) expect(() => unwrapDataKey(mk.material, 1, d.wrapped)).toThrow(/failed to authenticate/);
  }
  // Everything the database still uses decrypts.
  await inst.keyring.refresh();
  const report = await verifyRosemeta(inst.db.pool, inst.keyring, inst.shape!);
  expect(report.mismatched).toEqual([]);
  const again = await runCliJson(['keys', 'prune-master-keys', '--backup-retention', '0s', '--yes'], { env: inst.env });
  expect(again.json.removed).toEqual([]);
});

test('remove a column that holds values (--force), rotate, destroy: refused, naming the removed column; re-added, its values still decrypt', async () => {
  const before = (await inst.db.query(`SELECT context FROM alation_keys.encrypted_columns WHERE table_name = 'documents'`)).rows[0].context;
  const removed = await runCli(['columns', 'remove', DOCUMENTS, '--force', '--yes'], { env: inst.env });
  expect(removed.code).toBe(0);
  const rotated = await runCliJson(['rotate', '--skip-backup-check', '--settle-time', '0'], { env: inst.env });
  expect(rotated.code).toBe(0);
  const used = (await inst.db.query(`SELECT DISTINCT version FROM alation_keys.keyring WHERE state = 'retired' ORDER BY version`)).rows.map((r) => r.version);
  expect(used).toEqual([2, 3]);
  // The removed column's values still use v2, which rotate retired: destroy must see them.
  const r = await runCli(['keys', 'destroy', '2', '--force', '--yes'], { env: inst.env });
  expect(r.code).toBe(3);
  expect(r.stderr).toMatch(new RegExp(`values? still uses? data key v2: ${DOCUMENTS.replace(/\./g, '\\.')} \\(removed\\) \\d+`));
  expect(r.stderr).toContain('re-add the removed column');
  expect((await keyRow(2)).state).toBe('retired');
  const again = await runCliJson(['columns', 'add', DOCUMENTS], { env: inst.env });
  expect(again.code).toBe(0);
  expect(again.json.column.context).toBe(before);
  await inst.keyring.refresh();
  const report = await verifyRosemeta(inst.db.pool, inst.keyring, inst.shape!);
  expect(report.mismatched).toEqual([]);
  expect(report.missing).toEqual([]);
});
