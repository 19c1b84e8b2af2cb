/**
 * `npm run demo`: the main job on a machine with nothing set up. Starts an embedded
 * PostgreSQL, initialises alation-keys, generates a synthetic rosemeta through the library,
 * shows `status`, takes a backup, shows the rotation's plan (`rotate --dry-run`), rotates every
 * value to a new data key, and shows `status` again. Every step runs the real binary.
 * Options: --rows N (default 120000), --dir DIR (default .demo), --keep (leave DIR in place and
 * say what to try next), --serve (start a kept demo database again until Ctrl-C).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool } from 'pg';
import { openKeyring } from '../src/core/keyring-client';
import { countRosemetaValues, createRosemetaTables, generateRosemeta, ROSEMETA_COLUMNS, verifyRosemeta } from './lib/rosemeta';
import { EmbeddedServer, startEmbeddedPostgres } from './lib/embedded-postgres';

const BIN = path.resolve(__dirname, '../../bin/alation-keys');
const REPO = path.resolve(__dirname, '../..');
/** No application runs beside the demo: see the line printed before the rotation. */
const DEMO_SETTLE_TIME = '5s';

interface DemoArgs {
  rows: number;
  keep: boolean;
  serve: boolean;
  dir: string;
}

function usageError(message: string): never {
  process.stderr.write(`error: ${message} (options: --rows N, --dir DIR, --keep, --serve)\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): DemoArgs {
  const args: DemoArgs = { rows: 120_000, keep: false, serve: false, dir: path.join(REPO, '.demo') };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--rows') {
      args.rows = Number(argv[++i]);
      if (!Number.isInteger(args.rows) || args.rows < 10) usageError('--rows takes a whole number of at least 10');
    } else if (argv[i] === '--dir') {
      if (!argv[i + 1]) usageError('--dir takes a directory');
      args.dir = path.resolve(argv[++i]);
    } else if (argv[i] === '--keep') args.keep = true;
    else if (argv[i] === '--serve') args.serve = true;
    else usageError(`unknown option ${argv[i]}`);
  }
  return args;
}

/** Bold headings on a terminal only: piped output holds no escape codes. */
const bold = (text: string) => (process.stdout.isTTY && !process.env.NO_COLOR ? `\u001b[1m${text}\u001b[0m` : text);

function step(title: string) {
  process.stdout.write(`\n${bold(`== ${title}`)}\n`);
}

function cli(env: NodeJS.ProcessEnv, ...args: string[]): void {
  process.stdout.write(`$ alation-keys ${args.join(' ')}\n`);
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`alation-keys ${args.join(' ')} exited ${r.status}`);
}

/** The settings that reach the demo database: the password in PGPASSWORD, not in the URL. */
function demoSettings(server: EmbeddedServer, dir: string) {
  return {
    ALATION_KEYS_DATABASE_URL: `postgresql://postgres@127.0.0.1:${server.port}/rosemeta`,
    PGPASSWORD: 'postgres',
    ALATION_KEYS_MASTER_KEY_FILE: path.join(dir, 'master.key'),
  };
}

const shellQuote = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** What to run against the demo database (from the repository's directory). */
function tryNext(dir: string): string[] {
  const backups = path.join(dir, 'backups');
  return [
    'bin/alation-keys status',
    'bin/alation-keys keys list',
    'bin/alation-keys jobs list',
    'bin/alation-keys backup list',
    `bin/alation-keys backup verify "$(ls -t ${shellQuote(backups)}/*.dump | head -1)"`,
    'bin/alation-keys rotate --dry-run',
    `bin/alation-keys backup --out ${shellQuote(backups)} && bin/alation-keys rotate --settle-time ${DEMO_SETTLE_TIME}`,
  ];
}

async function demo(args: DemoArgs): Promise<void> {
  const { rows, keep, dir } = args;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  step('starting an embedded PostgreSQL 15');
  const server = await startEmbeddedPostgres({ dataDir: path.join(dir, 'pgdata'), keep });
  const started = Date.now();
  let pool: Pool | undefined;
  try {
    await server.createDatabase('rosemeta');
    const env = demoSettings(server, dir);
    process.stdout.write(`database ${env.ALATION_KEYS_DATABASE_URL}, master key file ${env.ALATION_KEYS_MASTER_KEY_FILE}\n`);

    step('init');
    cli(env, 'init');

    step('registering encrypted columns');
    pool = new Pool({ connectionString: server.urlFor('rosemeta'), max: 4 });
    pool.on('error', () => undefined);
    await createRosemetaTables(pool);
    for (const c of ROSEMETA_COLUMNS) cli(env, 'columns', 'add', c);

    step(`generating a synthetic rosemeta: ${rows.toLocaleString('en-US')} rows, written through the library`);
    const keyring = await openKeyring({ pool, masterKeyFile: env.ALATION_KEYS_MASTER_KEY_FILE });
    let done = 0;
    let lastReport = 0;
    const t0 = Date.now();
    const shape = await generateRosemeta(pool, keyring, {
      totalValues: rows,
      onRows: (n) => {
        done += n;
        if (Date.now() - lastReport > 2000) {
          lastReport = Date.now();
          process.stdout.write(`  ${done.toLocaleString('en-US')} rows written\n`);
        }
      },
    });
    const generated = await countRosemetaValues(pool);
    process.stdout.write(
      `  credentials ${shape.credentials}, documents ${shape.documents}, blobs ${shape.blobs} rows in ${((Date.now() - t0) / 1000).toFixed(1)} s\n` +
        `  ${generated.values.toLocaleString('en-US')} values encrypted; ${generated.nulls.toLocaleString('en-US')} NULLs (about 1 in 37 documents and blobs), which stay NULL and are not encrypted\n`,
    );

    step('status before rotation');
    cli(env, 'status');

    const help = spawnSync(process.execPath, [BIN, '--help'], { encoding: 'utf8' }).stdout;
    const has = (name: string) => new RegExp(`^  ${name}\\b`, 'm').test(help);
    const backupDir = path.join(dir, 'backups');
    if (has('backup')) {
      step('backup before the rotation');
      cli(env, 'backup', '--out', backupDir);
    }
    if (has('rotate')) {
      step('rotate --dry-run: the plan, nothing changed');
      cli(env, 'rotate', '--dry-run');
      step('rotate: new data key, every value re-encrypted online');
      process.stdout.write(
        `Every rotation ends with a settle wait before its last count: application instances re-read the keyring\n` +
          `every 30 s, so by default (--settle-time 35s) none still encrypts under an old key when the old keys are\n` +
          `retired. No application runs beside this demo, so it passes --settle-time ${DEMO_SETTLE_TIME}.\n`,
      );
      cli(env, 'rotate', '--settle-time', DEMO_SETTLE_TIME, ...(has('backup') ? [] : ['--skip-backup-check']));
      if (has('backup')) {
        step('backup after the rotation (a restore no longer needs the old keys)');
        cli(env, 'backup', '--out', backupDir);
      }
    }

    step('status');
    cli(env, 'status');

    step('checking every value decrypts to what was written');
    await keyring.refresh();
    const report = await verifyRosemeta(pool, keyring, shape);
    const bad = report.mismatched.length + report.missing.length + report.unexpected.length;
    process.stdout.write(
      `  ${report.checked.toLocaleString('en-US')} values decrypted and matched, ${report.nulls.toLocaleString('en-US')} NULLs kept, ${bad} problems; versions: ${JSON.stringify(report.versions)}\n`,
    );
    await keyring.close();
    if (bad > 0) throw new Error(`${bad} values did not verify`);
    process.stdout.write(`\ndemo finished in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  } finally {
    await pool?.end().catch(() => undefined);
    await server.stop();
    if (!keep) fs.rmSync(dir, { recursive: true, force: true });
  }
  const dirArg = dir === path.join(REPO, '.demo') ? '' : ` --dir ${shellQuote(dir)}`;
  if (keep) {
    step('what to try next');
    process.stdout.write(
      `The demo database is kept in ${dir} (stopped). Start it again, until Ctrl-C:\n` +
        `  npm run demo -- --serve${dirArg}\n` +
        `It prints the settings to export; then, from the repository's directory, try:\n` +
        tryNext(dir).map((l) => `  ${l}\n`).join(''),
    );
  } else {
    process.stdout.write(`Run \`npm run demo -- --keep\` to keep the demo database and try commands against it afterwards.\n`);
  }
}

/** `--serve`: starts a kept demo database again, prints its settings and waits for Ctrl-C. */
async function serve(args: DemoArgs): Promise<void> {
  if (!fs.existsSync(path.join(args.dir, 'pgdata')) || !fs.existsSync(path.join(args.dir, 'master.key'))) {
    process.stderr.write(`error: no kept demo database in ${args.dir}\n  hint: run \`npm run demo -- --keep\` first\n`);
    process.exit(2);
  }
  const server = await startEmbeddedPostgres({ dataDir: path.join(args.dir, 'pgdata'), keep: true });
  const settings = demoSettings(server, args.dir);
  process.stdout.write(
    `the demo database is running; Ctrl-C stops it. In another shell:\n` +
      `  export ${Object.entries(settings).map(([k, v]) => `${k}=${shellQuote(v)}`).join(' ')}\n` +
      tryNext(args.dir).map((l) => `  ${l}\n`).join(''),
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.stop();
  process.stdout.write('the demo database is stopped\n');
}

const args = parseArgs(process.argv.slice(2));
(args.serve ? serve(args) : demo(args)).catch((err) => {
  process.stderr.write(`demo failed: ${err.message}\n`);
  process.exit(1);
});
