/**
 * `npm run bench`: how fast `rotate` rewrites a database, against what is possible.
 *
 * For each size (default 200,000 and 1,000,000 encrypted values of the synthetic rosemeta:
 * text and bytea values of 100 B–4 KB, 0.1 % of the blobs 100 KB and TOASTed), on a fresh
 * database:
 *   1. rotate    the real CLI (`rotate --skip-backup-check --settle-time 0`), spawned; peak RSS
 *                from /proc/PID/status VmHWM, database size sampled every 0.5 s (peak growth),
 *                WAL written (pg_current_wal_lsn difference).
 *   1b. verify  the real CLI `verify` (spawned, peak RSS) against the read side's limit: binary
 *                COPY in verify's pages and every value decrypted in memory on one thread
 *                (bench/verify-bench.ts).
 *   2. limit     (largest size only) the same rewrite without cryptography: binary COPY out in
 *                pages, COPY into a staging table (values inline where they fit, as rotate's),
 *                one UPDATE … FROM per chunk with a key range, same chunk size, reading
 *                overlapped with writing, same VACUUM cadence.
 *   2b. rotate #2 (largest size only) a second rotation, in the table state the limit run had.
 *   3. row-by-row (largest size only) what a quick script does: SELECT a page, decrypt,
 *                encrypt, one autocommitted UPDATE per row; measured on a sample of rows
 *                spread over the tables and extrapolated to the whole database by values/s.
 *
 *   4. encrypt   (largest size only) the rosemeta returned to plaintext with `decrypt`, then the
 *                real `encrypt` of it against the same no-crypto limit on the plaintext
 *                (bench/encrypt-bench.ts).
 *
 * Each measured phase starts after a CHECKPOINT. For each phase, WAL: bytes, full-page images
 * (pg_stat_wal) and, on the bench's own server, pg_waldump --stats (bench/wal-stats.ts).
 * Options: --sizes 200000,1000000  --row-sample 20000 (0: no row-by-row)  --no-limit (no limit,
 * rotate #2 nor row-by-row)  --no-again (no rotate #2)  --no-encrypt (no encrypt phase)  --shuffle (rows in
 * random physical order: key order no longer follows the pages)  --keep-db  --pg-bin DIR (PostgreSQL 15 binaries of the bench's own server; default
 * the embedded ones, /usr/lib/postgresql/15/bin has lz4 and zstd)  --set NAME=VALUE (a server
 * setting of the bench's own server, repeatable: wal_compression=zstd, max_wal_size=4GB, …)
 * --batch-size N (values per chunk for rotate and the limit alike; default rotate's).
 * --app-load: the application's view instead (bench/app-load.ts).
 * Uses $BENCH_DATABASE_URL (a server where it may create databases) or its own PostgreSQL 15
 * with stock settings (plus --set) in a temporary directory; results in $BENCH_DIR (default
 * /tmp/alation-keys-bench).
 */
import * as os from 'node:os';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client, Pool } from 'pg';
import { openKeyring } from '../src/core/keyring-client';
import { DEFAULT_BATCH_SIZE } from '../src/core/rewrite/job-run';
import { ROSEMETA_COLUMNS, verifyRosemeta } from '../scripts/lib/rosemeta';
import { recreateDatabase } from '../scripts/lib/embedded-postgres';
import { EMBEDDED_BIN_DIR, LocalCluster, startPrimary } from '../scripts/lib/streaming-standby';
import { dbSize, dropDatabase, fmt, Installation, log, MB, runRotate, setUp } from './installation';
import { describeWal, findWaldump, heapPages, updateCounts, walMark, WalUsed, walSince } from './wal-stats';
import { runAppLoad } from './app-load';
import { referencePipeline, TABLES } from './no-crypto-limit';
import { benchVerify, describeVerifyBench } from './verify-bench';
import { benchEncrypt, describeEncryptBench } from './encrypt-bench';

interface Args {
  sizes: number[];
  rowSample: number;
  again: boolean;
  limit: boolean;
  shuffle: boolean;
  keepDb: boolean;
  pgBin: string;
  settings: string[];
  appLoad: boolean;
  encrypt: boolean;
  rest: string[];
  /** Values per chunk, for rotate and for the limit alike. */
  batchSize: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { sizes: [200_000, 1_000_000], rowSample: 20_000, again: true, limit: true, shuffle: false, keepDb: false, pgBin: EMBEDDED_BIN_DIR, settings: [], appLoad: false, encrypt: true, rest: [], batchSize: DEFAULT_BATCH_SIZE };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--sizes') a.sizes = argv[++i].split(',').map(Number);
    else if (argv[i] === '--row-sample') a.rowSample = Number(argv[++i]);
    else if (argv[i] === '--no-again') a.again = false;
    else if (argv[i] === '--no-limit') a.limit = false;
    else if (argv[i] === '--no-encrypt') a.encrypt = false;
    else if (argv[i] === '--shuffle') a.shuffle = true;
    else if (argv[i] === '--keep-db') a.keepDb = true;
    else if (argv[i] === '--pg-bin') a.pgBin = argv[++i];
    else if (argv[i] === '--set') a.settings.push(argv[++i]);
    else if (argv[i] === '--batch-size' && a.appLoad) a.rest.push(argv[i], argv[++i]);
    else if (argv[i] === '--batch-size') a.batchSize = Number(argv[++i]);
    else if (argv[i] === '--app-load') a.appLoad = true;
    else if (a.appLoad) a.rest.push(argv[i]);
    else throw new Error(`unknown option ${argv[i]} (--sizes N,M --row-sample N --no-again --no-limit --no-encrypt --shuffle --keep-db --pg-bin DIR --set NAME=VALUE --batch-size N --app-load)`);
  }
  if (a.sizes.some((n) => !Number.isInteger(n) || n < 1000)) throw new Error('--sizes takes whole numbers ≥ 1000');
  if (!Number.isInteger(a.batchSize) || a.batchSize < 1) throw new Error('--batch-size takes a whole number ≥ 1');
  if (a.settings.some((x) => !/^[a-z_]+=\S+$/.test(x))) throw new Error('--set takes NAME=VALUE');
  return a;
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

const BENCH_TABLES = TABLES.map((t) => t.table);

/** The server settings that decide WAL volume, as one line. */
async function walSettings(pool: Pool): Promise<string> {
  const names = ['wal_compression', 'full_page_writes', 'max_wal_size', 'checkpoint_timeout', 'data_checksums', 'wal_log_hints'];
  const r = await pool.query(`SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])`, [names]);
  return r.rows.map((x) => `${x.name}=${x.setting}${x.unit && x.unit !== '' ? ' ' + x.unit : ''}`).join(', ');
}

/** WAL of a phase, as results.json keeps it: MB, per rewritten byte, FPI count and bytes. */
function walResult(w: WalUsed, rewritten: number, pages: { heap: number; toast: number }) {
  return {
    walMb: w.bytes / MB,
    walPerRewrittenByte: w.bytes / rewritten,
    fpi: w.fpi,
    fpiPerPage: w.fpi === null ? null : w.fpi / (pages.heap + pages.toast),
    fpiMb: w.fpiBytes === undefined ? null : w.fpiBytes / MB,
    records: w.records,
    byRmgrMb: w.byRmgr ? Object.fromEntries(Object.entries(w.byRmgr).map(([k, v]) => [k, { recordMb: v.recordBytes / MB, fpiMb: v.fpiBytes / MB, records: v.records }])) : undefined,
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const batchArgs = args.batchSize === DEFAULT_BATCH_SIZE ? [] : ['--batch-size', String(args.batchSize)];
  const dir = process.env.BENCH_DIR ?? '/tmp/alation-keys-bench';
  fs.mkdirSync(dir, { recursive: true });
  if (args.appLoad) {
    await runAppLoad(args.rest, { dir, pgBin: args.pgBin, settings: args.settings });
    return;
  }
  let cluster: LocalCluster | undefined;
  let creator: { createDatabase(name: string): Promise<string> };
  let waldump: { bin: string; walDir: string } | undefined;
  if (process.env.BENCH_DATABASE_URL) {
    const admin = process.env.BENCH_DATABASE_URL;
    creator = { createDatabase: (name) => recreateDatabase(admin, name) };
  } else {
    // wal_keep_size only keeps each phase's WAL segments for pg_waldump; it changes no WAL written.
    const flags = ['-c', 'wal_keep_size=8GB', ...args.settings.flatMap((x) => ['-c', x])];
    cluster = await startPrimary('bench', { binDir: args.pgBin, flags });
    creator = cluster;
    const bin = findWaldump(args.pgBin);
    if (bin) waldump = { bin, walDir: path.join(cluster.primary.dataDir, 'pg_wal') };
  }
  const pgVersion = async (pool: Pool) => (await pool.query('SHOW server_version')).rows[0].server_version;
  log(`alation-keys rotate benchmark — ${new Date().toISOString()}, node ${process.version}, ${os.cpus().length} CPUs`);
  const results: any[] = [];
  try {
    for (const [i, size] of args.sizes.entries()) {
      const last = i === args.sizes.length - 1;
      log(`\n== ${fmt(size)} values`);
      const inst = await setUp(creator, size, dir, { shuffle: args.shuffle });
      if (i === 0) log(`  PostgreSQL ${await pgVersion(inst.pool)}${cluster ? ` (own server, ${args.pgBin})` : ''}; ${await walSettings(inst.pool)}`);
      const pages = await heapPages(inst.pool, BENCH_TABLES);
      log(`  tables: ${fmt(pages.heap)} heap pages, ${fmt(pages.toast)} TOAST pages; ${fmt(inst.bytes / MB)} MB of values`);
      await checkpointFirst(inst.pool);
      const upd0 = await updateCounts(inst.pool, BENCH_TABLES);
      const wal0 = await walMark(inst.pool);
      const rot = await withSizeSampling(inst.pool, () => runRotate(inst, batchArgs));
      const wal = await walSince(inst.pool, wal0, waldump);
      await new Promise((r) => setTimeout(r, 1000)); // table statistics reach the server within a second
      const upd1 = await updateCounts(inst.pool, BENCH_TABLES);
      const hot = { updates: upd1.updates - upd0.updates, hot: upd1.hot - upd0.hot };
      const s = rot.result.summary;
      const res: any = {
        size,
        values: inst.values,
        mb: inst.bytes / MB,
        dbMbBefore: rot.start / MB,
        pages,
        settings: await walSettings(inst.pool),
        rotate: {
          seconds: rot.result.seconds,
          valuesPerSecond: inst.values / rot.result.seconds,
          mbPerSecond: inst.bytes / MB / rot.result.seconds,
          peakRssMb: rot.result.peakRssKb / 1024,
          peakGrowthMb: (rot.peak - rot.start) / MB,
          growthRatio: (rot.peak - rot.start) / rot.start,
          endGrowthMb: (rot.end - rot.start) / MB,
          vacuums: s.vacuums,
          rewriteSeconds: s.rewriteSeconds,
          rowUpdates: hot.updates,
          hotUpdates: hot.hot,
          ...walResult(wal, inst.bytes, pages),
        },
      };
      log(
        `  rotate:     ${res.rotate.seconds.toFixed(1)} s (its job's rewrite ${res.rotate.rewriteSeconds} s), ${fmt(res.rotate.valuesPerSecond)} values/s, ${res.rotate.mbPerSecond.toFixed(1)} MB/s; ` +
          `peak RSS ${res.rotate.peakRssMb.toFixed(0)} MB; database ${fmt(res.dbMbBefore)} MB, peak growth ${fmt(res.rotate.peakGrowthMb)} MB (${(res.rotate.growthRatio * 100).toFixed(0)} %), ` +
          `after ${fmt(res.rotate.endGrowthMb)} MB; ${s.vacuums} vacuums`,
      );
      log(`              ${describeWal(wal, inst.bytes)}; ${fmt(hot.hot)} of ${fmt(hot.updates)} row updates HOT`);
      const keyring = await openKeyring({ pool: inst.pool, masterKeyFile: inst.masterKeyFile });
      const report = await verifyRosemeta(inst.pool, keyring, inst.shape, { seed: 'bench' });
      await keyring.close();
      const bad = report.mismatched.length + report.missing.length;
      log(`  verified:   ${fmt(report.checked)} values decrypt to their plaintext, ${bad} problems, versions ${JSON.stringify(Object.values(report.versions).map((v) => Object.keys(v)))}`);
      if (bad) throw new Error('verification failed');
      await checkpointFirst(inst.pool);
      res.verify = await benchVerify(inst);
      log(describeVerifyBench(res.verify));
      if (last && args.limit) {
        await checkpointFirst(inst.pool);
        const pages1 = await heapPages(inst.pool, BENCH_TABLES);
        const wal1 = await walMark(inst.pool);
        const ref = await withSizeSampling(inst.pool, () => referencePipeline(inst.pool, args.batchSize));
        const refWal = await walSince(inst.pool, wal1, waldump);
        res.limit = {
          seconds: ref.result.seconds,
          valuesPerSecond: ref.result.rows / ref.result.seconds,
          mbPerSecond: ref.result.bytes / MB / ref.result.seconds,
          peakGrowthMb: (ref.peak - ref.start) / MB,
          ...walResult(refWal, ref.result.bytes, pages1),
        };
        log(
          `  limit:      ${res.limit.seconds.toFixed(1)} s, ${fmt(res.limit.valuesPerSecond)} values/s, ${res.limit.mbPerSecond.toFixed(1)} MB/s (no crypto: COPY out, COPY to staging, UPDATE … FROM, same chunks and vacuum cadence)`,
        );
        log(`              ${describeWal(refWal, ref.result.bytes)}`);
        res.ratios = { rotateVsLimit: res.limit.seconds / res.rotate.seconds, rewriteVsLimit: res.limit.seconds / res.rotate.rewriteSeconds };
        if (args.again) {
          // Same physical state as the limit run had (tables rewritten once, space reused).
          await checkpointFirst(inst.pool);
          const wal2 = await walMark(inst.pool);
          const again = await runRotate(inst, batchArgs);
          const againWal = await walSince(inst.pool, wal2, waldump);
          res.rotateAgain = {
            seconds: again.seconds,
            valuesPerSecond: inst.values / again.seconds,
            mbPerSecond: inst.bytes / MB / again.seconds,
            peakRssMb: again.peakRssKb / 1024,
            rewriteSeconds: again.summary.rewriteSeconds,
            ...walResult(againWal, inst.bytes, pages1),
          };
          res.ratios.rotateAgainVsLimit = res.limit.seconds / res.rotateAgain.seconds;
          res.ratios.rewriteAgainVsLimit = res.limit.seconds / res.rotateAgain.rewriteSeconds;
          log(
            `  rotate #2:  ${again.seconds.toFixed(1)} s (rewrite ${res.rotateAgain.rewriteSeconds} s), ${fmt(res.rotateAgain.valuesPerSecond)} values/s, ${res.rotateAgain.mbPerSecond.toFixed(1)} MB/s; peak RSS ${res.rotateAgain.peakRssMb.toFixed(0)} MB (right after the limit run, same table state)`,
          );
          log(`              ${describeWal(againWal, inst.bytes)}`);
        }
        if (args.rowSample > 0) {
          await checkpointFirst(inst.pool);
          const rb = await rowByRow(inst, args.rowSample);
          res.rowByRow = {
            sampleRows: rb.rows,
            sampleSeconds: rb.seconds,
            valuesPerSecond: rb.rows / rb.seconds,
            extrapolatedSeconds: (inst.values / rb.rows) * rb.seconds,
          };
          res.ratios.rotateVsRowByRow = res.rowByRow.extrapolatedSeconds / res.rotate.seconds;
          log(
            `  row-by-row: ${fmt(res.rowByRow.valuesPerSecond)} values/s measured on ${fmt(rb.rows)} values in ${rb.seconds.toFixed(1)} s, extrapolated to ${fmt(res.rowByRow.extrapolatedSeconds)} s for all ${fmt(inst.values)}`,
          );
        }
        const r = res.ratios;
        log(
          `  ratios:     rotate = ${r.rotateVsLimit.toFixed(2)} × the limit, its job's rewrite ${r.rewriteVsLimit.toFixed(2)} ×` +
            (r.rotateAgainVsLimit !== undefined ? ` (rotate #2: ${r.rotateAgainVsLimit.toFixed(2)}, rewrite ${r.rewriteAgainVsLimit.toFixed(2)})` : '') +
            ` (target ≥ 1.0)` +
            (r.rotateVsRowByRow !== undefined ? `, ${r.rotateVsRowByRow.toFixed(1)} × row-by-row (target ≥ 8)` : '') +
            `; growth ${res.rotate.growthRatio.toFixed(2)} × database (target ≤ 0.3); RSS ${res.rotate.peakRssMb.toFixed(0)} MB (target < 200); ` +
            `WAL ${res.rotate.walPerRewrittenByte.toFixed(2)} × rewritten (limit ${res.limit.walPerRewrittenByte.toFixed(2)} ×; target ≤ 1.3)`,
        );
      }
      if (last && args.encrypt) {
        res.encrypt = await benchEncrypt(inst, { checkpoint: () => checkpointFirst(inst.pool), limit: () => referencePipeline(inst.pool) });
        log(describeEncryptBench(res.encrypt));
        const keyring = await openKeyring({ pool: inst.pool, masterKeyFile: inst.masterKeyFile });
        const after = await verifyRosemeta(inst.pool, keyring, inst.shape, { seed: 'bench' });
        await keyring.close();
        const wrong = after.mismatched.length + after.missing.length;
        log(`  verified:   ${fmt(after.checked)} values decrypt to their plaintext after decrypt and encrypt, ${wrong} problems`);
        if (wrong) throw new Error('verification after encrypt failed');
      }
      results.push(res);
      await inst.pool.end();
      if (!args.keepDb) await dropDatabase(inst);
    }
    if (results.length > 1) {
      log(`\nRSS by size: ${results.map((r) => `${fmt(r.size)} values → ${r.rotate.peakRssMb.toFixed(0)} MB`).join(', ')}`);
      log(`verify RSS by size: ${results.map((r) => `${fmt(r.size)} values → ${r.verify.verify.peakRssMb.toFixed(0)} MB`).join(', ')}`);
    }
    fs.writeFileSync(path.join(dir, 'results.json'), JSON.stringify(results, null, 2));
    log(`results written to ${path.join(dir, 'results.json')}`);
  } finally {
    if (cluster) await cluster.stop();
  }
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`bench failed: ${err.stack ?? err}\n`);
    process.exit(1);
  });
}
