/**
 * `npm run package`: the release tarball, unpacked into an empty directory, holds a single
 * executable that runs with no `node` on PATH and no node_modules above it, and does what the
 * source build does, with the same exit codes: the same scenario runs through both, each on its
 * own fresh database. The package is built once, here (it takes a while on a loaded machine).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { openKeyring } from '../src/core/keyring-client';
import { createRosemetaTables, generateRosemeta, ROSEMETA_COLUMNS, verifyRosemeta } from '../scripts/lib/rosemeta';
import { awsEnv, byokArgs, createByokRole } from './byok-support';
import { CliOptions, CliResult, runCli } from './support/cli';
import { createTestDatabase, TestDatabase } from './support/db';
import { startFakeAws, type FakeAws } from './support/fake-aws';
import { tempDir } from './support/fixtures';

const run = promisify(execFile);
const ROOT = path.resolve(__dirname, '..');
const VERSION: string = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
const NAME = `alation-keys-${VERSION}-linux-x64`;
const VALUES = 3000;

let work: string;
let release: string;
let unpacked: string;
let emptyPath: string;
let server: FakeAws;
const databases: TestDatabase[] = [];

// The package does not depend on the server's major: `npm run test:matrix` tests it on 15 only.
const MAJOR = process.env.ALATION_KEYS_TEST_PG_MAJOR;
const ELSEWHERE = !!MAJOR && MAJOR !== '15';

beforeAll(async () => {
  if (ELSEWHERE) return;
  work = tempDir('package');
  release = path.join(work, 'release');
  await run(process.execPath, [path.join(ROOT, 'dist/scripts/package.js'), '--out', release], { timeout: 480_000 });
  unpacked = path.join(work, 'empty');
  fs.mkdirSync(unpacked);
  await run('tar', ['-xzf', path.join(release, `${NAME}.tar.gz`), '-C', unpacked]);
  emptyPath = path.join(work, 'no-tools');
  fs.mkdirSync(emptyPath);
  server = await startFakeAws();
}, 600_000);

afterAll(async () => {
  await server?.stop();
  for (const db of databases) await db.drop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

type Build = 'source' | 'packaged';

function cli(build: Build, args: string[], env: Record<string, string | undefined>): Promise<CliResult> {
  const opts: CliOptions = { env, timeoutMs: 120_000 };
  if (build === 'source') return runCli(args, opts);
  // Nothing from this process's environment: PATH is an empty directory, HOME the temp dir.
  return runCli(args, { ...opts, executable: path.join(unpacked, NAME, 'alation-keys'), cleanEnv: true, cwd: unpacked, env: { PATH: emptyPath, HOME: work, ...env } });
}

function json(r: CliResult): any {
  try {
    return JSON.parse(r.stdout);
  } catch {
    throw new Error(`stdout is not JSON (exit ${r.code}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
}

/** The scenario, run through one build on a database of its own: each step's exit code and what it showed. */
async function scenario(build: Build) {
  const db = await createTestDatabase(`package_${build}`);
  databases.push(db);
  await createRosemetaTables(db.pool);
  const masterKeyFile = path.join(work, `${build}-master.key`);
  const env = { ALATION_KEYS_DATABASE_URL: db.url, ALATION_KEYS_MASTER_KEY_FILE: masterKeyFile, ...awsEnv(server) };
  const codes: Record<string, number | null> = {};
  const step = async (name: string, args: string[]) => {
    const r = await cli(build, args, env);
    codes[name] = r.code;
    return r;
  };

  const version = await step('--version', ['--version']);
  await step('init', ['init', '--json']);
  for (const c of ROSEMETA_COLUMNS) await step(`columns add ${c}`, ['columns', 'add', c]);
  await step('columns add of a missing table', ['columns', 'add', 'public.no_such_table.secret']);
  const keyring = await openKeyring({ pool: db.pool, masterKeyFile, refreshSeconds: 1 });
  try {
    const shape = await generateRosemeta(db.pool, keyring, { totalValues: VALUES });
    await step('rotate without a recent backup', ['rotate', '--settle-time', '0']);
    const rotate = await step('rotate', ['rotate', '--skip-backup-check', '--settle-time', '0', '--json']);
    const status = await step('status', ['status', '--json', '--no-provider-check']);
    await createByokRole(server, db.pool);
    const key = server.createKey();
    const byok = await step('byok test', ['byok', 'test', ...byokArgs(server, key.arn)]);
    await step('byok test of an unknown key', ['byok', 'test', ...byokArgs(server, key.arn.replace(/[0-9a-f]{4}$/, '0000'))]);
    const verified = await verifyRosemeta(db.pool, keyring, shape);
    return { codes, version: version.stdout, rotate: json(rotate), status: json(status), byok, verified };
  } finally {
    await keyring.close();
  }
}

const named = (name: string) => (ELSEWHERE ? `${name} [skipped: the package is tested on PostgreSQL 15 only]` : name);

(ELSEWHERE ? describe.skip : describe)('the release tarball', () => {
  test(named('SHA256SUMS matches every file of the unpacked release, and the tarball matches its .sha256'), async () => {
    const dir = path.join(unpacked, NAME);
    const sums = fs.readFileSync(path.join(dir, 'SHA256SUMS'), 'utf8').trim().split('\n').map((l) => l.split(/\s+/)[1]);
    expect(sums.sort()).toEqual(
      [
      'CHANGELOG.md',
      'README.md',
      'alation-keys',
      'completion/_alation-keys',
      'completion/alation-keys.bash',
      ...fs.readdirSync(path.join(ROOT, 'docs')).map((page) => `docs/${page}`),
      'man/alation-keys.1',
      'systemd/alation-keys-backup.service',
      'systemd/alation-keys-backup.timer',
      'systemd/alation-keys-rotate.service',
      'systemd/alation-keys-rotate.timer',
      ].sort(),
    );
    await expect(run('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: dir })).resolves.toBeDefined();
    await expect(run('sha256sum', ['--check', '--strict', `${NAME}.tar.gz.sha256`], { cwd: release })).resolves.toBeDefined();
    // A changed file is caught.
    fs.appendFileSync(path.join(dir, 'README.md'), '\n');
    await expect(run('sha256sum', ['--check', '--strict', '--quiet', 'SHA256SUMS'], { cwd: dir })).rejects.toMatchObject({ code: 1 });
    fs.writeFileSync(path.join(dir, 'README.md'), fs.readFileSync(path.join(ROOT, 'README.md')));
    // The units and the completion script are the repository's and the program's own.
    expect(fs.readFileSync(path.join(dir, 'systemd/alation-keys-rotate.service'), 'utf8')).toBe(
      fs.readFileSync(path.join(ROOT, 'contrib/systemd/alation-keys-rotate.service'), 'utf8'),
    );
    expect(fs.readFileSync(path.join(dir, 'completion/alation-keys.bash'), 'utf8')).toBe((await runCli(['completion', 'bash'])).stdout);
  });

  test(named('the executable runs with no node on PATH and no node_modules above it, with the exit codes of the source build'), async () => {
    for (let d = unpacked; ; d = path.dirname(d)) {
      expect(fs.existsSync(path.join(d, 'node_modules'))).toBe(false);
      if (d === path.dirname(d)) break;
    }
    expect(fs.readdirSync(emptyPath)).toEqual([]);

    // One after the other: both scenarios set up the one AlationBYOKRole of the test KMS with
    // their own installation's ExternalId, so side by side one could overwrite the other's.
    const source = await scenario('source');
    const packaged = await scenario('packaged');
    expect(packaged.codes).toEqual(source.codes);
    expect(packaged.codes).toEqual({
      '--version': 0,
      init: 0,
      [`columns add ${ROSEMETA_COLUMNS[0]}`]: 0,
      [`columns add ${ROSEMETA_COLUMNS[1]}`]: 0,
      [`columns add ${ROSEMETA_COLUMNS[2]}`]: 0,
      'columns add of a missing table': source.codes['columns add of a missing table'],
      'rotate without a recent backup': 3,
      rotate: 0,
      status: 0,
      'byok test': 0,
      'byok test of an unknown key': 4,
    });
    expect(source.codes['columns add of a missing table']).not.toBe(0);
    expect(packaged.version).toBe(`${VERSION}\n`);

    for (const r of [source, packaged]) {
      // Every value was re-encrypted by the reader thread under data key v2, and still decrypts.
      expect(r.verified).toMatchObject({ mismatched: [], missing: [], unexpected: [] });
      const versions = r.status.columns.map((c: any) => c.versions);
      expect(versions.every((v: Record<string, number>) => Object.keys(v).join() === '2')).toBe(true);
      expect(versions.reduce((n: number, v: Record<string, number>) => n + v['2'], 0)).toBe(r.verified.checked);
      expect(r.byok.stdout).toContain('✓ AssumeRole AlationBYOKRole with the ExternalId');
    }
  }, 300_000);
});
