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
  });
});
