import { Client } from 'pg';
import { createJob } from '../src/core/jobs';
import { MAINTENANCE_LOCK } from '../src/db/transaction';
import { runCli, runCliJson } from './support/cli';
import { createTestDatabase, TestDatabase } from './support/db';
import { createInstallation, Installation } from './support/fixtures';

// Advisory locks are per database: a rotation holding the maintenance lock in another
// database on the same server must neither block nor hide anything here. (Found while
// running the suite with several test databases on one server.)
describe('job records and the maintenance lock across databases', () => {
  let inst: Installation;
  let other: TestDatabase;
  let holder: Client;
  beforeAll(async () => {
    inst = await createInstallation('jobs');
    other = await createTestDatabase('jobs_other');
    holder = new Client({ connectionString: other.url, application_name: 'other-database-job' });
    await holder.connect();
    await holder.query('SELECT pg_advisory_lock($1, $2)', [...MAINTENANCE_LOCK]);
  });
  afterAll(async () => {
    await holder.end();
    await other.drop();
    await inst.cleanup();
  });

  test('a running job whose process is gone is shown as interrupted, even while another database holds the lock', async () => {
    const job = await createJob(inst.db.pool, { kind: 'rotate', fromVersion: 1, toVersion: 2 });
    const r = await runCliJson(['jobs', 'show', String(job.id)], { env: inst.env });
    expect(r.code).toBe(0);
    expect(r.json.job.state).toBe('interrupted');
    expect(r.json.job.error).toContain('stopped without finishing');
  });

  test('a running job whose process holds this database\'s lock stays running', async () => {
    const job = await createJob(inst.db.pool, { kind: 'backup' });
    const mine = new Client({ connectionString: inst.db.url });
    await mine.connect();
    try {
      await mine.query('SELECT pg_advisory_lock($1, $2)', [...MAINTENANCE_LOCK]);
      const r = await runCliJson(['jobs', 'show', String(job.id)], { env: inst.env });
      expect(r.json.job.state).toBe('running');
      const busy = await runCli(['rotate', '--skip-backup-check', '--settle-time', '0s'], { env: inst.env });
      expect(busy.code).toBe(3);
      expect(busy.stderr).toContain(`job ${job.id} (backup`);
    } finally {
      await mine.end();
    }
    const after = await runCliJson(['jobs', 'show', String(job.id)], { env: inst.env });
    expect(after.json.job.state).toBe('interrupted');
  });

  test('the lock held in another database does not block a rotation here', async () => {
    const r = await runCli(['rotate', '--skip-backup-check', '--settle-time', '0s'], { env: inst.env });
    expect(r.code).toBe(0);
    const jobs = await runCliJson(['jobs', 'list', '--kind', 'rotate'], { env: inst.env });
    expect(jobs.json.jobs[0].state).toBe('succeeded');
    expect(jobs.json.jobs.map((j: { kind: string }) => j.kind)).toEqual(jobs.json.jobs.map(() => 'rotate'));
  });

  test('jobs list --limit and --kind are honoured, in the table and with --json, as are jobs --limit/--kind', async () => {
    // Jobs of both kinds exist from the tests above (rotate 3, backup 1); one more of each.
    await createJob(inst.db.pool, { kind: 'backup' }).then((j) => inst.db.pool.query(`UPDATE alation_keys.jobs SET state = 'failed' WHERE id = $1`, [j.id]));
    await createJob(inst.db.pool, { kind: 'rotate', fromVersion: 1, toVersion: 2 }).then((j) =>
      inst.db.pool.query(`UPDATE alation_keys.jobs SET state = 'failed' WHERE id = $1`, [j.id]),
    );
    const all = await runCliJson(['jobs', 'list'], { env: inst.env });
    const kinds = all.json.jobs.map((j: { kind: string }) => j.kind);
    expect(kinds).toContain('rotate');
    expect(kinds).toContain('backup');
    expect(all.json.jobs.length).toBeGreaterThan(3);

    for (const args of [['jobs', 'list'], ['jobs']]) {
      const two = await runCliJson([...args, '--limit', '2'], { env: inst.env });
      expect(two.code).toBe(0);
      expect(two.json.jobs.map((j: { id: number }) => j.id)).toEqual(all.json.jobs.slice(0, 2).map((j: { id: number }) => j.id));
      const backups = await runCliJson([...args, '--kind', 'backup'], { env: inst.env });
      expect(backups.json.jobs.length).toBe(kinds.filter((k: string) => k === 'backup').length);
      expect(new Set(backups.json.jobs.map((j: { kind: string }) => j.kind))).toEqual(new Set(['backup']));
      const table = await runCli([...args, '--limit', '1', '--kind', 'rotate'], { env: inst.env });
      expect(table.code).toBe(0);
      const rows = table.stdout.split('\n').filter((l) => /^│ \d+ /.test(l));
      expect(rows).toHaveLength(1);
      expect(rows[0]).toContain(' rotate ');
    }
    const bad = await runCli(['jobs', 'list', '--limit', '0'], { env: inst.env });
    expect(bad.code).toBe(2);
  });
});
