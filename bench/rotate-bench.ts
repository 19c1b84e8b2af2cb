/**
 * `npm run bench`: how fast `rotate` rewrites a database, against what is possible.
 *
 * For each size (default 200,000 and 1,000,000 encrypted values of the synthetic rosemeta:
 * text and bytea values of 100 B–4 KB, 0.1 % of the blobs 100 KB and TOASTed), on a fresh
 * database:
 *   1. rotate    the real CLI (`rotate --skip-backup-check --settle-time 0`), spawned; peak RSS
 *                from /proc/PID/status VmHWM, database size sampled every 0.5 s (peak growth),
 *                WAL written (pg_current_wal_lsn difference).
 *   2. limit     (largest size only) the same rewrite without cryptography: binary COPY out in
 *                pages, COPY into a staging table (values inline where they fit, as rotate's),
 *                one UPDATE … FROM per chunk with a key range, same chunk size, reading
 *                overlapped with writing, same VACUUM cadence.
 *   2b. rotate #2 (largest size only) a second rotation, in the table state the limit run had.
 *   3. row-by-row (largest size only) what a quick script does: SELECT a page, decrypt,
 *                encrypt, one autocommitted UPDATE per row; measured on a sample of rows
 *                spread over the tables and extrapolated to the whole database by values/s.
 *
 * Each measured phase starts after a CHECKPOINT.
 * Options: --sizes 200000,1000000  --row-sample 20000  --keep-db.
 * Uses $BENCH_DATABASE_URL (a server where it may create databases) or an embedded PostgreSQL 15
 * with stock settings in $BENCH_DIR (default /tmp/alation-keys-bench).
 */
import { spawn } from 'node:child_process';
import * as os from 'node:os';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Client, Pool } from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { addColumn } from '../src/core/columns';
import { initialise } from '../src/core/init';
import { openKeyring } from '../src/core/keyring-client';
import { CopyBinaryParser, CopyRow, encodeCopyBinary } from '../src/core/rewrite/copy-binary';
import { Vacuumer } from '../src/core/rewrite/vacuum';
import { createRosemetaTables, generateRosemeta, ROSEMETA_COLUMNS, RosemetaShape, verifyRosemeta } from '../scripts/lib/rosemeta';
import { recreateDatabase, startEmbeddedPostgres, EmbeddedServer } from '../scripts/lib/embedded-postgres';

const BIN = path.resolve(__dirname, '../../bin/alation-keys');
const MB = 1024 * 1024;
const BATCH = 1000;
const CHUNK_BYTES = 8 * MB;

interface Args {
  sizes: number[];
  rowSample: number;
  keepDb: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { sizes: [200_000, 1_000_000], rowSample: 20_000, keepDb: false };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--sizes') a.sizes = argv[++i].split(',').map(Number);
    else if (argv[i] === '--row-sample') a.rowSample = Number(argv[++i]);
    else if (argv[i] === '--keep-db') a.keepDb = true;
    else throw new Error(`unknown option ${argv[i]} (--sizes N,M --row-sample N --keep-db)`);
  }
  if (a.sizes.some((n) => !Number.isInteger(n) || n < 1000)) throw new Error('--sizes takes whole numbers ≥ 1000');
  return a;
}

const log = (s: string) => process.stdout.write(s + '\n');
const fmt = (n: number, d = 0) => n.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

async function dbSize(pool: Pool): Promise<number> {
  return Number((await pool.query('SELECT pg_database_size(current_database())::text AS n')).rows[0].n);
}

async function walLsn(pool: Pool): Promise<string> {
  return (await pool.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l;
}

async function walSince(pool: Pool, lsn: string): Promise<number> {
  return Number((await pool.query('SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::text AS n', [lsn])).rows[0].n);
}

/**
 * Every measured phase starts from the same state: a CHECKPOINT first, so no phase pays for
 * flushing what the previous one (or the data generation) left dirty.
 */
async function checkpointFirst(pool: Pool): Promise<void> {
  // CHECKPOINT needs a superuser (or pg_checkpoint from PostgreSQL 15); without, measure as is.
  await pool.query('CHECKPOINT').catch((err) => log(`  (no CHECKPOINT before the phase: ${(err as Error).message})`));
}

/** Samples database size while `fn` runs; returns fn's result and the peak. */
async function withSizeSampling<T>(pool: Pool, fn: () => Promise<T>): Promise<{ result: T; peak: number; start: number; end: number }> {
  const start = await dbSize(pool);
  let peak = start;
  let running = true;
  const sampler = (async () => {
    const c = new Client({ connectionString: (pool as any).options.connectionString });
    await c.connect();
    try {
      while (running) {
        const n = Number((await c.query('SELECT pg_database_size(current_database())::text AS n')).rows[0].n);
        if (n > peak) peak = n;
        await new Promise((r) => setTimeout(r, 500));
      }
    } finally {
      await c.end();
    }
  })();
  try {
    const result = await fn();
    return { result, peak, start, end: await dbSize(pool) };
  } finally {
    running = false;
    await sampler;
  }
}

interface Installation {
  url: string;
  pool: Pool;
  masterKeyFile: string;
  shape: RosemetaShape;
  values: number;
  bytes: number;
}

async function setUp(server: { createDatabase(name: string): Promise<string> }, size: number, dir: string): Promise<Installation> {
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
  await pool.query('VACUUM ANALYZE public.credentials, public.documents, public.blobs');
  const r = await pool.query(`SELECT
      (SELECT count(secret) + 0 FROM public.credentials) + (SELECT count(body) FROM public.documents) + (SELECT count(payload) FROM public.blobs) AS n,
      (SELECT coalesce(sum(octet_length(secret)),0) FROM public.credentials) + (SELECT sum(octet_length(body)) FROM public.documents) + (SELECT sum(octet_length(payload)) FROM public.blobs) AS b`);
  log(`  generated ${fmt(size)} values in ${((Date.now() - t0) / 1000).toFixed(0)} s; database ${fmt((await dbSize(pool)) / MB)} MB`);
  return { url, pool, masterKeyFile, shape, values: Number(r.rows[0].n), bytes: Number(r.rows[0].b) };
}

/** Spawns the CLI rotate and samples its peak RSS. */
async function runRotate(inst: Installation): Promise<{ seconds: number; peakRssKb: number; summary: any; stderr: string }> {
  const t0 = Date.now();
  const child = spawn(process.execPath, [BIN, 'rotate', '--skip-backup-check', '--settle-time', '0', '--json'], {
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
  if (code !== 0) throw new Error(`rotate exited ${code}:\n${stderr}`);
  return { seconds: (Date.now() - t0) / 1000, peakRssKb, summary: JSON.parse(stdout), stderr };
}

const TABLES = [
  { table: 'public.credentials', column: 'secret', storage: 'text' },
  { table: 'public.documents', column: 'body', storage: 'text' },
  { table: 'public.blobs', column: 'payload', storage: 'bytea' },
];

/** The same rewrite without cryptography: the limit of the write path. */
export async function referencePipeline(pool: Pool): Promise<{ seconds: number; rows: number; bytes: number; vacuums: number }> {
  const t0 = Date.now();
  let rows = 0;
  let bytes = 0;
  const sizes = new Map<string, number>();
  for (const t of TABLES) sizes.set(t.table, Number((await pool.query(`SELECT pg_total_relation_size($1::regclass)::text AS n`, [t.table])).rows[0].n));
  const vacuumer = new Vacuumer(pool, (table) => Math.min(Math.max((sizes.get(table) ?? 0) * 0.1, 32 * MB), 1024 * MB), {});
  for (const t of TABLES) {
    async function* chunks() {
      const reader = await pool.connect();
      try {
        let after = -1;
        let chunk: { rows: CopyRow[]; lo: string; hi: string; bytes: number } | null = null;
        for (;;) {
          const src = reader.query(copyTo(
            `COPY (SELECT id::text AS k0, ${t.column} AS v FROM ${t.table} AS t WHERE id > ${after} AND ${t.column} IS NOT NULL ORDER BY t.id LIMIT ${BATCH * 4}) TO STDOUT (FORMAT binary)`,
          ));
          const parser = new CopyBinaryParser();
          src.on('error', (e) => parser.destroy(e));
          src.pipe(parser);
          let n = 0;
          for await (const f of parser as AsyncIterable<CopyRow>) {
            n++;
            const key = f[0]!.toString();
            after = Number(key);
            const value = Buffer.from(f[1]!);
            chunk ??= { rows: [], lo: key, hi: key, bytes: 0 };
            chunk.rows.push([Buffer.from(f[0]!), value]);
            chunk.hi = key;
            chunk.bytes += value.length;
            if (chunk.rows.length >= BATCH || chunk.bytes >= CHUNK_BYTES) {
              const c = chunk;
              chunk = null;
              yield c;
            }
          }
          if (n < BATCH * 4) break;
        }
        if (chunk) yield chunk;
      } finally {
        reader.release();
      }
    }
    const writer = await pool.connect();
    try {
      await writer.query(`CREATE TEMP TABLE IF NOT EXISTS ref_stage (k0 text, v ${t.storage}) ON COMMIT DELETE ROWS`);
      await writer.query(`ALTER TABLE ref_stage ALTER COLUMN v SET STORAGE MAIN`); // as rotate's staging table
      const stream = Readable.from(chunks(), { objectMode: true, highWaterMark: 1 });
      for await (const c of stream as AsyncIterable<{ rows: CopyRow[]; lo: string; hi: string; bytes: number }>) {
        await writer.query('BEGIN');
        await pipeline(Readable.from([encodeCopyBinary(c.rows)]), writer.query(copyFrom('COPY ref_stage FROM STDIN (FORMAT binary)')));
        await writer.query(
          `UPDATE ${t.table} AS t SET ${t.column} = s.v FROM ref_stage s WHERE t.id = s.k0::bigint AND t.id >= $1::bigint AND t.id <= $2::bigint`,
          [c.lo, c.hi],
        );
        await writer.query('COMMIT');
        rows += c.rows.length;
        bytes += c.bytes;
        vacuumer.wrote(t.table, c.bytes);
      }
      await writer.query('DROP TABLE IF EXISTS ref_stage');
    } finally {
      writer.release();
    }
  }
  await vacuumer.idle();
  return { seconds: (Date.now() - t0) / 1000, rows, bytes, vacuums: vacuumer.vacuums };
}

/** What a quick script does: a page at a time, one UPDATE per row. Measured on a sample. */
async function rowByRow(inst: Installation, sample: number): Promise<{ seconds: number; rows: number; bytes: number }> {
  const keyring = await openKeyring({ pool: inst.pool, masterKeyFile: inst.masterKeyFile });
  const t0 = Date.now();
  let rows = 0;
  let bytes = 0;
  // The sample is split over the tables in proportion to their values.
  const total = inst.shape.credentials + inst.shape.documents + inst.shape.blobs;
  const shares = [inst.shape.credentials, inst.shape.documents, inst.shape.blobs].map((n) => Math.max(1, Math.round((sample * n) / total)));
  for (const [i, t] of TABLES.entries()) {
    const name = ROSEMETA_COLUMNS[i];
    let after = 0;
    let left = shares[i];
    while (left > 0) {
      const page = await inst.pool.query(`SELECT id, ${t.column} AS v FROM ${t.table} WHERE id > $1 AND ${t.column} IS NOT NULL ORDER BY id LIMIT 1000`, [after]);
      if (page.rows.length === 0) break;
      for (const r of page.rows) {
        if (left-- <= 0) break;
        after = Number(r.id);
        const plain = await keyring.decrypt(r.v, name);
        const sealed = await keyring.encrypt(plain as any, name);
        await inst.pool.query(`UPDATE ${t.table} SET ${t.column} = $1 WHERE id = $2`, [sealed, r.id]);
        rows++;
        bytes += typeof sealed === 'string' ? sealed.length : (sealed as Buffer).length;
      }
    }
  }
  await keyring.close();
  return { seconds: (Date.now() - t0) / 1000, rows, bytes };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const dir = process.env.BENCH_DIR ?? '/tmp/alation-keys-bench';
  fs.mkdirSync(dir, { recursive: true });
  let server: EmbeddedServer | undefined;
  let creator: { createDatabase(name: string): Promise<string> };
  if (process.env.BENCH_DATABASE_URL) {
    const admin = process.env.BENCH_DATABASE_URL;
    creator = { createDatabase: (name) => recreateDatabase(admin, name) };
  } else {
    const dataDir = path.join(dir, 'pgdata');
    fs.rmSync(dataDir, { recursive: true, force: true });
    server = await startEmbeddedPostgres({ dataDir });
    creator = server;
  }
  const pgVersion = async (pool: Pool) => (await pool.query('SHOW server_version')).rows[0].server_version;
  log(`alation-keys rotate benchmark — ${new Date().toISOString()}, node ${process.version}, ${os.cpus().length} CPUs`);
  const results: any[] = [];
  try {
    for (const [i, size] of args.sizes.entries()) {
      const last = i === args.sizes.length - 1;
      log(`\n== ${fmt(size)} values`);
      const inst = await setUp(creator, size, dir);
      if (i === 0) log(`  PostgreSQL ${await pgVersion(inst.pool)}${server ? ' (embedded, stock settings)' : ''}`);
      await checkpointFirst(inst.pool);
      const wal0 = await walLsn(inst.pool);
      const rot = await withSizeSampling(inst.pool, () => runRotate(inst));
      const wal = await walSince(inst.pool, wal0);
      const s = rot.result.summary;
      const res: any = {
        size,
        values: inst.values,
        mb: inst.bytes / MB,
        dbMbBefore: rot.start / MB,
        rotate: {
          seconds: rot.result.seconds,
          valuesPerSecond: inst.values / rot.result.seconds,
          mbPerSecond: inst.bytes / MB / rot.result.seconds,
          peakRssMb: rot.result.peakRssKb / 1024,
          peakGrowthMb: (rot.peak - rot.start) / MB,
          growthRatio: (rot.peak - rot.start) / rot.start,
          endGrowthMb: (rot.end - rot.start) / MB,
          walMb: wal / MB,
          vacuums: s.vacuums,
        },
      };
      log(
        `  rotate:     ${res.rotate.seconds.toFixed(1)} s, ${fmt(res.rotate.valuesPerSecond)} values/s, ${res.rotate.mbPerSecond.toFixed(1)} MB/s; ` +
          `peak RSS ${res.rotate.peakRssMb.toFixed(0)} MB; database ${fmt(res.dbMbBefore)} MB, peak growth ${fmt(res.rotate.peakGrowthMb)} MB (${(res.rotate.growthRatio * 100).toFixed(0)} %), ` +
          `after ${fmt(res.rotate.endGrowthMb)} MB; WAL ${fmt(res.rotate.walMb)} MB; ${s.vacuums} vacuums`,
      );
      const keyring = await openKeyring({ pool: inst.pool, masterKeyFile: inst.masterKeyFile });
      const report = await verifyRosemeta(inst.pool, keyring, inst.shape, { seed: 'bench' });
      await keyring.close();
      const bad = report.mismatched.length + report.missing.length;
      log(`  verified:   ${fmt(report.checked)} values decrypt to their plaintext, ${bad} problems, versions ${JSON.stringify(Object.values(report.versions).map((v) => Object.keys(v)))}`);
      if (bad) throw new Error('verification failed');
      if (last) {
        await checkpointFirst(inst.pool);
        const wal1 = await walLsn(inst.pool);
        const ref = await withSizeSampling(inst.pool, () => referencePipeline(inst.pool));
        const refWal = await walSince(inst.pool, wal1);
        res.limit = {
          seconds: ref.result.seconds,
          valuesPerSecond: ref.result.rows / ref.result.seconds,
          mbPerSecond: ref.result.bytes / MB / ref.result.seconds,
          peakGrowthMb: (ref.peak - ref.start) / MB,
          walMb: refWal / MB,
        };
        log(
          `  limit:      ${res.limit.seconds.toFixed(1)} s, ${fmt(res.limit.valuesPerSecond)} values/s, ${res.limit.mbPerSecond.toFixed(1)} MB/s (no crypto: COPY out, COPY to staging, UPDATE … FROM, same chunks and vacuum cadence); WAL ${fmt(res.limit.walMb)} MB`,
        );
        // Same physical state as the limit run had (tables rewritten once, space reused).
        await checkpointFirst(inst.pool);
        const again = await runRotate(inst);
        res.rotateAgain = { seconds: again.seconds, valuesPerSecond: inst.values / again.seconds, mbPerSecond: inst.bytes / MB / again.seconds, peakRssMb: again.peakRssKb / 1024 };
        log(
          `  rotate #2:  ${again.seconds.toFixed(1)} s, ${fmt(res.rotateAgain.valuesPerSecond)} values/s, ${res.rotateAgain.mbPerSecond.toFixed(1)} MB/s; peak RSS ${res.rotateAgain.peakRssMb.toFixed(0)} MB (right after the limit run, same table state)`,
        );
        await checkpointFirst(inst.pool);
        const rb = await rowByRow(inst, args.rowSample);
        res.rowByRow = {
          sampleRows: rb.rows,
          sampleSeconds: rb.seconds,
          valuesPerSecond: rb.rows / rb.seconds,
          extrapolatedSeconds: (inst.values / rb.rows) * rb.seconds,
        };
        log(
          `  row-by-row: ${fmt(res.rowByRow.valuesPerSecond)} values/s measured on ${fmt(rb.rows)} values in ${rb.seconds.toFixed(1)} s, extrapolated to ${fmt(res.rowByRow.extrapolatedSeconds)} s for all ${fmt(inst.values)}`,
        );
        res.ratios = {
          rotateVsLimit: res.limit.seconds / res.rotate.seconds,
          rotateAgainVsLimit: res.limit.seconds / res.rotateAgain.seconds,
          rotateVsRowByRow: res.rowByRow.extrapolatedSeconds / res.rotate.seconds,
        };
        log(
          `  ratios:     rotate = ${res.ratios.rotateVsLimit.toFixed(2)} × the limit (rotate #2: ${res.ratios.rotateAgainVsLimit.toFixed(2)}; target ≥ 0.9), ${res.ratios.rotateVsRowByRow.toFixed(1)} × row-by-row (target ≥ 8); ` +
            `growth ${(res.rotate.growthRatio).toFixed(2)} × database (target ≤ 0.3); RSS ${res.rotate.peakRssMb.toFixed(0)} MB (target < 200)`,
        );
      }
      results.push(res);
      await inst.pool.end();
      if (!args.keepDb) {
        const c = new Client({ connectionString: inst.url.replace(/\/[^/]+$/, '/postgres') });
        await c.connect();
        await c.query(`DROP DATABASE IF EXISTS bench_${size} WITH (FORCE)`);
        await c.end();
      }
    }
    if (results.length > 1) {
      log(`\nRSS by size: ${results.map((r) => `${fmt(r.size)} values → ${r.rotate.peakRssMb.toFixed(0)} MB`).join(', ')}`);
    }
    fs.writeFileSync(path.join(dir, 'results.json'), JSON.stringify(results, null, 2));
    log(`results written to ${path.join(dir, 'results.json')}`);
  } finally {
    if (server) await server.stop();
  }
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`bench failed: ${err.stack ?? err}\n`);
    process.exit(1);
  });
}
