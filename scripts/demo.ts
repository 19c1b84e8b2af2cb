/**
 * `npm run demo`: the main job on a machine with nothing set up. Starts an embedded
 * PostgreSQL, initialises alation-keys, generates a synthetic rosemeta through the library,
 * shows `status`, takes a backup, rotates every value to a new data key, and shows `status`
 * again. Every step runs the real binary. Options: --rows N (default 120000), --keep.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool } from 'pg';
import { openKeyring } from '../src/core/keyring-client';
import { createRosemetaTables, generateRosemeta, ROSEMETA_COLUMNS, verifyRosemeta } from './lib/rosemeta';
import { startEmbeddedPostgres } from './lib/embedded-postgres';

const BIN = path.resolve(__dirname, '../../bin/alation-keys');

function parseArgs(argv: string[]) {
  let rows = 120_000;
  let keep = false;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--rows') {
      rows = Number(argv[++i]);
      if (!Number.isInteger(rows) || rows < 10) {
        process.stderr.write('error: --rows takes a whole number of at least 10\n');
        process.exit(2);
      }
    } else if (argv[i] === '--keep') keep = true;
    else {
      process.stderr.write(`error: unknown option ${argv[i]} (options: --rows N, --keep)\n`);
      process.exit(2);
    }
  }
  return { rows, keep };
}

function step(title: string) {
  process.stdout.write(`\n\u001b[1m== ${title}\u001b[0m\n`);
}

function cli(env: NodeJS.ProcessEnv, ...args: string[]): void {
  process.stdout.write(`$ alation-keys ${args.join(' ')}\n`);
  const r = spawnSync(process.execPath, [BIN, ...args], { env: { ...process.env, ...env }, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`alation-keys ${args.join(' ')} exited ${r.status}`);
}

async function main() {
  const { rows, keep } = parseArgs(process.argv.slice(2));
  const root = path.resolve(__dirname, '../../.demo');
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(root, { recursive: true });
  step('starting an embedded PostgreSQL 15');
  const server = await startEmbeddedPostgres({ dataDir: path.join(root, 'pgdata') });
  const started = Date.now();
  let pool: Pool | undefined;
  try {
    const url = await server.createDatabase('rosemeta');
    const masterKeyFile = path.join(root, 'master.key');
    const env = { ALATION_KEYS_DATABASE_URL: url, ALATION_KEYS_MASTER_KEY_FILE: masterKeyFile, PGPASSWORD: 'postgres' };
    process.stdout.write(`database ${url.replace(/:[^:@/]*@/, ':***@')}, master key file ${masterKeyFile}\n`);

    step('init');
    cli(env, 'init');

    step('registering encrypted columns');
    pool = new Pool({ connectionString: url, max: 4 });
    pool.on('error', () => undefined);
    await createRosemetaTables(pool);
    for (const c of ROSEMETA_COLUMNS) cli(env, 'columns', 'add', c);

    step(`generating a synthetic rosemeta with ${rows.toLocaleString('en-US')} encrypted values through the library`);
    const keyring = await openKeyring({ pool, masterKeyFile });
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
    process.stdout.write(
      `  credentials ${shape.credentials}, documents ${shape.documents}, blobs ${shape.blobs} rows in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`,
    );

    step('status before rotation');
    cli(env, 'status');

    const help = spawnSync(process.execPath, [BIN, '--help'], { encoding: 'utf8' }).stdout;
    const has = (name: string) => new RegExp(`^  ${name}\\b`, 'm').test(help);
    const backupDir = path.join(root, 'backups');
    if (has('backup')) {
      step('backup before the rotation');
      cli(env, 'backup', '--out', backupDir);
    }
    if (has('rotate')) {
      step('rotate: new data key, every value re-encrypted online');
      // No application runs beside the demo, so the wait for application instances to re-read
      // the keyring (--settle-time, 35 s by default) can be short.
      cli(env, 'rotate', '--settle-time', '5s', ...(has('backup') ? [] : ['--skip-backup-check']));
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
      `  ${report.checked.toLocaleString('en-US')} values decrypted and matched, ${report.nulls} NULLs kept, ${bad} problems; versions: ${JSON.stringify(report.versions)}\n`,
    );
    await keyring.close();
    if (bad > 0) throw new Error(`${bad} values did not verify`);
    process.stdout.write(`\ndemo finished in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  } finally {
    await pool?.end().catch(() => undefined);
    await server.stop();
    if (!keep) fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`demo failed: ${err.message}\n`);
  process.exit(1);
});
