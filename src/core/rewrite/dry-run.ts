/** `rotate --dry-run`: the plan and a measured sample; changes nothing and takes no lock and no key. */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { advisoryLockHolder } from '../../db/transaction';
import { ProviderOptions } from '../../kms';
import { convertingColumns, nonEnvelopeProblems } from '../census';
import { listColumns } from '../columns';
import { Headroom, HeadroomOptions, measureHeadroom } from '../headroom';
import { describeLockHolder, JobRecord, lastSucceededJob } from '../jobs';
import { KeyringRow } from '../keyring';
import { ChunkEncoder, EncodedChunk } from './chunk-encoder';
import { readChunks } from './chunk-reader';
import { PassDescription } from './pass';
import { ColumnPlan, copyIntoStageSql, countVersions, createStageSql, VersionCount } from './plan';
import { censusColumns, checkBackup, checkHeadroom, DEFAULT_MAX_BACKUP_AGE_MS, openProvider, planColumns } from './preflight';
import { openTransform, Transform, valueMatch, ValueRewriter } from './transform';
import { estimateWal, WalEstimate } from './wal-estimate';

export interface DryRunOptions extends HeadroomOptions {
  skipBackupCheck?: boolean;
  backup?: boolean;
  maxBackupAgeMs?: number;
  providerOptions?: ProviderOptions;
  /** Values that are not envelopes would be left untouched, not refused. */
  skipUndecryptable?: boolean;
}

export interface RotatePlan {
  ok: true;
  result: 'dry-run';
  resumableJob: { id: number; fromVersion: number | null; toVersion: number | null; state: string } | null;
  primaryVersion: number;
  newVersion: number;
  provider: string;
  columns: Array<{ column: string; storage: string; state: string; rows: number; bytes: number; perVersion: VersionCount[]; plaintext: number; malformed: number; nulls: number }>;
  /** Encrypted columns holding values that are not envelopes: the real run refuses (exit 5). */
  nonEnvelopes: string[];
  rows: number;
  bytes: number;
  headroom: Headroom;
  backup: { jobId: number; finishedAt: string; ageHours: number } | null;
  preflight: string[];
  sample: { rows: number; bytes: number; seconds: number };
  estimatedSeconds: number | null;
  /** WAL the rotation will write, from measured facts (wal-estimate.ts). */
  wal: WalEstimate;
}

const SAMPLE_ROWS = 1000;

/** What a real run would refuse now, as lines (no lock is taken, nothing is changed), and what it saw. */
export interface DryRunChecks {
  preflight: string[];
  provider: string;
  headroom: Headroom;
  backup: { jobId: number; finishedAt: string; ageHours: number } | null;
}

/**
 * The checks of a rewrite job's preflight, run as a dry run: key provider (its DEKs unwrapped
 * for `fn`, zeroed afterwards), the maintenance lock, disk headroom, the backup (not needed
 * when `resuming`). Each failing check becomes a line of `preflight`.
 */
export async function withDryRunChecks<T>(
  pool: Pool,
  opts: DryRunOptions,
  rows: KeyringRow[],
  resuming: boolean,
  fn: (checks: DryRunChecks, deks: Map<number, Buffer>) => Promise<T>,
): Promise<T> {
  const preflight: string[] = [];
  const { provider, deks } = await openProvider(pool, opts.providerOptions ?? {}, rows);
  try {
    const holderPid = await advisoryLockHolder(pool);
    if (holderPid !== undefined) preflight.push(`the maintenance lock is held by ${await describeLockHolder(pool, holderPid)}`);
    let headroom: Headroom;
    try {
      headroom = await checkHeadroom(pool, { ...opts, skipDiskCheck: false }, {});
    } catch (err) {
      preflight.push((err as Error).message);
      headroom = await measureHeadroom(pool, opts);
    }
    const b = await lastSucceededJob(pool, 'backup');
    if (!resuming && !opts.skipBackupCheck && !opts.backup) {
      try {
        await checkBackup(pool, opts.maxBackupAgeMs ?? DEFAULT_MAX_BACKUP_AGE_MS);
      } catch (err) {
        preflight.push((err as Error).message);
      }
    }
    const backup = b?.finished_at ? { jobId: b.id, finishedAt: b.finished_at.toISOString(), ageHours: Math.round((Date.now() - b.finished_at.getTime()) / 360_000) / 10 } : null;
    return await fn({ preflight, provider: provider.kind, headroom, backup }, deks);
  } finally {
    for (const k of deks.values()) k.fill(0);
    provider.dispose();
  }
}

/**
 * The estimated duration of a rewrite of `bytes` from a sample: the sample times reading,
 * crypto and staging; the UPDATE of the real run costs about as much again as staging plus
 * reading (measured by bench/rotate-bench.ts), hence × 2.
 */
export function estimateSeconds(sample: { bytes: number; seconds: number }, rows: number, bytes: number): number | null {
  return sample.bytes > 0 ? Math.round((sample.seconds * 2 * bytes) / sample.bytes) : rows === 0 ? 0 : null;
}

export async function dryRun(pool: Pool, opts: DryRunOptions, rows: KeyringRow[], primary: KeyringRow, resumable: JobRecord | undefined): Promise<RotatePlan> {
  return withDryRunChecks(pool, opts, rows, !!resumable, ({ preflight, provider, headroom, backup }, deks) =>
    rotationPlan(pool, opts, rows, primary, resumable, { preflight, provider, headroom, backup }, deks),
  );
}

async function rotationPlan(
  pool: Pool,
  opts: DryRunOptions,
  rows: KeyringRow[],
  primary: KeyringRow,
  resumable: JobRecord | undefined,
  { preflight, provider, headroom, backup }: DryRunChecks,
  deks: Map<number, Buffer>,
): Promise<RotatePlan> {
  const cols = await listColumns(pool);
  const plans = await planColumns(pool, cols);
  const censuses = await censusColumns(pool, cols);
  const nonEnvelopes = nonEnvelopeProblems(censuses);
  for (const x of convertingColumns(censuses)) preflight.push(x);
  if (!opts.skipUndecryptable) for (const x of nonEnvelopes) preflight.push(`values that are not envelopes in ${x}`);
  const targetVersion = resumable?.to_version ?? Math.max(...rows.map((r) => r.version)) + 1;
  const columns: RotatePlan['columns'] = [];
  let totalRows = 0;
  let totalBytes = 0;
  // Per table, the largest share of a column's bytes still to rewrite: that share of its pages changes.
  const tableShares = new Map<string, number>();
  for (const [i, p] of plans.entries()) {
    const perVersion = await countVersions(pool, p);
    const { plaintext, malformed, nulls, state } = censuses[i];
    const todo = perVersion.filter((c) => c.version !== targetVersion);
    const rowsTodo = todo.reduce((s, c) => s + c.values, 0);
    const bytesTodo = todo.reduce((s, c) => s + c.bytes, 0);
    const bytesAll = perVersion.reduce((s, c) => s + c.bytes, 0);
    tableShares.set(p.table, Math.max(tableShares.get(p.table) ?? 0, bytesAll > 0 ? bytesTodo / bytesAll : 0));
    totalRows += rowsTodo;
    totalBytes += bytesTodo;
    columns.push({ column: p.name, storage: p.col.storage, state, rows: rowsTodo, bytes: bytesTodo, perVersion, plaintext, malformed, nulls });
  }
  const sample = await measureSample(pool, plans, { kind: 'rotate', toVersion: targetVersion, newDek: randomBytes(32), deks: [...deks.entries()] });
  return {
    ok: true,
    result: 'dry-run',
    resumableJob: resumable ? { id: resumable.id, fromVersion: resumable.from_version, toVersion: resumable.to_version, state: resumable.state } : null,
    primaryVersion: primary.version,
    newVersion: targetVersion,
    provider,
    columns,
    nonEnvelopes,
    rows: totalRows,
    bytes: totalBytes,
    headroom,
    backup,
    preflight,
    sample,
    estimatedSeconds: estimateSeconds(sample, totalRows, totalBytes),
    wal: await estimateWal(pool, tableShares, totalBytes),
  };
}

/**
 * Times the engine's own reader on up to 1000 values per column still to do: binary COPY out,
 * the transform (give it a throwaway target key), then COPY into a temporary staging table
 * inside a transaction that is rolled back. Nothing visible changes.
 */
export async function measureSample(pool: Pool, plans: ColumnPlan[], transform: Transform): Promise<{ rows: number; bytes: number; seconds: number }> {
  let rowsN = 0;
  let bytes = 0;
  const t0 = process.hrtime.bigint();
  const client = await pool.connect();
  let broken = false;
  const match = valueMatch(transform);
  try {
    for (const p of plans) {
      const pass: PassDescription = {
        plan: p,
        transform,
        batchSize: Number.MAX_SAFE_INTEGER,
        chunkBytes: Number.MAX_SAFE_INTEGER,
        watermark: null,
        pendingOnly: true,
        limitRows: SAMPLE_ROWS,
      };
      const rewriter = openTransform(pass.transform, p);
      const sampling: ValueRewriter = {
        read(raw, keys, tally) {
          rowsN++;
          bytes += raw.length;
          try {
            return rewriter.read(raw, keys, tally);
          } catch {
            return false; // the real run reports bad values; the sample only times
          }
        },
        writeNew: (b) => rewriter.writeNew(b),
        wipe: () => rewriter.wipe(),
      };
      broken = true;
      let chunk: EncodedChunk | undefined;
      for await (const c of readChunks(client, pass, new ChunkEncoder(pass, sampling))) chunk = c;
      broken = false;
      if (!chunk || chunk.count === 0) continue;
      await client.query('BEGIN');
      try {
        await client.query(createStageSql(p, match));
        await pipeline(Readable.from(chunk.pieces), client.query(copyFrom(copyIntoStageSql(p, match))));
      } finally {
        await client.query('ROLLBACK');
      }
    }
  } finally {
    client.release(broken);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { rows: rowsN, bytes, seconds: Math.round(seconds * 1000) / 1000 };
}
