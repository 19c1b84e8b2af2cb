/**
 * The verify phase of `npm run bench`: the real `verify` (spawned, peak RSS) against the limit
 * of its read side on the same data — the same binary COPY pages of every registered column,
 * each value opened in memory with the data key it names, on as many threads as verify uses
 * (one: its default is one reader thread, columns one after another; here the bench's own
 * thread). The limit reads and decrypts only; verify's own time (the job's, without process
 * start) also covers its counts, its job record and its bounded look at unregistered columns.
 * Three runs of each, alternating; the fastest of each is compared (the peak RSS is the largest).
 */
import { Pool } from 'pg';
import { envelopeOfStoredBytes, envelopeVersion, openEnvelope } from '../src/crypto/envelope';
import { listColumns } from '../src/core/columns';
import { readKeyring } from '../src/core/keyring';
import { copyRowsOut } from '../src/core/rewrite/chunk-reader';
import { readPageSql } from '../src/core/rewrite/plan';
import { openProvider, planColumns } from '../src/core/rewrite/preflight';
import { runMeasured } from './installation';

const MB = 1024 * 1024;
/** verify's page: its chunk of 2,000 values × 4 (chunk-reader.ts). */
const PAGE_ROWS = 8000;

export interface VerifyBench {
  values: number;
  mb: number;
  limit: { seconds: number; valuesPerSecond: number; mbPerSecond: number };
  verify: { seconds: number; jobSeconds: number; valuesPerSecond: number; mbPerSecond: number; peakRssMb: number; threads: number };
  /** limit ÷ verify (its job's time): the target is ≥ 0.8. */
  ratio: number;
}

/** Binary COPY of every registered column in verify's pages, every value decrypted, one thread. */
export async function readSideLimit(pool: Pool, masterKeyFile: string): Promise<{ seconds: number; values: number; bytes: number }> {
  const plans = await planColumns(pool, await listColumns(pool));
  const { provider, deks } = await openProvider(pool, { masterKeyFile }, await readKeyring(pool));
  const client = await pool.connect();
  const t0 = Date.now();
  let values = 0;
  let bytes = 0;
  try {
    for (const p of plans) {
      let watermark: string[] | null = null;
      for (;;) {
        let n = 0;
        for await (const f of copyRowsOut(client, readPageSql(p, watermark, PAGE_ROWS, (s) => client.escapeLiteral(s)))) {
          n++;
          watermark = [f[0]!.toString('utf8')];
          const raw = f[2]!;
          const envelope = envelopeOfStoredBytes(raw, p.col.storage);
          openEnvelope(deks.get(envelopeVersion(envelope))!, envelope, p.col.context).fill(0);
          values++;
          bytes += raw.length;
        }
        if (n < PAGE_ROWS) break;
      }
    }
  } finally {
    client.release();
    provider.dispose();
  }
  return { seconds: (Date.now() - t0) / 1000, values, bytes };
}

/** Runs of each, alternating; the fastest of each counts (the machine is shared: the others are noise). */
const RUNS = 3;

export async function benchVerify(inst: { url: string; masterKeyFile: string; pool: Pool }): Promise<VerifyBench> {
  let limit: Awaited<ReturnType<typeof readSideLimit>> | undefined;
  let run: Awaited<ReturnType<typeof runMeasured>> | undefined;
  let peakRssKb = 0;
  for (let i = 0; i < RUNS; i++) {
    const l = await readSideLimit(inst.pool, inst.masterKeyFile);
    if (!limit || l.seconds < limit.seconds) limit = l;
    const r = await runMeasured(inst, ['verify']);
    if (!r.json.ok) throw new Error(`verify found problems: ${JSON.stringify(r.json.failures.slice(0, 5))}`);
    peakRssKb = Math.max(peakRssKb, r.peakRssKb);
    if (!run || r.json.durationSeconds < run.json.durationSeconds) run = r;
  }
  const report = run!.json;
  limit = limit!;
  const mb = limit.bytes / MB;
  return {
    values: limit.values,
    mb,
    limit: { seconds: limit.seconds, valuesPerSecond: limit.values / limit.seconds, mbPerSecond: mb / limit.seconds },
    verify: {
      seconds: run!.seconds,
      jobSeconds: report.durationSeconds,
      valuesPerSecond: report.values / report.durationSeconds,
      mbPerSecond: mb / report.durationSeconds,
      peakRssMb: peakRssKb / 1024,
      threads: report.threads,
    },
    ratio: limit.seconds / report.durationSeconds,
  };
}

export function describeVerifyBench(v: VerifyBench): string {
  const f = (n: number) => Math.round(n).toLocaleString('en-US');
  return (
    `  verify:     ${v.verify.jobSeconds.toFixed(1)} s (${v.verify.seconds.toFixed(1)} s with process start), ${f(v.verify.valuesPerSecond)} values/s, ${v.verify.mbPerSecond.toFixed(1)} MB/s; peak RSS ${v.verify.peakRssMb.toFixed(0)} MB; ${v.verify.threads} reader thread(s)\n` +
    `  read limit: ${v.limit.seconds.toFixed(1)} s, ${f(v.limit.valuesPerSecond)} values/s, ${v.limit.mbPerSecond.toFixed(1)} MB/s (binary COPY in verify's pages, every value decrypted, one thread); fastest of 3 runs each, alternating\n` +
    `  ratio:      verify = ${v.ratio.toFixed(2)} × the read limit (target ≥ 0.8)`
  );
}
