/** A generated rosemeta in a fresh database of the bench's server, and the spawned CLI (`rotate`, `verify`). */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client, Pool } from 'pg';
import { addColumn } from '../src/core/columns';
import { initialise } from '../src/core/init';
import { openKeyring } from '../src/core/keyring-client';
import { createRosemetaTables, generateRosemeta, ROSEMETA_COLUMNS, RosemetaShape } from '../scripts/lib/rosemeta';

const BIN = path.resolve(__dirname, '../../bin/alation-keys');
export const MB = 1024 * 1024;

export const log = (s: string) => process.stdout.write(s + '\n');
export const fmt = (n: number, d = 0) => n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

export async function dbSize(pool: Pool): Promise<number> {
  return Number((await pool.query('SELECT pg_database_size(current_database())::text AS n')).rows[0].n);
}

export interface Installation {
  url: string;
  pool: Pool;
  masterKeyFile: string;
  shape: RosemetaShape;
  values: number;
  bytes: number;
}

/**
 * Rewrites each table with its rows in random physical order (and their TOAST chunks with
 * them): a table that lived for years, where key order no longer follows the pages.
 */
async function shuffleTables(pool: Pool): Promise<void> {
  for (const t of ['public.credentials', 'public.documents', 'public.blobs']) {
    const c = await pool.connect();
    try {
      await c.query('BEGIN');
      await c.query(`CREATE TEMP TABLE shuffled ON COMMIT DROP AS SELECT * FROM ${t} ORDER BY random()`);
      await c.query(`TRUNCATE ${t}`);
      await c.query(`INSERT INTO ${t} SELECT * FROM shuffled`);
      await c.query('COMMIT');
    } finally {
      c.release();
    }
  }
}

export async function setUp(
  server: { createDatabase(name: string): Promise<string> },
  size: number,
  dir: string,
  opts: { shuffle?: boolean } = {},
): Promise<Installation> {
  const url = await server.createDatabase(`bench_${size}`);
  const pool = new Pool({ connectionString: url, max: 6 });
  pool.on('error', () => undefined);
  const masterKeyFile = path.join(dir, `master-${size}.key`);
  fs.rmSync(masterKeyFile, { force: true });
  await initialise(pool, { masterKeyFile });
  await createRosemetaTables(pool);
  for (const c of ROSEMETA_COLUMNS) await addColumn(pool, c);
  const keyring = await openKeyring({ pool, masterKeyFile });
  const t0 = Date.now();
  let done = 0;
  let last = 0;
  const shape = await generateRosemeta(pool, keyring, {
    totalValues: size,
    seed: 'bench',
    onRows: (n) => {
      done += n;
      if (Date.now() - last > 10_000) {
        last = Date.now();
        log(`  generating: ${fmt(done)} values`);
      }
    },
  });
  await keyring.close();
  if (opts.shuffle) await shuffleTables(pool);
  await pool.query('VACUUM ANALYZE public.credentials, public.documents, public.blobs');
  const r = await pool.query(`SELECT
      (SELECT count(secret) + 0 FROM public.credentials) + (SELECT count(body) FROM public.documents) + (SELECT count(payload) FROM public.blobs) AS n,
      (SELECT coalesce(sum(octet_length(secret)),0) FROM public.credentials) + (SELECT sum(octet_length(body)) FROM public.documents) + (SELECT sum(octet_length(payload)) FROM public.blobs) AS b`);
  log(`  generated ${fmt(size)} values${opts.shuffle ? ' (rows in random physical order)' : ''} in ${((Date.now() - t0) / 1000).toFixed(0)} s; database ${fmt((await dbSize(pool)) / MB)} MB`);
  return { url, pool, masterKeyFile, shape, values: Number(r.rows[0].n), bytes: Number(r.rows[0].b) };
}

/** A spawned CLI command's time, peak RSS (VmHWM) and --json document. */
export interface MeasuredRun {
  seconds: number;
  peakRssKb: number;
  json: any;
  stderr: string;
}

/** Spawns `alation-keys ARGS --json` against the installation and samples its peak RSS; an exit code not in `okCodes` throws. */
export async function runMeasured(inst: Pick<Installation, 'url' | 'masterKeyFile'>, args: string[], okCodes = [0]): Promise<MeasuredRun> {
  const t0 = Date.now();
  const child = spawn(process.execPath, [BIN, ...args, '--json'], {
    env: { ...process.env, ALATION_KEYS_DATABASE_URL: inst.url, ALATION_KEYS_MASTER_KEY_FILE: inst.masterKeyFile, NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => {
    stderr += d;
    if (process.env.BENCH_VERBOSE) process.stderr.write(d);
  });
  let peakRssKb = 0;
  const timer = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peakRssKb = Math.max(peakRssKb, Number(m[1]));
    } catch {
      /* exited */
    }
  }, 200);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  clearInterval(timer);
  if (!okCodes.includes(code ?? -1)) throw new Error(`${args[0]} exited ${code}:\n${stderr}`);
  return { seconds: (Date.now() - t0) / 1000, peakRssKb, json: JSON.parse(stdout), stderr };
}

/** Spawns the CLI rotate (with `extra` options) and samples its peak RSS. */
export async function runRotate(
  inst: Installation,
  extra: string[] = [],
  settle = '0',
): Promise<{ seconds: number; peakRssKb: number; summary: any; stderr: string }> {
  const r = await runMeasured(inst, ['rotate', '--skip-backup-check', '--settle-time', settle, ...extra]);
  return { seconds: r.seconds, peakRssKb: r.peakRssKb, summary: r.json, stderr: r.stderr };
}

/** Drops the installation's database (its pool must be ended). */
export async function dropDatabase(inst: Installation): Promise<void> {
  const u = new URL(inst.url);
  const name = u.pathname.slice(1);
  u.pathname = '/postgres';
  const c = new Client({ connectionString: u.toString() });
  await c.connect();
  try {
    await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } finally {
    await c.end();
  }
}
