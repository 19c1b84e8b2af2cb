/**
 * rotate --max-replica-lag against a real streaming standby (a second PostgreSQL replaying the
 * primary's WAL): with replay paused the rotation stops writing and says why, and finishes once
 * replay resumes; a standby that is gone stops the job with exit 3 after --replica-timeout,
 * and the job resumes.
 */
import { Pool } from 'pg';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, spawnCli } from './support/cli';
import { PrimaryWithStandby, STANDBY_NAME, startPrimaryWithStandby } from './support/standby';
import { openKeyring } from '../src/core/keyring-client';
import { verifyRosemeta } from '../scripts/lib/rosemeta';
import { sleep } from '../src/core/rewrite/util';

let cluster: PrimaryWithStandby;
let inst: Installation;

beforeAll(async () => {
  cluster = await startPrimaryWithStandby('standby-lag');
  inst = await createInstallation('standby_lag', { values: 3000, server: cluster.primary.adminUrl });
}, 180_000);

afterAll(async () => {
  await inst?.keyring.close().catch(() => undefined);
  await inst?.db.pool.end().catch(() => undefined);
  await cluster?.stop();
});

const ROTATE = ['rotate', '--skip-backup-check', '--skip-disk-check', '--settle-time', '0', '--batch-size', '100'];

async function rowsDone(jobKind = 'rotate'): Promise<number> {
  const r = await inst.db.query<{ n: number }>(`SELECT rows_done::int AS n FROM alation_keys.jobs WHERE kind = $1 ORDER BY id DESC LIMIT 1`, [jobKind]);
  return r.rows[0]?.n ?? 0;
}

async function expectEveryValueReadsBackOn(url: string): Promise<void> {
  const pool = new Pool({ connectionString: url, max: 2 });
  // The standby is stopped by a later test: a connection it ends must not crash the file.
  pool.on('error', () => undefined);
  const keyring = await openKeyring({ pool, masterKeyFile: inst.masterKeyFile });
  try {
    const report = await verifyRosemeta(pool, keyring, inst.shape!);
    expect(report.mismatched).toEqual([]);
    expect(report.missing).toEqual([]);
    expect(report.checked).toBeGreaterThan(0);
  } finally {
    await keyring.close();
    await pool.end();
  }
}

test('rotate --max-replica-lag stops writing while the standby does not replay, says why, and finishes once it replays again', async () => {
  await cluster.onStandby('SELECT pg_wal_replay_pause()');
  // --max-rate 500 makes the rotation last at least 6 s, so a standby that replays nothing is
  // more than 1 s behind before it could finish, however fast the machine.
  const child = spawnCli([...ROTATE, '--max-replica-lag', '1s', '--max-rate', '500', '--json'], { env: inst.env });
  let stderr = '';
  let stdout = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  try {
    const deadline = Date.now() + 90_000;
    while (!/waiting for standby standby1: lag \d+\.\d s/.test(stderr)) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no wait for the standby was reported:\n${stderr}`);
      await sleep(100);
    }
    // Stopped: nothing more is written while replay stays paused.
    const before = await rowsDone();
    await sleep(3000);
    expect(await rowsDone()).toBe(before);
    expect(before).toBeLessThan(3000);
  } finally {
    await cluster.onStandby('SELECT pg_wal_replay_resume()');
  }
  expect(await exited).toBe(0);
  const summary = JSON.parse(stdout);
  expect(summary.result).toBe('rotated');
  expect(summary.throttled.replicaLagMs).toBeGreaterThan(2500);
  await cluster.waitForCatchUp();
  await expectEveryValueReadsBackOn(inst.db.url);
  await expectEveryValueReadsBackOn(cluster.standbyUrl(inst.db.name));
}, 180_000);

test('a watched standby that is gone stops the rotation with exit 3 after --replica-timeout, and the job resumes', async () => {
  await cluster.stopStandby();
  try {
    const r = await runCli([...ROTATE, '--max-replica-lag', '1s', '--replica', STANDBY_NAME, '--replica-timeout', '2s'], { env: inst.env });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/standby standby1: not connected/);
    expect(r.stderr).toMatch(/--replica-timeout/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  } finally {
    await cluster.startStandby();
  }
  const again = await runCli([...ROTATE, '--max-replica-lag', '5s', '--json'], { env: inst.env });
  expect(again.code).toBe(0);
  const summary = JSON.parse(again.stdout);
  expect(summary.resumed).toBe(true);
  await expectEveryValueReadsBackOn(inst.db.url);
}, 180_000);

test('--max-replica-lag as a role that may not see the standbys exits 3 naming pg_read_all_stats, before any key is made', async () => {
  await inst.db.query(`DO $$ BEGIN CREATE ROLE ak_no_stats LOGIN PASSWORD 'pw'; EXCEPTION WHEN duplicate_object THEN NULL; END $$`);
  await inst.db.query(`GRANT ALL ON SCHEMA alation_keys, public TO ak_no_stats`);
  await inst.db.query(`GRANT ALL ON ALL TABLES IN SCHEMA alation_keys, public TO ak_no_stats`);
  await inst.db.query(`GRANT ALL ON ALL SEQUENCES IN SCHEMA alation_keys, public TO ak_no_stats`);
  await inst.db.query(`GRANT TEMPORARY ON DATABASE ${inst.db.name} TO ak_no_stats`);
  const keysBefore = (await inst.db.query('SELECT count(*)::int AS n FROM alation_keys.keyring')).rows[0].n;
  const u = new URL(inst.db.url);
  u.username = 'ak_no_stats';
  u.password = 'pw';
  const r = await runCli([...ROTATE, '--max-replica-lag', '1s'], { env: { ...inst.env, ALATION_KEYS_DATABASE_URL: u.toString() } });
  expect(r.code).toBe(3);
  expect(r.stderr).toMatch(/pg_read_all_stats/);
  expect((await inst.db.query('SELECT count(*)::int AS n FROM alation_keys.keyring')).rows[0].n).toBe(keysBefore);
});
