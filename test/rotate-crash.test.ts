/**
 * kill -9 of a real `rotate` process at several points, then a re-run: it resumes the same
 * job to the same key, every value is intact and exactly one new DEK exists per job.
 * ALATION_KEYS_TEST_PAUSE_AT (test-only) makes the child stop at a named point and say so.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runCliJson } from './support/cli';
import { verifyRosemeta } from '../scripts/lib/rosemeta';
import { FAST, keyringRows, rotateJobs, spawnUntil } from './support/rotate-helpers';
import { sleep } from '../src/core/rewrite/util';

let inst: Installation;

beforeAll(async () => {
  inst = await createInstallation('rotcrash', { values: 3000 });
});

afterAll(async () => {
  await inst?.cleanup();
});

async function verifyAllUnder(version: number) {
  await inst.keyring.refresh();
  const report = await verifyRosemeta(inst.db.pool, inst.keyring, inst.shape!);
  expect(report.mismatched).toEqual([]);
  expect(report.missing).toEqual([]);
  expect(report.checked).toBeGreaterThan(2500);
  for (const perVersion of Object.values(report.versions)) expect(Object.keys(perVersion)).toEqual([String(version)]);
}

async function resumeAndCheck(expectedJob: string, target: number, versionsBefore: number) {
  const r = await runCliJson(['rotate', ...FAST, '--batch-size', '300'], { env: inst.env });
  expect([r.code, r.stderr]).toEqual([0, expect.stringMatching(new RegExp(`resuming job ${expectedJob} \\(v${target - 1}→v${target}\\)`))]);
  expect(r.json.jobId).toBe(Number(expectedJob));
  expect(r.json.toVersion).toBe(target);
  const keys = await keyringRows(inst.db.pool);
  // Exactly one new DEK for the job, however many times it was started.
  expect(keys.map((k) => k.version)).toEqual(Array.from({ length: versionsBefore + 1 }, (_, i) => i + 1));
  expect(keys.find((k) => k.version === target)!.state).toBe('primary');
  expect(keys.filter((k) => k.version < target).every((k) => k.state === 'retired')).toBe(true);
  const jobs = await rotateJobs(inst.db.pool);
  expect(jobs.filter((j) => j.to_version === target)).toHaveLength(1);
  expect(jobs[jobs.length - 1].state).toBe('succeeded');
  await verifyAllUnder(target);
}

for (const phase of ['after-key', 'mid-column', 'between-columns', 'convergence']) {
  test(`SIGKILL at ${phase}, then re-run: resumes the same job, values intact, one new key`, async () => {
    const before = (await keyringRows(inst.db.pool)).length;
    const run = spawnUntil(['rotate', ...FAST, '--batch-size', '300'], `ALATION_KEYS_TEST_PAUSED ${phase}`, {
      env: { ...inst.env, ALATION_KEYS_TEST_PAUSE_AT: phase },
    });
    await run.seen;
    run.child.kill('SIGKILL');
    const res = await run.exited;
    expect(res.signal).toBe('SIGKILL');
    const jobs = await rotateJobs(inst.db.pool);
    const job = jobs[jobs.length - 1];
    expect(job.state).toBe('running'); // the process died without a word
    expect(job.to_version).toBe(before + 1);
    const cols = Object.values(job.detail.columns) as Array<{ done: boolean; rowsDone: number }>;
    if (phase === 'after-key') expect(cols.every((c) => c.rowsDone === 0)).toBe(true);
    if (phase === 'mid-column') expect(cols.filter((c) => c.rowsDone > 0)).toHaveLength(1);
    if (phase === 'between-columns') expect(cols.filter((c) => c.done)).toHaveLength(1);
    if (phase === 'convergence') expect(cols.every((c) => c.done)).toBe(true);
    await resumeAndCheck(job.id, before + 1, before);
  });
}

async function rowsDoneOfLatest(): Promise<number> {
  const jobs = await rotateJobs(inst.db.pool);
  const latest = jobs[jobs.length - 1];
  if (!latest?.detail?.columns) return 0;
  return Object.values(latest.detail.columns).reduce((a: number, c: any) => a + (c.rowsDone ?? 0), 0);
}

test('SIGKILL at an arbitrary moment of a throttled run, twice, then re-run', async () => {
  const before = (await keyringRows(inst.db.pool)).length;
  let jobId: string | undefined;
  for (const delay of [700, 1300]) {
    const run = spawnUntil(['rotate', ...FAST, '--batch-size', '100', '--max-rate', '1500'], 'rotating', { env: inst.env });
    await run.seen;
    // Kill once this run has checkpointed a chunk, so the kill lands mid-column whatever the load.
    const doneBefore = await rowsDoneOfLatest();
    for (let waited = 0; (await rowsDoneOfLatest()) <= doneBefore && waited < 60_000; waited += 50) await sleep(50);
    await sleep(delay / 10);
    run.child.kill('SIGKILL');
    await run.exited;
    const jobs = await rotateJobs(inst.db.pool);
    jobId ??= jobs[jobs.length - 1].id;
    expect(jobs[jobs.length - 1].id).toBe(jobId);
  }
  const job = (await rotateJobs(inst.db.pool)).find((j) => j.id === jobId)!;
  const done = Object.values(job.detail.columns).reduce((a: number, c: any) => a + c.rowsDone, 0);
  expect(done).toBeGreaterThan(0);
  await resumeAndCheck(jobId!, before + 1, before);
});
