/**
 * `backup`, `backup list`, `backup verify` end to end: the real binary, a real PostgreSQL and
 * the real pg_dump/pg_restore (plus wrapper scripts standing in for a pg_dump that dies).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client, Pool } from 'pg';
import { createInstallation, Installation, tempDir } from './support/fixtures';
import { createTestDatabase } from './support/db';
import { runCli, runCliJson, spawnCli, CliResult } from './support/cli';
import { openKeyring } from '../src/core/keyring-client';
import { verifyRosemeta } from '../scripts/lib/rosemeta';
import { createMasterKeyFile, readMasterKeyFile } from '../src/kms/master-key-file';
import { findPgTool } from '../src/core/pg-tools';
// Every test here runs pg_dump (or needs one to be found first): skipped, with the reason, where none fits the server.
import { describeWithPgDump as describe, serverMajor, testWithPgDump as test } from './support/pg-dump';

let inst: Installation;
let out: string;
let realPgDump: string;
let realPgRestore: string;

beforeAll(async () => {
  inst = await createInstallation('backup', { values: 400 });
  out = path.join(inst.dir, 'backups');
  const minimum = { minVersionNum: 150000, minReason: 'test', flag: '--pg-dump', env: process.env };
  realPgDump = findPgTool('pg_dump', minimum).path;
  realPgRestore = findPgTool('pg_restore', minimum).path;
});

afterAll(async () => {
  await inst?.cleanup();
});

const FINISHED = /^ak_backup_[0-9a-f]{8}-\d{8}T\d{6}Z(-\d+)?\.dump$/;

function listDir(dir: string): string[] {
  return fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

async function job(id: number) {
  const r = await inst.db.query(`SELECT id::int, kind, state, error, detail FROM alation_keys.jobs WHERE id = $1`, [id]);
  return r.rows[0];
}

async function lastBackupJob() {
  const r = await inst.db.query(`SELECT id::int, state, error, detail FROM alation_keys.jobs WHERE kind = 'backup' ORDER BY id DESC LIMIT 1`);
  return r.rows[0];
}

/** A pg_dump stand-in: answers --version like the real one, then runs `body` with $out = the --file target. */
function wrapper(name: string, body: string): string {
  const p = path.join(inst.dir, name);
  fs.writeFileSync(
    p,
    `#!/bin/sh
if [ "$1" = "--version" ]; then exec "${realPgDump}" --version; fi
for a in "$@"; do case "$a" in --file=*) out="\${a#--file=}";; esac; done
${body}
`,
    { mode: 0o755 },
  );
  return p;
}

async function waitFor(cond: () => boolean, what: string, ms = 20_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function closed(child: ReturnType<typeof spawnCli>): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
}

async function rows(pool: Pool) {
  const out: Record<string, unknown[]> = {};
  for (const [t, c, k] of [['credentials', 'secret', 'name'], ['documents', 'body', 'title'], ['blobs', 'payload', 'kind']]) {
    out[t] = (await pool.query(`SELECT id::text, ${k}, ${c} FROM public.${t} ORDER BY id`)).rows;
  }
  return out;
}

let first: { jobId: number; file: string; manifestFile: string; sha256: string; manifest: any };

describe('a backup', () => {
  test('writes a dump and manifest that restore into a fresh database with the same rows and ciphertexts, decrypting with the current keys', async () => {
    const r = await runCliJson(['backup', '--out', out], { env: inst.env });
    expect(r.code).toBe(0);
    first = r.json;
    expect(path.dirname(first.file)).toBe(out);
    expect(path.basename(first.file)).toMatch(FINISHED);
    expect(path.basename(first.file)).toContain(inst.db.name);
    expect(first.manifestFile).toBe(first.file + '.manifest.json');
    expect(fs.statSync(first.file).mode & 0o777).toBe(0o600);
    // Only the finished pair is left: no temporary files.
    expect(listDir(out)).toEqual([path.basename(first.file), path.basename(first.manifestFile)]);

    // The manifest on disk is the one reported, with a correct checksum and the keys at the snapshot.
    const text = fs.readFileSync(first.manifestFile, 'utf8');
    const m = JSON.parse(text);
    expect(m).toEqual(first.manifest);
    expect(m.format).toBe('alation-keys/backup-manifest');
    expect(m.version).toBe(1);
    expect(m.file).toBe(path.basename(first.file));
    expect(m.dump_format).toBe('custom');
    expect(m.sha256).toBe(sha256(first.file));
    expect(m.bytes).toBe(fs.statSync(first.file).size);
    expect(m.database).toBe(inst.db.name);
    expect(m.job_id).toBe(first.jobId);
    expect(m.server.version_num).toBe(Number(process.env.ALATION_KEYS_TEST_SERVER_VERSION_NUM));
    expect(m.pg_dump.version).toMatch(/^\d+\.\d+/);
    expect(new Date(m.finished_at).getTime()).toBeGreaterThanOrEqual(new Date(m.started_at).getTime());
    const mk = readMasterKeyFile(inst.masterKeyFile);
    expect(m.keys).toMatchObject({ primary_version: 1, needed_versions: [1], kek_provider: 'local', kek_ids: [mk.keys[0].id] });
    expect(m.keys.deks).toEqual([expect.objectContaining({ version: 1, state: 'primary', kek_provider: 'local', kek_id: mk.keys[0].id, needed: true })]);
    // Never key material: neither the master key nor the wrapped DEK.
    const wrapped = (await inst.db.query('SELECT wrapped_key FROM alation_keys.keyring WHERE version = 1')).rows[0].wrapped_key as Buffer;
    expect(text).not.toContain(mk.keys[0].material.toString('base64'));
    expect(text).not.toContain(wrapped.toString('hex'));
    expect(text).not.toContain(wrapped.toString('base64'));
    expect(text).not.toMatch(/material|wrapped_key|password/i);
    // The operator is told the master key file is not in the dump.
    expect(r.stderr).toMatch(new RegExp(`master key file ${inst.masterKeyFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is not inside the dump`));

    // The job record.
    const j = await job(first.jobId);
    expect(j).toMatchObject({ kind: 'backup', state: 'succeeded', error: null });
    expect(j.detail.manifest).toEqual(m);
    expect(j.detail.path).toBe(first.file);

    // Restore into a fresh database with the real pg_restore.
    const restored = await createTestDatabase('restored');
    try {
      const pr = spawnSync(realPgRestore, ['--no-owner', '--exit-on-error', `--dbname=${restored.url}`, first.file], { encoding: 'utf8' });
      expect(pr.stderr).toBe('');
      expect(pr.status).toBe(0);
      const [a, b] = [await rows(inst.db.pool), await rows(restored.pool)];
      expect(b.credentials.length).toBe(inst.shape!.credentials);
      expect(b.blobs.length).toBe(inst.shape!.blobs);
      expect(b).toEqual(a); // same rows, byte-identical ciphertexts
      const keyring = await openKeyring({ pool: restored.pool, masterKeyFile: inst.masterKeyFile });
      try {
        const report = await verifyRosemeta(restored.pool, keyring, inst.shape!);
        expect(report.mismatched).toEqual([]);
        expect(report.missing).toEqual([]);
        expect(report.checked).toBeGreaterThan(350);
      } finally {
        await keyring.close();
      }
      // The backup's own job was written after the snapshot: the restored copy does not show it running.
      const jr = await restored.query(`SELECT count(*)::int AS n FROM alation_keys.jobs WHERE kind = 'backup'`);
      expect(jr.rows[0].n).toBe(0);
    } finally {
      await restored.drop();
    }
  });

  test('status shows the last successful backup and its age', async () => {
    const r = await runCliJson(['status', '--no-provider-check'], { env: inst.env });
    expect(r.json.lastBackup).toMatchObject({ jobId: first.jobId, file: path.basename(first.file), predatesPrimary: false });
    expect(r.json.lastBackup.ageHours).toBeLessThan(1);
    expect(r.json.attention.join('\n')).not.toMatch(/backup/);
  });

  test('verify passes on the good backup', async () => {
    const r = await runCliJson(['backup', 'verify', first.file], { env: inst.env });
    expect(r.code).toBe(0);
    expect(r.json.ok).toBe(true);
    expect(r.json.checks.map((c: any) => [c.check, c.ok])).toEqual([
      ['manifest', true],
      ['checksum', true],
      ['archive', true],
      ['keys', true],
    ]);
    expect(r.json.keys).toEqual([expect.objectContaining({ version: 1, ok: true, stateNow: 'primary' })]);
    expect(r.json.archiveEntries).toBeGreaterThan(5);
  });

  test('verify --offline needs no database: the keys inside the dump unwrap with the master key file', async () => {
    const noDb = { ...inst.env, ALATION_KEYS_DATABASE_URL: 'postgresql://nobody@127.0.0.1:1/gone' };
    expect((await runCli(['backup', 'verify', first.file], { env: noDb })).code).toBe(1);
    const r = await runCliJson(['backup', 'verify', '--offline', first.file], { env: noDb });
    expect(r.code).toBe(0);
    expect(r.json.offline).toBe(true);
    expect(r.json.keys).toEqual([expect.objectContaining({ version: 1, ok: true, stateNow: null })]);
    const otherKey = path.join(inst.dir, 'unrelated.key');
    await createMasterKeyFile(otherKey);
    const bad = await runCliJson(['backup', 'verify', '--offline', first.file], { env: { ...noDb, ALATION_KEYS_MASTER_KEY_FILE: otherKey } });
    expect(bad.code).toBe(5);
    expect(bad.json.keys[0]).toMatchObject({ ok: false, detail: expect.stringMatching(/master key mk_\w+ .*is not in/) });
  });

  test('verify catches a flipped byte: exit 5, checksum failed', async () => {
    const buf = fs.readFileSync(first.file);
    const at = Math.floor(buf.length / 2);
    const fd = fs.openSync(first.file, 'r+');
    try {
      fs.writeSync(fd, Buffer.from([buf[at] ^ 0x01]), 0, 1, at);
      const r = await runCliJson(['backup', 'verify', first.file], { env: inst.env });
      expect(r.code).toBe(5);
      expect(r.json.ok).toBe(false);
      expect(r.json.checks.find((c: any) => c.check === 'checksum')).toMatchObject({ ok: false });
      expect(r.stderr).toMatch(/checksum does not match/);
      // A manifest edited to match the damaged file is caught by the job record.
      const m = JSON.parse(fs.readFileSync(first.manifestFile, 'utf8'));
      fs.writeFileSync(first.manifestFile, JSON.stringify({ ...m, sha256: sha256(first.file) }));
      const r2 = await runCliJson(['backup', 'verify', first.file], { env: inst.env });
      expect(r2.code).toBe(5);
      expect(r2.json.checks.filter((c: any) => !c.ok).map((c: any) => c.check)).toEqual(['manifest', 'checksum']);
      fs.writeFileSync(first.manifestFile, JSON.stringify(m, null, 2) + '\n');
    } finally {
      fs.writeSync(fd, Buffer.from([buf[at]]), 0, 1, at);
      fs.closeSync(fd);
    }
    expect(sha256(first.file)).toBe(first.sha256);
    expect((await runCli(['backup', 'verify', first.file], { env: inst.env })).code).toBe(0);
  });

  test('verify uses the job record when the manifest file is gone', async () => {
    const kept = fs.readFileSync(first.manifestFile);
    fs.rmSync(first.manifestFile);
    try {
      const r = await runCliJson(['backup', 'verify', first.file], { env: inst.env });
      expect(r.code).toBe(0);
      expect(r.json.manifestSource).toBe('job');
    } finally {
      fs.writeFileSync(first.manifestFile, kept);
    }
  });

  test('--jobs 2 writes a directory-format dump that verifies and restores', async () => {
    const dir = tempDir('backup-dir');
    try {
      const r = await runCliJson(['backup', '--out', dir, '--jobs', '2'], { env: inst.env });
      expect(r.code).toBe(0);
      expect(fs.statSync(r.json.file).isDirectory()).toBe(true);
      expect(r.json.manifest.dump_format).toBe('directory');
      expect(r.json.manifest.files.map((f: any) => f.name)).toContain('toc.dat');
      const v = await runCliJson(['backup', 'verify', r.json.file], { env: inst.env });
      expect(v.code).toBe(0);
      expect(v.json.ok).toBe(true);
      // Changing one table's data file is caught and named.
      const data = r.json.manifest.files.find((f: any) => f.name !== 'toc.dat');
      fs.appendFileSync(path.join(r.json.file, data.name), 'x');
      const bad = await runCliJson(['backup', 'verify', r.json.file], { env: inst.env });
      expect(bad.code).toBe(5);
      expect(bad.json.checks.find((c: any) => c.check === 'checksum').detail).toContain(`changed: ${data.name}`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('backup list shows recorded backups and flags one missing on disk', async () => {
    const second = await runCliJson(['backup', '--out', out], { env: inst.env });
    expect(second.code).toBe(0);
    expect(second.json.file).not.toBe(first.file);
    const moved = path.join(inst.dir, 'moved.dump');
    fs.renameSync(second.json.file, moved);
    try {
      const r = await runCliJson(['backup', 'list'], { env: inst.env });
      const byJob = new Map(r.json.backups.map((b: any) => [b.jobId, b]));
      expect(byJob.get(first.jobId)).toMatchObject({ state: 'succeeded', onDisk: 'present', path: first.file, neededVersions: [1] });
      expect(byJob.get(second.json.jobId)).toMatchObject({ state: 'succeeded', onDisk: 'missing' });
      const human = await runCli(['backup', 'list'], { env: inst.env });
      expect(human.code).toBe(0);
      expect(human.stdout).toMatch(/MISSING/);
      expect(human.stderr).toMatch(new RegExp(`not on this host's disk: job ${second.json.jobId}`));
    } finally {
      fs.renameSync(moved, second.json.file);
    }
  });
});

describe('connection settings reach pg_dump', () => {
  test('through its environment, never argv; with our snapshot and application name', async () => {
    const dir = tempDir('backup-env');
    const argsFile = path.join(inst.dir, 'args.txt');
    const envFile = path.join(inst.dir, 'env.txt');
    const spy = wrapper('pg_dump-spy', `printf '%s\\n' "$@" > "${argsFile}"\nenv > "${envFile}"\nexec "${realPgDump}" "$@"`);
    const url = new URL(inst.db.url);
    // A server with trust authentication (CI's service) has no password in its URL: give it
    // one anyway (trust ignores it) so the test still proves where a password goes.
    if (url.password === '') url.password = 'ignored-under-trust-auth';
    expect(url.password).not.toBe('');
    const r = await runCli(['backup', '--out', dir, '--pg-dump', spy], {
      env: { ...inst.env, ALATION_KEYS_DATABASE_URL: url.toString(), PGPASSWORD: undefined, PGHOST: 'wrong.invalid' },
    });
    expect(r.code).toBe(0);
    const args = fs.readFileSync(argsFile, 'utf8').trim().split('\n');
    expect(args.some((a) => a.includes('://') || a.includes(url.password) || a.startsWith('--dbname') || a.startsWith('-d'))).toBe(false);
    expect(args).toEqual(expect.arrayContaining(['--format=custom', '--no-password', expect.stringMatching(/^--snapshot=[0-9A-F-]+$/)]));
    const env = Object.fromEntries(fs.readFileSync(envFile, 'utf8').trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    expect(env).toMatchObject({
      PGPASSWORD: decodeURIComponent(url.password),
      PGUSER: decodeURIComponent(url.username),
      PGHOST: url.hostname,
      PGPORT: url.port,
      PGDATABASE: inst.db.name,
      PGAPPNAME: expect.stringMatching(/^alation-keys\/backup pg_dump job \d+$/),
    });
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('failures leave no finished-looking backup', () => {
  test('a pg_dump killed mid-run: exit 1, job failed, no file left', async () => {
    const dir = tempDir('backup-killed');
    const fake = wrapper('pg_dump-killed', 'head -c 300000 /dev/zero > "$out"\necho "pg_dump: about to die" >&2\nkill -KILL $$');
    const r = await runCli(['backup', '--out', dir, '--pg-dump', fake], { env: inst.env });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/pg_dump was killed by SIGKILL/);
    expect(listDir(dir)).toEqual([]);
    const j = await lastBackupJob();
    expect(j.state).toBe('failed');
    expect(j.error).toMatch(/killed by SIGKILL/);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('pg_dump failing (e.g. disk full): exit 1, job failed with its message, no file left', async () => {
    const dir = tempDir('backup-full');
    const fake = wrapper('pg_dump-full', 'head -c 1000 /dev/zero > "$out"\necho "pg_dump: error: could not write to output file: No space left on device" >&2\nexit 1');
    const r = await runCli(['backup', '--out', dir, '--pg-dump', fake], { env: inst.env });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/No space left on device.*is full/);
    expect(listDir(dir)).toEqual([]);
    expect(await lastBackupJob()).toMatchObject({ state: 'failed' });
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('SIGTERM while pg_dump runs: pg_dump is stopped, exit 130, job interrupted, nothing left', async () => {
    const dir = tempDir('backup-term');
    const pidFile = path.join(inst.dir, 'slow.pid');
    const fake = wrapper('pg_dump-slow', 'echo $$ > "$WRAPPER_PID_FILE"\nhead -c 100000 /dev/zero > "$out"\nexec sleep 60');
    const child = spawnCli(['backup', '--out', dir, '--pg-dump', fake], { env: { ...inst.env, WRAPPER_PID_FILE: pidFile } });
    const done = closed(child);
    child.stdin!.end('');
    await waitFor(() => listDir(dir).some((n) => n.endsWith('.partial') && fs.statSync(path.join(dir, n)).size >= 100000), 'the partial dump');
    expect(listDir(dir).filter((n) => FINISHED.test(n))).toEqual([]);
    // The single-runner lock: no rotation starts while the backup runs.
    const running = await lastBackupJob();
    const rot = await runCli(['rotate', '--skip-backup-check', '--settle-time', '0'], { env: inst.env });
    expect(rot.code).toBe(3);
    expect(rot.stderr).toMatch(new RegExp(`holds the maintenance lock: job ${running.id} \\(backup`));
    expect((await inst.db.query('SELECT count(*)::int AS n FROM alation_keys.keyring')).rows[0].n).toBe(1);
    child.kill('SIGTERM');
    const r = await done;
    expect(r.code).toBe(130);
    expect(r.stderr).toMatch(/backup interrupted; no backup was written/);
    expect(listDir(dir)).toEqual([]);
    const j = await lastBackupJob();
    expect(j.state).toBe('interrupted');
    // The pg_dump stand-in was stopped with us.
    const pid = Number(fs.readFileSync(pidFile, 'utf8'));
    expect(() => process.kill(pid, 0)).toThrow();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('kill -9 of alation-keys: the partial file never looks finished, the job is later marked interrupted and its pg_dump session ended', async () => {
    const dir = tempDir('backup-kill9');
    const pidFile = path.join(inst.dir, 'slow9.pid');
    // A pg_dump stand-in that holds a database session, as pg_dump does, with the
    // application_name it was given.
    const psql = fs.existsSync(path.join(path.dirname(realPgDump), 'psql')) ? path.join(path.dirname(realPgDump), 'psql') : 'psql';
    const fake = wrapper('pg_dump-slow9', `echo $$ > "$WRAPPER_PID_FILE"\nhead -c 100000 /dev/zero > "$out"\nexec "${psql}" -X -q -c "SELECT pg_sleep(120)"`);
    const dumpSessions = async () =>
      (await inst.db.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'alation-keys/backup pg_dump job %'`)).rows[0].n;
    const child = spawnCli(['backup', '--out', dir, '--pg-dump', fake], { env: { ...inst.env, WRAPPER_PID_FILE: pidFile } });
    const done = closed(child);
    child.stdin!.end('');
    await waitFor(() => listDir(dir).some((n) => n.endsWith('.partial') && fs.statSync(path.join(dir, n)).size >= 100000), 'the partial dump');
    const running = await lastBackupJob();
    expect(running.state).toBe('running');
    for (let i = 0; i < 100 && (await dumpSessions()) === 0; i++) await new Promise((res) => setTimeout(res, 100));
    expect(await dumpSessions()).toBe(1);
    child.kill('SIGKILL');
    await done;
    // Killed with the tool, pg_dump would run on: it is still there.
    expect(await dumpSessions()).toBe(1);
    const names = listDir(dir);
    expect(names.length).toBe(1);
    expect(names[0]).toMatch(/^\..*\.dump\.partial$/);
    expect(names.filter((n) => FINISHED.test(n) || n.endsWith('.manifest.json'))).toEqual([]);
    // Once its session is gone, the next look at the jobs marks it interrupted.
    await waitFor(() => true, 'nothing');
    let state = '';
    for (let i = 0; i < 50 && state !== 'interrupted'; i++) {
      const r = await runCliJson(['jobs', 'show', String(running.id)], { env: inst.env });
      state = r.json.job.state;
      if (state !== 'interrupted') await new Promise((res) => setTimeout(res, 200));
    }
    expect(state).toBe('interrupted');
    // Marking the job interrupted ended the session of the pg_dump it left behind.
    for (let i = 0; i < 50 && (await dumpSessions()) > 0; i++) await new Promise((res) => setTimeout(res, 100));
    expect(await dumpSessions()).toBe(0);
    try {
      process.kill(Number(fs.readFileSync(pidFile, 'utf8')), 'SIGKILL');
    } catch {
      /* already gone: psql exits when its session is terminated */
    }
    // verify refuses the partial file outright.
    const v = await runCli(['backup', 'verify', path.join(dir, names[0])], { env: inst.env });
    expect(v.code).toBe(3);
    expect(v.stderr).toMatch(/unfinished backup/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('preflight refusals: exit 3, no backup', () => {
  test('a too-old pg_dump: exit 3 naming the version needed and --pg-dump', async () => {
    const old = path.join(inst.dir, 'pg_dump-96');
    fs.writeFileSync(old, '#!/bin/sh\necho "pg_dump (PostgreSQL) 9.6.0"\n', { mode: 0o755 });
    const before = (await lastBackupJob())?.id;
    const r = await runCli(['backup', '--out', out, '--pg-dump', old], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(new RegExp(`is pg_dump 9\\.6\\.0, but the server is PostgreSQL ${serverMajor()}\\.\\d+: pg_dump ${serverMajor()} or newer is needed`));
    expect(r.stderr).toMatch(/--pg-dump PATH/);
    expect((await lastBackupJob())?.id).toBe(before);
  });

  test('a missing pg_dump: exit 3', async () => {
    const r = await runCli(['backup', '--out', out, '--pg-dump', '/nonexistent/bin/pg_dump'], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/\/nonexistent\/bin\/pg_dump is not a runnable pg_dump/);
    expect(r.stderr).toMatch(`pg_dump ${serverMajor()} or newer`);
  });

  test('not enough free space: exit 3 with the numbers and the conservative bound', async () => {
    const dir = tempDir('backup-space');
    const r = await runCli(['backup', '--out', dir], { env: { ...inst.env, ALATION_KEYS_TEST_FREE_BYTES: '1000' } });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/not enough free space in .*: 1000 B free \(1000 bytes\), the database is .* \(\d+ bytes\)/);
    expect(r.stderr).toMatch(/conservative bound/);
    expect(listDir(dir)).toEqual([]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('another job holds the maintenance lock: exit 3 naming the holder', async () => {
    const c = new Client({ connectionString: inst.db.url, application_name: 'busy-rotation' });
    await c.connect();
    try {
      await c.query('SELECT pg_advisory_lock($1, $2)', [0x414b4559, 1]);
      const dir = tempDir('backup-locked');
      const r = await runCli(['backup', '--out', dir], { env: inst.env });
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/holds the maintenance lock: busy-rotation/);
      expect(listDir(dir)).toEqual([]);
      fs.rmSync(dir, { recursive: true, force: true });
    } finally {
      await c.end();
    }
  });

  test('an unwritable backup directory: exit 3', async () => {
    const file = path.join(inst.dir, 'not-a-dir');
    fs.writeFileSync(file, '');
    const r = await runCli(['backup', '--out', file], { env: inst.env });
    expect(r.code).toBe(3);
  });

  test('bad --jobs: exit 2', async () => {
    expect((await runCli(['backup', '--out', out, '--jobs', '0'], { env: inst.env })).code).toBe(2);
    expect((await runCli(['backup', '--out', out, '--jobs', 'many'], { env: inst.env })).code).toBe(2);
  });
});

test('backup list: failed and interrupted backups only with --all, with their errors', async () => {
  const all = await runCliJson(['backup', 'list', '--all', '--limit', '100'], { env: inst.env });
  const states = new Set(all.json.backups.map((b: any) => b.state));
  expect(states).toEqual(new Set(['succeeded', 'failed', 'interrupted']));
  const failed = all.json.backups.find((b: any) => b.state === 'failed');
  expect(failed.error).toMatch(/pg_dump/);
  expect(failed.onDisk).toBeNull();
  const def = await runCliJson(['backup', 'list', '--limit', '100'], { env: inst.env });
  expect(def.json.backups.length).toBeGreaterThan(0);
  expect(def.json.backups.every((b: any) => b.state === 'succeeded')).toBe(true);
});
