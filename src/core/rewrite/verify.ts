/**
 * `verify`: the read half of the rewrite engine. Every value of the registered columns (or the
 * ones named) is read in key order with binary COPY in a reader thread per column, opened there
 * with the data key it names (verify-transform.ts), and counted per column and version; each
 * value that does not decrypt is listed with its row key and why (undecryptable.ts). Nothing is
 * written but the job record. Then unregistered text/bytea columns are looked at, bounded, for
 * values that look like envelopes (envelope-scan.ts).
 *
 * Runs under the maintenance lock (one job at a time, as rotate and backup), recorded as a job
 * of kind `verify` with its counts: `succeeded` when every value verified and no envelope was
 * found elsewhere, else `failed`. The report is returned; exit codes are the CLI's.
 */
import { Pool } from 'pg';
import { requireInitialised } from '../../db/migrations';
import { requireTablePrivileges } from '../../db/privileges';
import { InterruptedError } from '../../errors';
import { ProviderOptions } from '../../kms';
import { EncryptedColumn, listColumns, requireRegisteredColumns } from '../columns';
import { DEFAULT_SCAN_BOUND, scanUnregisteredColumns, UnregisteredScan } from '../envelope-scan';
import { createJob, finishJob, recordColumnCheckpoint } from '../jobs';
import { linkedStopper, underMaintenanceLock } from './job-run';
import { readKeyring } from '../keyring';
import { noPause, TestPause } from '../test-hooks';
import { ColumnProgress, RewriteEvents } from './engine';
import { ColumnPlan, countValues } from './plan';
import { openProvider, planColumns } from './preflight';
import { ReaderThread } from './reader-thread';
import { UndecryptableReason, UndecryptableRow } from './undecryptable';
import { PLAINTEXT_TALLY, VerifyTransform } from './verify-transform';
import { count as countOf } from '../../plural';

/** Values read per chunk the reader thread posts (the unit of progress and of interruption). */
const VERIFY_ROWS_PER_CHUNK = 2000;
/** Failures kept in the job record (all of them are in the report). */
const FAILURES_IN_JOB = 100;

export interface VerifyOptions {
  /** Column names (SCHEMA.TABLE.COLUMN); default every registered column. Naming columns skips the unregistered scan. */
  columns?: string[];
  /** Columns verified at once, each in a reader thread of its own. */
  workers?: number;
  /** Most values looked at per unregistered column; 0 skips that scan. */
  scanBound?: number;
  providerOptions?: ProviderOptions;
  /** Who runs it, for the job record (the CLI's OS user and host). */
  actor?: string;
  /** TEST ONLY: holds the command at `job-start` (test-hooks.ts). */
  pause?: TestPause;
  signal?: AbortSignal;
}

export interface VerifyFailure {
  column: string;
  /** The row's walk key, column by column, as text. */
  key: Record<string, string>;
  reason: UndecryptableReason;
  /** The data key version its header names, when it names one. */
  version: number | null;
}

export interface ColumnVerification {
  column: string;
  state: string;
  storage: string;
  /** Non-NULL values read. */
  values: number;
  bytes: number;
  verified: number;
  /** Values that are not envelopes where the state allows them (`encrypting`, `decrypting`). */
  plaintext: number;
  failed: number;
  /** Per DEK version: values that verified and that failed ("-": failures that name no version). */
  versions: Record<string, { verified: number; failed: number }>;
  failedByReason: Partial<Record<UndecryptableReason, number>>;
}

export interface VerifyReport {
  /** Every value verified and no envelope was found outside the registered columns. */
  ok: boolean;
  jobId: number;
  columns: ColumnVerification[];
  /** Every value that failed, in column and key order. */
  failures: VerifyFailure[];
  values: number;
  verified: number;
  plaintext: number;
  failed: number;
  /** The look at unregistered columns (null when columns were named or the bound is 0). */
  unregistered: UnregisteredScan | null;
  threads: number;
  durationSeconds: number;
  valuesPerSecond: number;
  megabytesPerSecond: number;
}

/** The columns to verify: the named ones (each must be registered), else every registered one. */
async function chooseColumns(pool: Pool, names: string[] | undefined): Promise<EncryptedColumn[]> {
  if (!names || names.length === 0) return listColumns(pool);
  return requireRegisteredColumns(pool, names, () => 'see `alation-keys columns list`');
}

function emptyVerification(p: ColumnPlan): ColumnVerification {
  return { column: p.name, state: p.col.state, storage: p.col.storage, values: 0, bytes: 0, verified: 0, plaintext: 0, failed: 0, versions: {}, failedByReason: {} };
}

/** Adds one chunk's tally and failures to the column's counts. */
function count(v: ColumnVerification, tally: Record<string, number>, failed: UndecryptableRow[]): void {
  for (const [k, n] of Object.entries(tally)) {
    if (k === PLAINTEXT_TALLY) {
      v.plaintext += n;
      continue;
    }
    (v.versions[k] ??= { verified: 0, failed: 0 }).verified += n;
    v.verified += n;
  }
  for (const f of failed) {
    (v.versions[f.version === null ? '-' : String(f.version)] ??= { verified: 0, failed: 0 }).failed++;
    v.failedByReason[f.reason] = (v.failedByReason[f.reason] ?? 0) + 1;
    v.failed++;
  }
}

/** Reads and opens every value of one column in a reader thread. */
async function verifyColumn(
  pool: Pool,
  reader: ReaderThread,
  p: ColumnPlan,
  total: number,
  keys: Pick<VerifyTransform, 'deks' | 'destroyed'>,
  stop: AbortSignal,
  events: RewriteEvents,
  failures: VerifyFailure[],
): Promise<ColumnVerification> {
  const v = emptyVerification(p);
  const started = Date.now();
  const progress = (): ColumnProgress => {
    const secs = Math.max((Date.now() - started) / 1000, 0.001);
    const rate = v.values / secs;
    return {
      column: p.name,
      pass: 1,
      rowsTotal: total,
      rowsDone: v.values,
      bytesDone: v.bytes,
      skipped: 0,
      rowsPerSecond: rate,
      bytesPerSecond: v.bytes / secs,
      etaSeconds: rate > 0 ? Math.max(total - v.values, 0) / rate : null,
    };
  };
  events.columnStart?.(progress());
  const transform: VerifyTransform = { kind: 'verify', ...keys, plaintextAllowed: p.col.state !== 'encrypted' };
  const chunks = reader.chunks({
    plan: p,
    transform,
    batchSize: VERIFY_ROWS_PER_CHUNK,
    chunkBytes: Number.MAX_SAFE_INTEGER,
    watermark: null,
    pendingOnly: false,
    skipUndecryptable: true,
    readRowsPerChunk: VERIFY_ROWS_PER_CHUNK,
  });
  try {
    for await (const chunk of chunks) {
      v.values += chunk.rows;
      v.bytes += chunk.bytesRead;
      count(v, chunk.versions, chunk.undecryptable);
      for (const f of chunk.undecryptable) {
        const key: Record<string, string> = {};
        p.keyColumns.forEach((k, i) => (key[k] = f.key[i]));
        failures.push({ column: p.name, key, reason: f.reason, version: f.version });
      }
      events.progress?.(progress());
      if (stop.aborted) break;
    }
  } finally {
    await chunks.return(undefined);
  }
  if (!stop.aborted) events.columnDone?.(progress());
  return v;
}

/** Verifies the columns, `workers` at a time; the first error stops the others after their chunk. */
async function verifyColumns(
  pool: Pool,
  plans: ColumnPlan[],
  totals: ReadonlyMap<string, number>,
  keys: Pick<VerifyTransform, 'deks' | 'destroyed'>,
  readers: ReaderThread[],
  stop: AbortController,
  events: RewriteEvents,
  jobId: number,
): Promise<{ columns: ColumnVerification[]; failures: VerifyFailure[] }> {
  const queue = [...plans];
  const results = new Map<string, ColumnVerification>();
  const failuresByColumn = new Map<string, VerifyFailure[]>();
  let failure: unknown;
  // One reader thread per worker, column after column.
  const worker = async (reader: ReaderThread) => {
    try {
      for (let p = queue.shift(); p && !stop.signal.aborted; p = queue.shift()) {
        const failures: VerifyFailure[] = [];
        try {
          const v = await verifyColumn(pool, reader, p, totals.get(p.name) ?? 0, keys, stop.signal, events, failures);
          results.set(p.name, v);
          failuresByColumn.set(p.name, failures);
          const { column: _c, ...counts } = v;
          await recordColumnCheckpoint(pool, jobId, p.name, { ...counts, done: !stop.signal.aborted }, v.values, v.bytes);
        } catch (err) {
          failure ??= err;
          stop.abort();
        }
      }
    } finally {
      await reader.close();
    }
  };
  await Promise.all(readers.map(worker));
  if (failure) throw failure;
  return {
    columns: plans.filter((p) => results.has(p.name)).map((p) => results.get(p.name)!),
    failures: plans.flatMap((p) => failuresByColumn.get(p.name) ?? []),
  };
}

function summaryOf(columns: ColumnVerification[]) {
  const sum = (f: 'values' | 'verified' | 'plaintext' | 'failed' | 'bytes') => columns.reduce((a, c) => a + c[f], 0);
  const failedByReason: Partial<Record<UndecryptableReason, number>> = {};
  for (const c of columns) for (const [r, n] of Object.entries(c.failedByReason)) failedByReason[r as UndecryptableReason] = (failedByReason[r as UndecryptableReason] ?? 0) + n;
  return { values: sum('values'), bytes: sum('bytes'), verified: sum('verified'), plaintext: sum('plaintext'), failed: sum('failed'), failedByReason };
}

/** Runs a verification; returns the report (ok false when anything failed). */
export async function verify(pool: Pool, opts: VerifyOptions = {}, events: RewriteEvents = {}): Promise<VerifyReport> {
  await requireInitialised(pool);
  const cols = await chooseColumns(pool, opts.columns);
  const plans = await planColumns(pool, cols);
  await requireTablePrivileges(
    pool,
    cols.map((c) => ({ schema: c.table_schema, table: c.table_name })),
    ['SELECT'],
    'to read and decrypt the registered columns',
  );
  const rows = await readKeyring(pool);
  const { provider, deks } = await openProvider(pool, opts.providerOptions ?? {}, rows);
  const keys = { deks: [...deks.entries()] as Array<[number, Uint8Array]>, destroyed: rows.filter((r) => r.state === 'destroyed').map((r) => r.version) };
  // One reader thread per worker, no more than there are columns.
  const threads = Math.min(Math.max(1, opts.workers ?? 1), Math.max(plans.length, 1));
  const { stopper: stop, detach } = linkedStopper(opts.signal);
  let readers: ReaderThread[] = [];
  try {
    return await underMaintenanceLock(pool, async () => {
      const started = Date.now();
      // The reader threads load and connect while the columns are counted.
      readers = Array.from({ length: threads }, () => new ReaderThread(pool).warm());
      const totals = new Map<string, number>();
      for (const p of plans) totals.set(p.name, (await countValues(pool, p)).values);
      const total = [...totals.values()].reduce((a, b) => a + b, 0);
      const job = await createJob(pool, { kind: 'verify', rowsTotal: total, actor: opts.actor, detail: { columns: {} } });
      try {
        await (opts.pause ?? noPause)('job-start', stop.signal);
        events.info?.(`job ${job.id}: verifying ${countOf(plans.length, 'column')}, ${countOf(total, 'value', 'values', (n) => n.toLocaleString('en-US'))}, ${countOf(threads, 'reader thread')}`);
        const { columns, failures } = await verifyColumns(pool, plans, totals, keys, readers, stop, events, job.id);
        if (stop.signal.aborted) throw new InterruptedError(`interrupted: verify job ${job.id} stopped before it read every value`, { hint: 'run `alation-keys verify` again' });
        const scanBound = opts.scanBound ?? DEFAULT_SCAN_BOUND;
        const unregistered = opts.columns?.length || scanBound === 0 ? null : await scanUnregisteredColumns(pool, scanBound, stop.signal);
        if (stop.signal.aborted) throw new InterruptedError(`interrupted: verify job ${job.id} stopped while looking at unregistered columns`, { hint: 'run `alation-keys verify` again' });
        const s = summaryOf(columns);
        const secs = Math.max((Date.now() - started) / 1000, 0.001);
        const report: VerifyReport = {
          ok: s.failed === 0 && (unregistered?.found.length ?? 0) === 0,
          jobId: job.id,
          columns,
          failures,
          values: s.values,
          verified: s.verified,
          plaintext: s.plaintext,
          failed: s.failed,
          unregistered,
          threads,
          durationSeconds: Math.round(secs * 10) / 10,
          valuesPerSecond: Math.round(s.values / secs),
          megabytesPerSecond: Math.round((s.bytes / 1048576 / secs) * 10) / 10,
        };
        const found = unregistered?.found.map((f) => `${f.column}: ${f.envelopes}`) ?? [];
        const problems = [
          ...(s.failed > 0 ? [`${countOf(s.failed, 'value')} failed to decrypt (${Object.entries(s.failedByReason).map(([r, n]) => `${r}: ${n}`).join(', ')})`] : []),
          ...(found.length > 0 ? [`envelopes in unregistered columns (${found.join(', ')})`] : []),
        ];
        await finishJob(pool, job.id, report.ok ? 'succeeded' : 'failed', problems.length ? problems.join('; ') : undefined, {
          summary: { values: s.values, verified: s.verified, plaintext: s.plaintext, failed: s.failed, failedByReason: s.failedByReason, durationSeconds: report.durationSeconds },
          failures: failures.slice(0, FAILURES_IN_JOB),
          failuresOmitted: Math.max(failures.length - FAILURES_IN_JOB, 0),
          unregistered,
        });
        return report;
      } catch (err) {
        await finishJob(pool, job.id, err instanceof InterruptedError ? 'interrupted' : 'failed', (err as Error).message).catch(() => undefined);
        throw err;
      }
    });
  } finally {
    detach();
    await Promise.all(readers.map((r) => r.close()));
    // Key material is not left in memory longer than the job needs it (also when the lock was refused).
    for (const k of deks.values()) k.fill(0);
    provider.dispose();
  }
}
