/**
 * `rotate` end to end: the real binary against a real PostgreSQL.
 */
import * as fs from 'node:fs';
import { Client } from 'pg';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { BLOBS, expectedPlaintext, verifyRosemeta } from '../scripts/lib/rosemeta';
import { FAST, keyringRows, rotateJobs, spawnUntil, tableDigest } from './support/rotate-helpers';
import { readMasterKeyFile } from '../src/kms/master-key-file';
import { testWithPgDump } from './support/pg-dump';

let inst: Installation;

beforeAll(async () => {
  inst = await createInstallation('rotate', { values: 3000 });
});

afterAll(async () => {
  await inst?.cleanup();
});

async function verifyAllUnder(version: number, overrides?: Map<string, string | Buffer | null>) {
  await inst.keyring.refresh();
  const report = await verifyRosemeta(inst.db.pool, inst.keyring, inst.shape!, { overrides });
  expect(report.mismatched).toEqual([]);
  expect(report.missing).toEqual([]);
  expect(report.checked).toBeGreaterThan(2500);
  for (const perVersion of Object.values(report.versions)) expect(Object.keys(perVersion)).toEqual([String(version)]);
  return report;
}

describe('preflight refusals (exit 3/4, nothing changes)', () => {
  test('no recent backup: exit 3, no new key', async () => {
    const r = await runCli(['rotate', '--settle-time', '0'], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/no successful backup is recorded/);
    expect((await keyringRows(inst.db.pool)).length).toBe(1);
  });

  test('a backup older than --max-backup-age: exit 3 naming its age', async () => {
    await inst.db.query(
      `INSERT INTO alation_keys.jobs (kind, state, actor, started_at, finished_at) VALUES ('backup', 'succeeded', 'test', now() - interval '3 days', now() - interval '3 days')`,
    );
    const r = await runCli(['rotate', '--max-backup-age', '48h', '--settle-time', '0'], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/is 3d old, older than --max-backup-age/);
    await inst.db.query(`DELETE FROM alation_keys.jobs WHERE kind = 'backup'`);
  });

  test('malformed durations and numbers: exit 2', async () => {
    for (const args of [['--max-backup-age', '3 days'], ['--if-older-than', '90x'], ['--workers', '0'], ['--batch-size', 'many'], ['--max-rate', '-5']]) {
      const r = await runCli(['rotate', ...FAST, ...args], { env: inst.env });
      expect(r.code).toBe(2);
    }
  });

  test('not enough disk headroom: exit 3 with the numbers', async () => {
    const r = await runCli(['rotate', ...FAST], { env: { ...inst.env, ALATION_KEYS_TEST_FREE_BYTES: '1000' } });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/not enough disk headroom: 1000 B free .* needs .*1\.5 ×/);
    expect((await keyringRows(inst.db.pool)).length).toBe(1);
  });

  test('headroom unknown (data directory not visible): exit 3 pointing at --data-dir', async () => {
    const r = await runCli(['rotate', ...FAST, '--data-dir', '/nonexistent/pgdata'], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/disk headroom is unknown/);
    expect(r.stderr).toMatch(/--data-dir/);
  });

  test('lock held by another session: exit 3 naming the holder', async () => {
    const c = new Client({ connectionString: inst.db.url, application_name: 'someone-else' });
    await c.connect();
    try {
      await c.query('SELECT pg_advisory_lock($1, $2)', [0x414b4559, 1]);
      const r = await runCli(['rotate', ...FAST], { env: inst.env });
      expect(r.code).toBe(3);
      expect(r.stderr).toMatch(/holds the maintenance lock: someone-else, backend pid \d+/);
    } finally {
      await c.end();
    }
    expect((await keyringRows(inst.db.pool)).length).toBe(1);
  });

  test('master key file unreadable (mode 0644): exit 4 (provider)', async () => {
    fs.chmodSync(inst.masterKeyFile, 0o644);
    try {
      const r = await runCli(['rotate', ...FAST], { env: inst.env });
      expect(r.code).toBe(4);
      expect(r.stderr).toMatch(/readable by group or others/);
    } finally {
      fs.chmodSync(inst.masterKeyFile, 0o600);
    }
    expect((await keyringRows(inst.db.pool)).length).toBe(1);
  });
});

describe('plans', () => {
  test('--dry-run prints the plan and changes nothing', async () => {
    const before = await tableDigest(inst.db.pool);
    const r = await runCliJson(['rotate', '--dry-run'], { env: inst.env });
    expect(r.code).toBe(0);
    expect(r.json.result).toBe('dry-run');
    expect(r.json.newVersion).toBe(2);
    expect(r.json.columns.map((c: any) => c.column).sort()).toEqual(['public.blobs.payload', 'public.credentials.secret', 'public.documents.body']);
    expect(r.json.rows).toBeGreaterThan(2800);
    expect(r.json.bytes).toBeGreaterThan(r.json.rows * 100);
    expect(r.json.estimatedSeconds).toBeGreaterThanOrEqual(0);
    // WAL to expect: the new values with their headers, plus one image of each of the tables'
    // pages when the server writes full-page images (the test server may run without them).
    const w = r.json.wal;
    const fpw = (await inst.db.query<{ full_page_writes: string }>('SHOW full_page_writes')).rows[0].full_page_writes === 'on';
    expect(w.fullPageWrites).toBe(fpw);
    expect(w.recordBytes).toBe(Math.round(r.json.bytes * 1.24));
    if (fpw) expect(w.pageImageBytes).toBeGreaterThan(0);
    else expect(w.pageImageBytes).toBe(0);
    expect(w.bytes).toBe(w.recordBytes + w.pageImageBytes);
    expect(w.bytesBetweenCheckpoints).toBeGreaterThan(0);
    expect(w.checkpointsDuring).toBe(Math.floor(w.bytes / w.bytesBetweenCheckpoints));
    const text = await runCli(['rotate', '--dry-run'], { env: inst.env });
    expect(text.stdout).toMatch(
      fpw
        ? /^WAL to expect: about [\d,]+ MB \(the new values [\d,]+ MB, one image of each page that changes [\d,]+ MB\)$/m
        : /^WAL to expect: about [\d,]+ MB \(the new values [\d,]+ MB, no page images: full_page_writes is off\)$/m,
    );
    expect(text.stdout).toMatch(/^checkpoints during it: none expected \(max_wal_size: one every [\d,]+ MB of WAL\)$/m);
    expect(r.json.preflight.join('\n')).toMatch(/no successful backup/);
    expect((await keyringRows(inst.db.pool)).length).toBe(1);
    expect(await rotateJobs(inst.db.pool)).toEqual([]);
    expect(await tableDigest(inst.db.pool)).toBe(before);
  });

  test('--if-older-than: a young primary key is not due (exit 0, nothing created)', async () => {
    const r = await runCli(['rotate', ...FAST, '--if-older-than', '90d'], { env: inst.env });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/not due: primary data key v1 is \d+[sm] old/);
    expect((await keyringRows(inst.db.pool)).length).toBe(1);
  });

  test("--if-older-than with --quiet (the README's cron line): a run that is not due prints nothing at all, exit 0", async () => {
    const r = await runCli(['rotate', ...FAST, '--if-older-than', '90d', '--quiet'], { env: inst.env });
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe('');
    const json = await runCliJson(['rotate', ...FAST, '--if-older-than', '90d', '--quiet'], { env: inst.env });
    expect(json.json.result).toBe('not-due');
    expect((await keyringRows(inst.db.pool)).length).toBe(1);
  });
});

describe('rotation', () => {
  test('tampered value: exit 5 naming column and key, table unchanged; resumes once fixed', async () => {
    // public.blobs.payload is the first column walked; id 2 is in its first chunk.
    // Flip one bit (not overwrite with a constant, which is a no-op 1 time in 256 when the byte already holds it).
    await inst.db.query(`UPDATE public.blobs SET payload = set_byte(payload, 39, get_byte(payload, 39) # 1) WHERE id = 2`);
    const before = await tableDigest(inst.db.pool);
    const r = await runCli(['rotate', ...FAST, '--batch-size', '500'], { env: inst.env });
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(/value in public\.blobs\.payload at id=2 failed authentication/);
    expect(await tableDigest(inst.db.pool)).toBe(before);
    const jobs = await rotateJobs(inst.db.pool);
    expect(jobs).toHaveLength(1);
    expect(jobs[0].state).toBe('failed');
    expect(jobs[0].error).toMatch(/public\.blobs\.payload at id=2/);
    // The operator restores the value; the next run resumes the same job and target key.
    const good = await inst.keyring.encrypt(expectedPlaintext(BLOBS, 2) as Buffer, BLOBS);
    await inst.db.query(`UPDATE public.blobs SET payload = $1 WHERE id = 2`, [good]);
    const again = await runCliJson(['rotate', ...FAST, '--batch-size', '500'], { env: inst.env });
    expect([again.code, again.stderr]).toEqual([0, expect.stringMatching(/resuming job \d+ \(v1→v2\)/)]);
    expect(again.json.jobId).toBe(Number(jobs[0].id));
    expect(again.json.toVersion).toBe(2);
    expect(again.json.retiredVersions).toEqual([1]);
    const keys = await keyringRows(inst.db.pool);
    expect(keys.map((k) => `${k.version}:${k.state}`)).toEqual(['1:retired', '2:primary']);
    // The master key file gained a key and every DEK is wrapped under it.
    const mk = readMasterKeyFile(inst.masterKeyFile);
    expect(mk.keys).toHaveLength(2);
    for (const k of keys) expect(k.kek_id).toBe(mk.keys[1].id);
    await verifyAllUnder(2);
    expect(again.json.valuesAfter).toEqual({ '2': expect.any(Number) });
  });

  test('second rotation with --workers 3: every value decrypts, none under v2, v2 retired', async () => {
    const r = await runCliJson(['rotate', ...FAST, '--workers', '3', '--batch-size', '700'], { env: inst.env });
    expect([r.code, r.stderr]).toEqual([0, expect.any(String)]);
    expect(r.json.toVersion).toBe(3);
    expect(r.json.resumed).toBe(false);
    expect(r.json.retiredVersions).toEqual([2]);
    expect(r.json.rows).toBeGreaterThan(2800);
    expect(r.json.valuesBefore).toEqual({ '2': r.json.rows });
    expect(r.json.recommendation).toMatch(/backup/);
    await verifyAllUnder(3);
    const jobs = await rotateJobs(inst.db.pool);
    expect(jobs.map((j) => j.state)).toEqual(['succeeded', 'succeeded']);
  });

  test('SIGTERM mid-column: exit 130, job interrupted with a checkpoint, re-run resumes to the same key', async () => {
    const run = spawnUntil(['rotate', ...FAST, '--batch-size', '200'], 'ALATION_KEYS_TEST_PAUSED mid-column', {
      env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: 'mid-column' },
    });
    await run.seen;
    run.child.kill('SIGTERM');
    const res = await run.exited;
    expect(res.code).toBe(130);
    expect(res.stderr).toMatch(/interrupted: job \d+ checkpointed/);
    const jobs = await rotateJobs(inst.db.pool);
    const job = jobs[jobs.length - 1];
    expect(job.state).toBe('interrupted');
    expect(job.to_version).toBe(4);
    const cols = Object.values(job.detail.columns) as any[];
    expect(cols.some((c) => c.watermark !== null && c.rowsDone >= 200)).toBe(true);
    const again = await runCliJson(['rotate', ...FAST], { env: inst.env });
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(new RegExp(`resuming job ${job.id} \\(v3→v4\\)`));
    expect(again.json.toVersion).toBe(4);
    // The job's totals include the interrupted run; this run's figures (and rates) do not.
    const doneBefore = cols.reduce((a, c) => a + c.rowsDone, 0);
    expect(again.json.rowsThisRun).toBe(again.json.rows - doneBefore);
    expect(again.json.rowsThisRun).toBeLessThan(again.json.rows);
    expect(again.json.bytesThisRun).toBeLessThan(again.json.bytes);
    expect((await keyringRows(inst.db.pool)).map((k) => k.version)).toEqual([1, 2, 3, 4]);
    await verifyAllUnder(4);
  });

  testWithPgDump('--backup takes a backup under the lock first; a fresh backup then satisfies the check', async () => {
    const dir = fs.mkdtempSync(`${inst.dir}/backups-`);
    const r = await runCliJson(['rotate', '--backup', '--backup-dir', dir, '--settle-time', '0'], { env: inst.env });
    expect([r.code, r.stderr]).toEqual([0, expect.stringMatching(/taking a backup first/)]);
    expect(r.json.toVersion).toBe(5);
    expect(r.json.backup.jobId).toBeGreaterThan(0);
    expect(fs.existsSync(r.json.backup.file)).toBe(true);
    const b = await inst.db.query(`SELECT state FROM alation_keys.jobs WHERE id = $1`, [r.json.backup.jobId]);
    expect(b.rows[0].state).toBe('succeeded');
    // No --skip-backup-check: the backup just taken is recent enough.
    const again = await runCliJson(['rotate', '--settle-time', '0'], { env: inst.env });
    expect([again.code, again.stderr]).toEqual([0, expect.stringMatching(new RegExp(`recent backup: job ${r.json.backup.jobId}`))]);
    expect(again.json.toVersion).toBe(6);
    await verifyAllUnder(6);
  });
});
