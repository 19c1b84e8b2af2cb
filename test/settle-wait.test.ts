/**
 * The settle wait at the end of every rotation is shown (a countdown and why) and kept out of
 * the throughput: the summary reports the rewrite rate over the time spent rewriting, and the
 * settle wait and the total time apart. --quiet shows none of it. Through the built binary.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';

let inst: Installation;

beforeAll(async () => {
  inst = await createInstallation('settle-wait', { values: 300 });
});

afterAll(async () => {
  await inst?.cleanup();
});

const ROTATE = ['rotate', '--skip-backup-check', '--settle-time', '4s'];

test('the wait is counted down on stderr with its reason, and the summary keeps it apart from the rewrite', async () => {
  const r = await runCli(ROTATE, { env: inst.env });
  expect(r.code).toBe(0);
  expect(r.stderr).toMatch(/every value is under v2; waiting \ds for application instances to load it before the last count/);
  expect(r.stderr).toMatch(/settle wait: \ds left \(application instances load the new key\)/);
  expect(r.stdout).toMatch(/^[\d,]+ values, [\d.]+ MB rewritten in [\d.]+s \([\d,]+ values\/s, [\d.]+ MB\/s\); 1 pass, \d+ vacuums?$/m);
  expect(r.stdout).toMatch(/^settle wait [\d.]+s \(application instances load the new key before the last count; --settle-time\); [\d.]+s in all$/m);
});

test('--json: rewriteSeconds, settleSeconds and durationSeconds; the rates are over the rewrite only', async () => {
  const r = await runCliJson(ROTATE, { env: inst.env });
  expect(r.code).toBe(0);
  const s = r.json;
  expect(s.settleSeconds).toBeGreaterThanOrEqual(2);
  expect(s.settleSeconds).toBeLessThanOrEqual(4);
  expect(s.rewriteSeconds).toBeGreaterThan(0);
  expect(s.durationSeconds).toBeGreaterThanOrEqual(s.rewriteSeconds + s.settleSeconds - 0.2);
  // The rate is the rewrite's: over the total time (the settle wait inside) it would be far lower.
  expect(s.rowsPerSecond).toBeGreaterThan((s.rowsThisRun / s.durationSeconds) * 1.5);
  expect(Math.abs(s.rowsPerSecond - s.rowsThisRun / s.rewriteSeconds)).toBeLessThanOrEqual(s.rowsPerSecond * 0.2 + 1);
});

test('--quiet shows no countdown (cron mail stays empty)', async () => {
  const r = await runCli([...ROTATE, '--quiet'], { env: inst.env });
  expect(r.code).toBe(0);
  expect(r.stderr).not.toMatch(/settle|waiting|values\/s/);
});
