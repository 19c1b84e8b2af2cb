/**
 * Wording an operator reads, through the built binary: the resume message says the state
 * once; a resumed job shows its real row counts; `backup verify --offline` does not call a key
 * absent it did not look for; a missing database user is named; counts have proper plurals.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { FAST, rotateJobs, spawnUntil } from './support/rotate-helpers';
import { testWithPgDump } from './support/pg-dump';

let inst: Installation;

beforeAll(async () => {
  inst = await createInstallation('messages', { values: 20 });
});

afterAll(async () => {
  await inst?.cleanup();
});

/** Values (not NULLs) in the three rosemeta columns. */
async function nonNullValues(): Promise<number> {
  const r = await inst.db.query(
    `SELECT (SELECT count(secret) FROM public.credentials) + (SELECT count(body) FROM public.documents) + (SELECT count(payload) FROM public.blobs) AS n`,
  );
  return Number(r.rows[0].n);
}

describe('a rotation stopped with Ctrl-C during its settle wait, then resumed', () => {
  let resumed: Awaited<ReturnType<typeof runCli>>;
  let jobId: string;

  beforeAll(async () => {
    const run = spawnUntil(['rotate', '--skip-backup-check', '--settle-time', '60s'], 'waiting', { env: inst.env });
    await run.seen;
    run.child.kill('SIGINT');
    expect((await run.exited).code).toBe(130);
    jobId = (await rotateJobs(inst.db.pool)).pop()!.id;
    resumed = await runCli(['rotate', ...FAST], { env: inst.env });
    expect(resumed.code).toBe(0);
  });

  test('the resume message says "interrupted" once', () => {
    expect(resumed.stderr).toContain(`resuming job ${jobId} (v1→v2) from its checkpoints (it was interrupted: job ${jobId} checkpointed and marked interrupted)`);
    expect(resumed.stderr).not.toMatch(/interrupted: interrupted/);
  });

  test('jobs list shows the rows the job rewrote, all of them', async () => {
    const n = await nonNullValues();
    const list = await runCliJson(['jobs', 'list', '--kind', 'rotate'], { env: inst.env });
    const job = list.json.jobs.find((j: any) => String(j.id) === jobId);
    expect(job).toMatchObject({ state: 'succeeded', rows_total: n, rows_done: n });
    const human = await runCli(['jobs', 'list', '--kind', 'rotate'], { env: inst.env });
    expect(human.stdout).toMatch(new RegExp(`\\b${jobId}\\b.*succeeded.*\\b${n}/${n}\\b`));
  });
});

testWithPgDump('backup verify --offline says what it checked, not that a key is absent', async () => {
  const dir = path.join(inst.dir, 'backups');
  const b = await runCliJson(['backup', '--out', dir], { env: inst.env });
  expect(b.code).toBe(0);
  const offline = await runCli(['backup', 'verify', '--offline', b.json.file], {
    env: { ALATION_KEYS_MASTER_KEY_FILE: inst.masterKeyFile, ALATION_KEYS_DATABASE_URL: 'postgresql://nobody@127.0.0.1:1/none' },
  });
  expect(offline.code).toBe(0);
  expect(offline.stdout).not.toMatch(/absent/);
  expect(offline.stdout).toMatch(/^ {7}v\d+: unwraps with master key mk_\w+ \(offline: not checked against the live keyring\)$/m);
  const online = await runCli(['backup', 'verify', b.json.file], { env: inst.env });
  expect(online.code).toBe(0);
  expect(online.stdout).toMatch(/^ {7}v\d+ \((primary|active|retired) in today's keyring\): unwraps with master key mk_\w+$/m);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('init with $USER unset and no user in the URL names the missing setting', async () => {
  const url = new URL(inst.db.url);
  url.username = '';
  const r = await runCli(['init', '--database-url', url.toString()], { env: { USER: undefined, PGUSER: undefined, LOGNAME: undefined } });
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/^error: no database user name: the database URL names none, and neither PGUSER nor USER is set$/m);
  expect(r.stderr).toMatch(/hint: name the user in the URL .* or set PGUSER/);
  expect(r.stderr).not.toMatch(/startup packet/);
});

test('counts are spelled with proper plurals, never thing(s)', async () => {
  // One stray plaintext value: something needs attention, counted in the singular.
  await inst.db.query(`UPDATE public.credentials SET secret = 'plain' WHERE id = (SELECT min(id) FROM public.credentials WHERE secret IS NOT NULL)`);
  const status = await runCliJson(['status', '--check', '--no-provider-check'], { env: inst.env });
  const n = status.json.attention.length;
  expect(status.json.attention).toContain(
    'public.credentials.secret: 1 plaintext value in an encrypted column; run `alation-keys verify public.credentials.secret`, then `alation-keys encrypt public.credentials.secret`',
  );
  const plain = await runCli(['status', '--check', '--no-provider-check'], { env: inst.env });
  expect(plain.code).toBe(3);
  expect(plain.stderr).toContain(`error: ${n} ${n === 1 ? 'thing needs' : 'things need'} attention`);
  for (const out of [plain.stdout, plain.stderr]) expect(out).not.toMatch(/\w\((s|es)\)/);
});
