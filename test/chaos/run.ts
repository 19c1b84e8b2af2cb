/**
 * `npm run test:chaos`: evidence that nothing is lost under the faults operators meet.
 * Scenarios: kill anywhere, database restart, the application keeps writing, KMS trouble,
 * bad input, and a scan for secrets in everything the tool printed, logged or exposed.
 * Prints a table at the end and writes test/chaos/results/<timestamp>.json.
 *
 * Options: --seed N (replay), --values N (default 200000), --kills N (default 20),
 *          --only a,b (scenario names).
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client, Pool } from 'pg';
import { addColumn } from '../../src/core/columns';
import { openKeyring } from '../../src/core/keyring-client';
import { readKeyring } from '../../src/core/keyring';
import { readSettings } from '../../src/core/settings';
import { createKeyProvider } from '../../src/kms';
import { IntegrityError } from '../../src/errors';
import { readMasterKeyFile } from '../../src/kms/master-key-file';
import {
  BLOBS,
  createRosemetaTables,
  generateRosemeta,
  ROSEMETA_COLUMNS,
  RosemetaColumn,
  RosemetaShape,
  verifyRosemeta,
} from '../../scripts/lib/rosemeta';
import { EmbeddedServer, startEmbeddedPostgres } from '../../scripts/lib/embedded-postgres';
import { FakeAws, startFakeAws } from '../support/fake-aws';
import { seededRandom } from './random';

const ROOT = path.resolve(__dirname, '../../..');
const BIN = path.join(ROOT, 'bin/alation-keys');
const RESULTS = path.join(ROOT, 'test/chaos/results');

// ---------------------------------------------------------------- options, randomness, logging

function parseOptions(argv: string[]) {
  const o = { seed: Date.now() % 1_000_000, values: 200_000, kills: 20, only: null as string[] | null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--seed') (o.seed = Number(v)), i++;
    else if (a === '--values') (o.values = Number(v)), i++;
    else if (a === '--kills') (o.kills = Number(v)), i++;
    else if (a === '--only') (o.only = v.split(',')), i++;
    else {
      process.stderr.write(`unknown option ${a} (--seed N, --values N, --kills N, --only a,b)\n`);
      process.exit(2);
    }
  }
  return o;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const say = (s: string) => process.stdout.write(`${new Date().toISOString().slice(11, 19)} ${s}\n`);

interface ScenarioResult {
  scenario: string;
  runs: number;
  faults: number;
  valuesChecked: number;
  valuesLost: number;
  result: 'pass' | 'FAIL';
  notes: string[];
  seconds: number;
}

// ---------------------------------------------------------------- child processes, captured

/** Every byte any child printed, and every argv we or they started, for the secrets scan. */
const captured: { outputs: string[]; argvs: Set<string> } = { outputs: [], argvs: new Set() };
let logDir = '';

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

function startCli(args: string[], env: NodeJS.ProcessEnv): { child: ChildProcess; done: Promise<RunResult> } {
  const t0 = Date.now();
  const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NO_COLOR: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  captured.argvs.add([process.execPath, BIN, ...args].join(' '));
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<RunResult>((resolve) => {
    child.on('close', (code, signal) => {
      captured.outputs.push(stdout, stderr);
      fs.appendFileSync(path.join(logDir, 'cli.log'), `$ alation-keys ${args.join(' ')}\n${stdout}${stderr}[exit ${code ?? signal}]\n`);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
    });
  });
  return { child, done };
}

const runCli = (args: string[], env: NodeJS.ProcessEnv) => startCli(args, env).done;

/** Samples every process's argv on the machine while the suite runs (pg_dump included). */
function startArgvSampler(): () => void {
  const timer = setInterval(() => {
    for (const pid of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
        if (cmd) captured.argvs.add(cmd);
      } catch {
        /* gone */
      }
    }
  }, 100);
  return () => clearInterval(timer);
}

/** Samples the queries in pg_stat_activity while the suite runs. */
function startActivitySampler(url: () => string): () => Promise<void> {
  let stop = false;
  const loop = (async () => {
    while (!stop) {
      const c = new Client({ connectionString: url() });
      c.on('error', () => undefined);
      try {
        await c.connect();
        while (!stop) {
          const r = await c.query(`SELECT query FROM pg_stat_activity WHERE query <> '' AND pid <> pg_backend_pid()`);
          for (const row of r.rows) captured.outputs.push(row.query);
          await sleep(200);
        }
      } catch {
        await sleep(500);
      } finally {
        await c.end().catch(() => undefined);
      }
    }
  })();
  return async () => {
    stop = true;
    await loop;
  };
}

// ---------------------------------------------------------------- installations

interface Installation {
  name: string;
  url: string;
  env: NodeJS.ProcessEnv;
  masterKeyFile: string;
  pool: Pool;
  shape: RosemetaShape;
  backupDir: string;
}

let server: EmbeddedServer;
const APP_PASSWORD = `chaos-pw-${randomBytes(9).toString('base64url')}`;

/** The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802/7677). */
function scramVerifier(password: string): string {
  const salt = randomBytes(16);
  const iterations = 4096;
  const salted = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

async function createInstallation(name: string, values: number, extraEnv: NodeJS.ProcessEnv = {}): Promise<Installation> {
  const adminUrl = await server.createDatabase(name);
  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'chaos_app') THEN CREATE ROLE chaos_app LOGIN SUPERUSER; END IF; END $$`);
  await admin.query(`SET log_statement = 'none'`);
  // A SCRAM verifier, as psql's \password sends: the password itself never appears in the
  // query text, which the pg_stat_activity sampler would otherwise catch as a leak.
  await admin.query(`ALTER ROLE chaos_app PASSWORD '${scramVerifier(APP_PASSWORD)}'`);
  await admin.end();
  // The tool connects as chaos_app, whose password must never show anywhere.
  const u = new URL(adminUrl);
  u.username = 'chaos_app';
  u.password = APP_PASSWORD;
  const url = u.toString();
  const dir = path.join(logDir, name);
  fs.mkdirSync(dir, { recursive: true });
  const masterKeyFile = path.join(dir, 'master.key');
  const backupDir = path.join(dir, 'backups');
  const env = { ALATION_KEYS_DATABASE_URL: url, ALATION_KEYS_MASTER_KEY_FILE: masterKeyFile, ALATION_KEYS_BACKUP_DIR: backupDir, ...extraEnv };
  const init = await runCli(['init'], env);
  if (init.code !== 0) throw new Error(`init failed: ${init.stderr}`);
  const pool = new Pool({ connectionString: url, max: 4 });
  pool.on('error', () => undefined);
  await createRosemetaTables(pool);
  for (const c of ROSEMETA_COLUMNS) await addColumn(pool, c);
  const keyring = await openKeyring({ pool, masterKeyFile });
  const shape = await generateRosemeta(pool, keyring, { totalValues: values, seed: name });
  await keyring.close();
  return { name, url, env, masterKeyFile, pool, shape, backupDir };
}

async function keyringVersions(pool: Pool): Promise<Array<{ version: number; state: string }>> {
  return (await pool.query('SELECT version, state FROM alation_keys.keyring ORDER BY version')).rows;
}

/** The full check after a scenario: every value, no loss, nothing under old versions. */
async function checkInstallation(
  inst: Installation,
  opts: { overrides?: Map<string, string | Buffer | null>; extraIds?: Map<RosemetaColumn, Set<number>> } = {},
) {
  const keyring = await openKeyring({ pool: inst.pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 0 });
  try {
    const report = await verifyRosemeta(inst.pool, keyring, inst.shape, { seed: inst.name, ...opts });
    const keys = await keyringVersions(inst.pool);
    const primary = keys.find((k) => k.state === 'primary')!.version;
    const oldValues = Object.values(report.versions).reduce(
      (sum, byVersion) => sum + Object.entries(byVersion).filter(([v]) => Number(v) !== primary).reduce((a, [, n]) => a + n, 0),
      0,
    );
    return {
      checked: report.checked + report.nulls,
      lost: report.missing.length + report.mismatched.length,
      unexpected: report.unexpected.length,
      oldValues,
      primary,
      keys,
      report,
    };
  } finally {
    await keyring.close();
  }
}

async function lastJob(pool: Pool, kind: string) {
  return (await pool.query(`SELECT id, state, to_version, detail FROM alation_keys.jobs WHERE kind = $1 ORDER BY id DESC LIMIT 1`, [kind])).rows[0];
}

// ---------------------------------------------------------------- scenarios

const ROTATE = ['rotate', '--skip-backup-check', '--settle-time', '0s', '--batch-size', '1000'];

async function scenarioKillAnywhere(opts: ReturnType<typeof parseOptions>, random: () => number): Promise<ScenarioResult> {
  const t0 = Date.now();
  const notes: string[] = [];
  say(`kill anywhere: generating ${opts.values.toLocaleString('en-US')} values`);
  const inst = await createInstallation('chaos_kill', opts.values);
  const before = await keyringVersions(inst.pool);
  // SIGKILL `rotate` at random moments of up to 6 s after it starts (preflight, key creation,
  // chunks, convergence), resuming after each. When a run gets to the end before its kill, the
  // next run starts a new rotation: every rotation must still create exactly one DEK.
  const windowMs = 6000;
  let kills = 0;
  let runs = 0;
  let completed = 0;
  let lastFinished = false;
  const killLog: string[] = [];
  const countedJobs = new Set<string>();
  while (kills < opts.kills) {
    const at = Math.floor(random() * windowMs);
    const { child, done } = startCli(ROTATE, inst.env);
    runs++;
    const timer = setTimeout(() => child.kill('SIGKILL'), at);
    const r = await done;
    clearTimeout(timer);
    lastFinished = r.code === 0 && r.signal === null;
    if (r.signal === 'SIGKILL') {
      kills++;
      // A kill can land after the job was recorded as succeeded (while the summary is printed
      // or the connections close): that rotation is complete, and the next run rightly starts
      // a new one.
      const job = await lastJob(inst.pool, 'rotate');
      if (job?.state === 'succeeded' && !countedJobs.has(String(job.id))) {
        countedJobs.add(String(job.id));
        completed++;
        killLog.push(`${at}ms(after its job succeeded)`);
      } else killLog.push(`${at}ms`);
    } else if (lastFinished) {
      const job = await lastJob(inst.pool, 'rotate');
      if (job) countedJobs.add(String(job.id));
      completed++;
      killLog.push(`finished(${r.ms}ms)`);
    } else {
      notes.push(`run ${runs} exited ${r.code}: ${r.stderr.trim().split('\n')[0]}`);
    }
  }
  let finalCode = 0;
  if (!lastFinished) {
    const final = await runCli(ROTATE, inst.env);
    runs++;
    finalCode = final.code ?? -1;
    if (final.code === 0) completed++;
    else notes.push(`final rotate exited ${final.code}: ${final.stderr.trim().split('\n').slice(-2).join(' ')}`);
  }
  const check = await checkInstallation(inst);
  const after = await keyringVersions(inst.pool);
  const newKeys = after.length - before.length;
  const jobs = (await inst.pool.query(`SELECT state, to_version FROM alation_keys.jobs WHERE kind = 'rotate'`)).rows;
  const targets = new Set(jobs.map((j) => j.to_version));
  const allSucceeded = jobs.every((j) => j.state === 'succeeded');
  notes.push(`${completed} rotation(s) completed through ${kills} kills; kill times (seed-replayable): ${killLog.join(', ')}`);
  const ok = check.lost === 0 && check.unexpected === 0 && check.oldValues === 0 && newKeys === completed && targets.size === completed && jobs.length === completed && allSucceeded && finalCode === 0;
  if (newKeys !== completed) notes.push(`${newKeys} new DEKs for ${completed} rotations (expected exactly one each)`);
  if (jobs.length !== completed) notes.push(`${jobs.length} rotate jobs for ${completed} rotations`);
  if (!allSucceeded) notes.push(`job states: ${jobs.map((j) => j.state).join(', ')}`);
  if (check.oldValues) notes.push(`${check.oldValues} values still under old versions`);
  await inst.pool.end();
  return { scenario: 'kill anywhere', runs, faults: kills, valuesChecked: check.checked, valuesLost: check.lost, result: ok ? 'pass' : 'FAIL', notes, seconds: (Date.now() - t0) / 1000 };
}

async function waitForDatabase(url: string) {
  for (let i = 0; i < 100; i++) {
    const c = new Client({ connectionString: url });
    c.on('error', () => undefined);
    try {
      await c.connect();
      await c.end();
      return;
    } catch {
      await sleep(200);
    }
  }
  throw new Error('database did not come back');
}

async function scenarioDatabaseRestart(random: () => number): Promise<ScenarioResult> {
  const t0 = Date.now();
  const notes: string[] = [];
  const inst = await createInstallation('chaos_restart', 60_000);
  const before = await keyringVersions(inst.pool);
  let faults = 0;
  let runs = 0;
  // 1. Mid-rotation, twice.
  for (let i = 0; i < 2; i++) {
    const { done } = startCli([...ROTATE, '--max-rate', '20000'], inst.env);
    runs++;
    await sleep(1000 + Math.floor(random() * 1500));
    await server.stopImmediate();
    faults++;
    const r = await done;
    notes.push(`rotate during restart exited ${r.code}`);
    await server.start();
    await waitForDatabase(inst.url);
  }
  const resumed = await runCli(ROTATE, inst.env);
  runs++;
  if (resumed.code !== 0) notes.push(`resume exited ${resumed.code}: ${resumed.stderr.trim().split('\n')[0]}`);
  const check = await checkInstallation(inst);
  const newKeys = (await keyringVersions(inst.pool)).length - before.length;
  // 2. Mid-backup.
  const { done: backupDone } = startCli(['backup', '--out', inst.backupDir], inst.env);
  runs++;
  // Stop the server once pg_dump is writing (a .partial file with data), plus a random delay.
  for (let i = 0; i < 200; i++) {
    const partial = fs.existsSync(inst.backupDir) && fs.readdirSync(inst.backupDir).find((f) => f.endsWith('.partial'));
    if (partial && fs.statSync(path.join(inst.backupDir, partial)).size > 0) break;
    await sleep(50);
  }
  await sleep(Math.floor(random() * 300));
  await server.stopImmediate();
  faults++;
  const b = await backupDone;
  await server.start();
  await waitForDatabase(inst.url);
  const files = fs.existsSync(inst.backupDir) ? fs.readdirSync(inst.backupDir) : [];
  const finishedLooking = files.filter((f) => /\.dump$/.test(f) || /\.manifest\.json$/.test(f));
  const backupJob = await lastJob(inst.pool, 'backup');
  notes.push(`backup during restart exited ${b.code}; files left: ${files.join(', ') || 'none'}; job ${backupJob ? backupJob.id : 'not recorded'}`);
  const okBackup = b.code !== 0 ? finishedLooking.length === 0 : finishedLooking.length === 2;
  // The job row is written once pg_dump's snapshot exists: a restart before that leaves none.
  let jobState = 'none';
  if (backupJob) {
    const status = await runCli(['jobs', 'show', String(backupJob.id), '--json'], inst.env);
    jobState = JSON.parse(status.stdout).job.state;
  }
  const okJob = b.code !== 0 ? jobState !== 'succeeded' && jobState !== 'running' : jobState === 'succeeded';
  if (!okBackup) notes.push(`finished-looking files after a failed backup: ${finishedLooking.join(', ')}`);
  if (!okJob) notes.push(`backup job state ${jobState}`);
  const again = await runCli(['backup', '--out', inst.backupDir], inst.env);
  runs++;
  if (again.code !== 0) notes.push(`backup after restart exited ${again.code}`);
  const ok = check.lost === 0 && check.oldValues === 0 && newKeys === 1 && resumed.code === 0 && okBackup && okJob && again.code === 0;
  await inst.pool.end();
  return { scenario: 'database restart', runs, faults, valuesChecked: check.checked, valuesLost: check.lost, result: ok ? 'pass' : 'FAIL', notes, seconds: (Date.now() - t0) / 1000 };
}

async function scenarioApplicationWrites(seed: number): Promise<ScenarioResult> {
  const t0 = Date.now();
  const notes: string[] = [];
  const inst = await createInstallation('chaos_app', 60_000);
  const logFile = path.join(logDir, 'app-writes.jsonl');
  fs.rmSync(logFile, { force: true });
  const maxId = Math.max(inst.shape.credentials, inst.shape.documents, inst.shape.blobs);
  const insertFrom = 10_000_000;
  const writer = spawn(
    process.execPath,
    [path.join(__dirname, 'app-writer.js'), inst.url, inst.masterKeyFile, logFile, String(maxId), String(insertFrom), '25000', String(seed)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let writerOut = '';
  writer.stdout!.on('data', (d) => (writerOut += d));
  writer.stderr!.on('data', (d) => (writerOut += d));
  const writerDone = new Promise<void>((r) => writer.on('close', () => r()));
  await sleep(1500);
  const r = await runCli(['rotate', '--skip-backup-check', '--settle-time', '10s', '--batch-size', '200', '--max-rate', '4000'], inst.env);
  await writerDone;
  captured.outputs.push(writerOut);
  if (r.code !== 0) notes.push(`rotate exited ${r.code}: ${r.stderr.trim().split('\n')[0]}`);
  // Writes that landed after the rotation finished may use the old key legitimately (stale
  // instance); a second rotation is what an operator's next run does. Count before it.
  const overrides = new Map<string, string | Buffer | null>();
  const extraIds = new Map<RosemetaColumn, Set<number>>(ROSEMETA_COLUMNS.map((c) => [c, new Set<number>()]));
  let acknowledged = 0;
  for (const line of fs.readFileSync(logFile, 'utf8').split('\n')) {
    if (!line) continue;
    const w = JSON.parse(line);
    acknowledged++;
    overrides.set(`${w.column}/${w.id}`, typeof w.value === 'string' ? w.value : Buffer.from(w.value.hex, 'hex'));
    if (w.insert) extraIds.get(w.column)!.add(w.id);
  }
  const job = await lastJob(inst.pool, 'rotate');
  const skipped = Number(job?.detail?.summary?.skippedConcurrent ?? job?.detail?.skippedConcurrent ?? sumSkipped(job?.detail));
  const check = await checkInstallation(inst, { overrides, extraIds });
  notes.push(`${acknowledged} acknowledged application writes (${writerOut.trim()}), ${skipped} values skipped by the rotation because the application changed them`);
  if (check.oldValues) notes.push(`${check.oldValues} values under old versions (written by the stale instance after convergence?)`);
  const ok = r.code === 0 && check.lost === 0 && check.unexpected === 0 && skipped > 0 && acknowledged > 0 && job?.state === 'succeeded';
  await inst.pool.end();
  return { scenario: 'application keeps writing', runs: 1, faults: acknowledged, valuesChecked: check.checked, valuesLost: check.lost, result: ok ? 'pass' : 'FAIL', notes, seconds: (Date.now() - t0) / 1000 };
}

function sumSkipped(detail: any): number {
  if (!detail?.columns) return 0;
  return Object.values(detail.columns as Record<string, { skipped?: number }>).reduce((a, c) => a + (c.skipped ?? 0), 0);
}

let aws: FakeAws;

async function scenarioKms(): Promise<ScenarioResult> {
  const t0 = Date.now();
  const notes: string[] = [];
  const key = aws.createKey();
  const roleArn = `arn:aws:iam::${aws.accountId}:role/AlationBYOKRole`;
  const awsEnv = {
    AWS_ENDPOINT_URL: aws.endpoint,
    AWS_ACCESS_KEY_ID: aws.baseCredentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: aws.baseCredentials.secretAccessKey,
    AWS_REGION: aws.region,
  };
  const inst = await createInstallation('chaos_kms', 20_000, awsEnv);
  const policy = await runCli(['byok', 'policy', '--key-arn', key.arn, '--role-arn', roleArn, '--json'], inst.env);
  const externalId = JSON.parse(policy.stdout)?.externalId ?? JSON.parse(policy.stdout)?.trustPolicy?.Statement?.[0]?.Condition?.StringEquals?.['sts:ExternalId'];
  aws.createRole({ arn: roleArn, requireExternalId: externalId });
  const target = ['--region', aws.region, '--key-arn', key.arn, '--role-arn', roleArn];
  let faults = 0;
  let runs = 0;
  const expect = (what: string, r: RunResult, code: number, maxMs = 60_000) => {
    runs++;
    const fine = r.code === code && r.ms < maxMs && r.stderr.trim().split('\n').length <= 6;
    notes.push(`${what}: exit ${r.code} in ${(r.ms / 1000).toFixed(1)}s${fine ? '' : ` (expected ${code})`}`);
    return fine;
  };
  let ok = true;
  const keysBefore = await inst.pool.query('SELECT version, kek_provider, kek_id, wrapped_key FROM alation_keys.keyring ORDER BY version');
  // Onboard during an outage, under throttling and with KMS slower than the timeout.
  for (const [what, fault] of [
    ['onboard during outage', () => aws.setOutage(true, { service: 'kms' })],
    ['onboard while throttled', () => aws.setThrottle('always', 'kms')],
    ['onboard with KMS hanging', () => aws.setOutage(true, { service: 'kms', mode: 'hang' })],
    ['onboard failing midway', () => aws.failAfter('Encrypt', 0, 'KMSInternalException')],
  ] as Array<[string, () => void]>) {
    fault();
    faults++;
    const r = await runCli(['byok', 'onboard', ...target, '--yes'], inst.env);
    aws.clearFaults();
    ok = expect(what, r, 4, 90_000) && ok;
  }
  const keysAfterFaults = await inst.pool.query('SELECT version, kek_provider, kek_id, wrapped_key FROM alation_keys.keyring ORDER BY version');
  const unchanged = JSON.stringify(keysBefore.rows) === JSON.stringify(keysAfterFaults.rows);
  if (!unchanged) notes.push('the keyring changed after failed onboardings');
  ok = ok && unchanged;
  const onboard = await runCli(['byok', 'onboard', ...target, '--yes'], inst.env);
  ok = expect('onboard after KMS returned', onboard, 0) && ok;
  // Rotation preflight during an outage changes nothing.
  aws.setOutage(true, { service: 'kms' });
  faults++;
  const pre = await runCli(ROTATE, inst.env);
  aws.clearFaults();
  ok = expect('rotate preflight during outage', pre, 4) && ok;
  const afterPre = await keyringVersions(inst.pool);
  if (afterPre.length !== keysBefore.rows.length) {
    ok = false;
    notes.push('preflight during outage created a key');
  }
  // Outage after the rotation started: it finishes from cached keys or stops resumable.
  const { done } = startCli([...ROTATE, '--max-rate', '5000'], inst.env);
  await sleep(1500);
  aws.setOutage(true, { service: 'kms', mode: 'hang' });
  faults++;
  const during = await done;
  runs++;
  notes.push(`rotate with KMS going down mid-run: exit ${during.code}`);
  aws.clearFaults();
  if (during.code !== 0) {
    const resumed = await runCli(ROTATE, inst.env);
    ok = expect('rotate resumed after KMS returned', resumed, 0) && ok;
  }
  const check = await checkInstallationKms(inst, awsEnv);
  const newest = (await inst.pool.query(`SELECT kek_provider FROM alation_keys.keyring WHERE state = 'primary'`)).rows[0];
  if (newest?.kek_provider !== 'aws-kms') {
    ok = false;
    notes.push('the new DEK is not KMS-wrapped');
  }
  ok = ok && check.lost === 0 && check.oldValues === 0;
  await inst.pool.end();
  return { scenario: 'KMS trouble', runs, faults, valuesChecked: check.checked, valuesLost: check.lost, result: ok ? 'pass' : 'FAIL', notes, seconds: (Date.now() - t0) / 1000 };
}

async function checkInstallationKms(inst: Installation, awsEnv: Record<string, string>) {
  const saved = { ...process.env };
  Object.assign(process.env, awsEnv);
  try {
    return await checkInstallation(inst);
  } finally {
    for (const k of Object.keys(awsEnv)) if (saved[k] === undefined) delete process.env[k];
  }
}

function mutate(envelope: Buffer, random: () => number, kind: number, other: Buffer): Buffer {
  const b = Buffer.from(envelope);
  switch (kind) {
    case 0: {
      const i = Math.floor(random() * b.length);
      b[i] ^= 1 << Math.floor(random() * 8);
      return b;
    }
    case 1:
      return b.subarray(0, Math.floor(random() * b.length));
    case 2:
      return Buffer.concat([b, randomBytes(1 + Math.floor(random() * 20))]);
    case 3: {
      // Swap header fields: the version bytes and the nonce, or the magic and the format.
      const c = Buffer.from(b);
      if (random() < 0.5) c.writeUInt32BE(b.readUInt32BE(3) + 1 + Math.floor(random() * 3), 3);
      else b.copy(c, 7, 3, 7), b.copy(c, 3, 7, 11);
      return c;
    }
    default:
      return other; // a valid envelope from another column
  }
}

async function scenarioBadInput(random: () => number): Promise<ScenarioResult> {
  const t0 = Date.now();
  const notes: string[] = [];
  const inst = await createInstallation('chaos_input', 2_000);
  const keyring = await openKeyring({ pool: inst.pool, masterKeyFile: inst.masterKeyFile });
  let accepted = 0;
  let crashed = 0;
  let rejected = 0;
  const N = 10_000;
  for (let i = 0; i < N; i++) {
    const column = ROSEMETA_COLUMNS[i % 3];
    const plain = column === BLOBS ? randomBytes(1 + Math.floor(random() * 300)) : `value ${i} ü`;
    const sealed = await keyring.encrypt(plain as any, column);
    const otherColumn = ROSEMETA_COLUMNS[(i + 1) % 3];
    const otherStored = await keyring.encrypt((otherColumn === BLOBS ? Buffer.from('x') : 'x') as any, otherColumn);
    const raw = typeof sealed === 'string' ? Buffer.from(sealed.slice(4), 'base64') : (sealed as Buffer);
    const otherRaw = typeof otherStored === 'string' ? Buffer.from(otherStored.slice(4), 'base64') : (otherStored as Buffer);
    const bad = mutate(raw, random, i % 5, otherRaw);
    const stored = column === BLOBS ? bad : i % 7 === 0 ? 'ak1:' + bad.toString('base64').replace(/=+$/, '') : 'ak1:' + bad.toString('base64');
    try {
      await keyring.decrypt(stored as any, column);
      accepted++;
    } catch (err) {
      if (err instanceof IntegrityError) rejected++;
      else crashed++;
    }
  }
  await keyring.close();
  notes.push(`${N} mutated envelopes: ${rejected} rejected as integrity errors, ${accepted} accepted, ${crashed} other errors`);
  // Malformed command lines: exit 2, one line (plus an optional hint), no stack trace.
  const badArgs: string[][] = [
    ['rotate', '--if-older-than', 'ninety days'],
    ['rotate', '--max-backup-age', '-5h'],
    ['rotate', '--workers', 'many'],
    ['rotate', '--batch-size', '0'],
    ['rotate', '--max-rate', 'fast'],
    ['status', '--database-url', 'mysql://x@y/z'],
    ['status', '--database-url', '::not a url::'],
    ['byok', 'test', '--region', 'us-east-1', '--key-arn', 'arn:aws:kms:us-east-1:111122223333:alias/x', '--role-arn', 'arn:aws:iam::111122223333:role/AlationBYOKRole'],
    ['byok', 'policy', '--key-arn', 'arn:aws:kms:us-east-1:1111:key/x', '--role-arn', 'arn:aws:iam::111122223333:role/AlationBYOKRole'],
    ['byok', 'policy', '--key-arn', 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab', '--role-arn', 'arn:aws:iam::111122223333:role/alationbyokrole'],
    ['columns', 'add', 'no_dots'],
    ['jobs', 'show', '-1'],
    ['keys', 'destroy', 'seven'],
    ['backup', 'verify', '/nonexistent/file.dump'],
    ['rotate', '--frobnicate'],
    ['no-such-command'],
  ];
  let usageOk = 0;
  for (const args of badArgs) {
    const r = await runCli(args, inst.env);
    const lines = r.stderr.trim().split('\n').filter((l) => /^error:/.test(l));
    const good = r.code === 2 && lines.length === 1 && !/\n\s+at /.test(r.stderr);
    if (good) usageOk++;
    else notes.push(`\`${args.join(' ')}\`: exit ${r.code}, ${lines.length} lines: ${lines[0]}`);
  }
  notes.push(`${usageOk}/${badArgs.length} malformed command lines gave exit 2 with a short message`);
  // A tampered keyring row.
  await inst.pool.query(`UPDATE alation_keys.keyring SET wrapped_key = set_byte(wrapped_key, 20, get_byte(wrapped_key, 20) # 1) WHERE version = 1`);
  const tampered = await runCli(['rotate', '--dry-run', '--skip-backup-check'], inst.env);
  const tamperedOk = tampered.code === 5 && /v1\b|version 1/.test(tampered.stderr);
  notes.push(`tampered keyring row: exit ${tampered.code}: ${tampered.stderr.trim().split('\n')[0]}`);
  await inst.pool.end();
  const ok = accepted === 0 && crashed === 0 && usageOk === badArgs.length && tamperedOk;
  return { scenario: 'bad input', runs: N + badArgs.length + 1, faults: N + badArgs.length + 1, valuesChecked: N, valuesLost: accepted, result: ok ? 'pass' : 'FAIL', notes, seconds: (Date.now() - t0) / 1000 };
}

/** Collects the secrets to look for: every DEK, master key, and the passwords and AWS secret. */
async function collectSecrets(installs: Installation[], awsEnv: Record<string, string>): Promise<Array<{ what: string; bytes: Buffer }>> {
  const secrets: Array<{ what: string; bytes: Buffer }> = [
    { what: 'database password', bytes: Buffer.from(APP_PASSWORD) },
    { what: 'AWS secret access key', bytes: Buffer.from(aws?.baseCredentials.secretAccessKey ?? 'none-none-none') },
  ];
  Object.assign(process.env, awsEnv);
  for (const inst of installs) {
    if (!fs.existsSync(inst.masterKeyFile)) continue;
    const file = readMasterKeyFile(inst.masterKeyFile);
    for (const mk of file.keys) secrets.push({ what: `${inst.name} master key ${mk.id}`, bytes: mk.material });
    const pool = new Pool({ connectionString: inst.url, max: 1 });
    const provider = createKeyProvider(await readSettings(pool), { masterKeyFile: inst.masterKeyFile });
    for (const row of await readKeyring(pool)) {
      if (!row.wrapped_key) continue;
      try {
        secrets.push({ what: `${inst.name} DEK v${row.version}`, bytes: await provider.unwrapDataKey(row.version, row.wrapped_key, row.kek_id) });
      } catch {
        /* the tampered row of the bad-input scenario */
      }
    }
    await pool.end();
  }
  return secrets;
}

function scanForSecrets(secrets: Array<{ what: string; bytes: Buffer }>, haystacks: Array<{ where: string; text: string }>) {
  const found: string[] = [];
  for (const s of secrets) {
    const forms = [s.bytes.toString('hex'), s.bytes.toString('base64').replace(/=+$/, ''), s.bytes.toString('base64url').replace(/=+$/, '')];
    if (s.what.includes('password') || s.what.includes('AWS')) forms.push(s.bytes.toString('utf8'));
    for (const h of haystacks) {
      for (const f of forms) {
        if (f.length >= 12 && h.text.includes(f)) found.push(`${s.what} in ${h.where}`);
      }
    }
  }
  return found;
}

// ---------------------------------------------------------------- main

async function main() {
  const opts = parseOptions(process.argv.slice(2));
  const started = Date.now();
  fs.mkdirSync(RESULTS, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'alation-keys-chaos-'));
  fs.chmodSync(logDir, 0o777); // the embedded server runs as the postgres user and logs here
  say(`chaos suite, seed ${opts.seed} (replay with --seed ${opts.seed}), work dir ${logDir}`);
  const serverLog = path.join(logDir, 'postgres.log');
  server = await startEmbeddedPostgres({
    dataDir: path.join(logDir, 'pgdata'),
    keep: true,
    flags: ['-c', 'log_statement=all', '-c', 'log_parameter_max_length=-1'],
    onLog: (line) => fs.appendFileSync(serverLog, line.endsWith('\n') ? line : line + '\n'),
  });
  aws = await startFakeAws();
  const stopArgv = startArgvSampler();
  const stopActivity = startActivitySampler(() => server.adminUrl);
  const random = seededRandom(opts.seed);
  const results: ScenarioResult[] = [];
  const installs: Installation[] = [];
  const want = (name: string) => !opts.only || opts.only.includes(name);
  const scenarios: Array<[string, () => Promise<ScenarioResult>]> = [
    ['kill', () => scenarioKillAnywhere(opts, random)],
    ['restart', () => scenarioDatabaseRestart(random)],
    ['app', () => scenarioApplicationWrites(opts.seed)],
    ['kms', () => scenarioKms()],
    ['input', () => scenarioBadInput(random)],
  ];
  for (const [name, run] of scenarios) {
    if (!want(name)) continue;
    say(`scenario ${name}`);
    try {
      results.push(await run());
    } catch (err) {
      results.push({ scenario: name, runs: 0, faults: 0, valuesChecked: 0, valuesLost: 0, result: 'FAIL', notes: [`crashed: ${(err as Error).stack}`], seconds: 0 });
    }
    const last = results[results.length - 1];
    say(`  ${last.result}: ${last.notes.join(' | ')}`);
  }
  // Secrets: everything printed, logged, sampled from pg_stat_activity and /proc/*/cmdline,
  // and every job record.
  stopArgv();
  await stopActivity();
  const t0 = Date.now();
  const names = ['chaos_kill', 'chaos_restart', 'chaos_app', 'chaos_kms', 'chaos_input'];
  for (const n of names) {
    const dir = path.join(logDir, n);
    if (!fs.existsSync(dir)) continue;
    const u = new URL(server.urlFor(n));
    u.username = 'chaos_app';
    u.password = APP_PASSWORD;
    installs.push({ name: n, url: u.toString(), env: {}, masterKeyFile: path.join(dir, 'master.key'), pool: undefined as any, shape: undefined as any, backupDir: '' });
  }
  const secrets = await collectSecrets(installs, {
    AWS_ENDPOINT_URL: aws.endpoint,
    AWS_ACCESS_KEY_ID: aws.baseCredentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: aws.baseCredentials.secretAccessKey,
    AWS_REGION: aws.region,
  });
  const haystacks: Array<{ where: string; text: string }> = [
    { where: 'CLI stdout/stderr', text: captured.outputs.join('\n') },
    { where: 'process argv', text: [...captured.argvs].filter((a) => !a.includes('app-writer')).join('\n') },
    { where: 'PostgreSQL server log', text: fs.existsSync(serverLog) ? fs.readFileSync(serverLog, 'utf8') : '' },
    { where: 'CLI log file', text: fs.readFileSync(path.join(logDir, 'cli.log'), 'utf8') },
  ];
  for (const inst of installs) {
    const pool = new Pool({ connectionString: inst.url, max: 1 });
    const jobs = await pool.query(`SELECT row_to_json(j)::text AS j FROM alation_keys.jobs j`);
    haystacks.push({ where: `${inst.name} job records`, text: jobs.rows.map((r) => r.j).join('\n') });
    await pool.end();
  }
  const leaks = scanForSecrets(secrets, haystacks);
  const bytesScanned = haystacks.reduce((a, h) => a + h.text.length, 0);
  results.push({
    scenario: 'secrets',
    runs: 1,
    faults: 0,
    valuesChecked: secrets.length,
    valuesLost: leaks.length,
    result: leaks.length === 0 && secrets.length > 2 ? 'pass' : 'FAIL',
    notes: [`${secrets.length} secrets looked for (hex, base64, raw) in ${(bytesScanned / 1e6).toFixed(1)} MB from ${haystacks.length} places`, ...leaks],
    seconds: (Date.now() - t0) / 1000,
  });
  await aws.stop();
  await server.stop().catch(() => undefined);

  const total = (Date.now() - started) / 1000;
  const rows = results.map((r) => [r.scenario, r.runs, r.faults, r.valuesChecked, r.valuesLost, r.result, r.seconds.toFixed(0) + 's']);
  const head = ['scenario', 'runs', 'faults injected', 'values checked', 'values lost', 'result', 'time'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells: Array<string | number>) => cells.map((c, i) => String(c).padEnd(widths[i])).join('  ');
  process.stdout.write(`\n${line(head)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}\n${rows.map(line).join('\n')}\n`);
  process.stdout.write(`\nseed ${opts.seed}, ${total.toFixed(0)} s in all\n`);
  for (const r of results) for (const n of r.notes) process.stdout.write(`  ${r.scenario}: ${n}\n`);
  const file = path.join(RESULTS, `chaos-${stamp}.json`);
  fs.writeFileSync(file, JSON.stringify({ seed: opts.seed, values: opts.values, seconds: total, machine: { cpus: os.cpus().length, node: process.version }, results }, null, 2));
  process.stdout.write(`results written to ${path.relative(ROOT, file)}\n`);
  const failed = results.filter((r) => r.result !== 'pass').length;
  process.stdout.write(`${results.length - failed} passed, ${failed} failed\n`);
  if (failed === 0) fs.rmSync(logDir, { recursive: true, force: true });
  else process.stdout.write(`logs kept in ${logDir}\n`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((err) => {
  process.stderr.write(`chaos suite crashed: ${err.stack}\n`);
  process.exit(1);
});
