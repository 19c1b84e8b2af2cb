/**
 * `rotate`: a new data key, then every registered column re-encrypted under it, online,
 * crash-safe and resumable. Core only: progress goes to `events`, the result is returned,
 * failures are typed errors (src/errors.ts).
 *
 *  1. Lock + preflight: the maintenance advisory lock; orphaned jobs marked; a resumable job
 *     (its target DEK still primary) is continued, never a second new DEK; otherwise disk
 *     headroom, a fresh backup (or take one) and the key provider are checked.
 *  2. Key first: local provider: a new master key is appended to the master key file, then
 *     in ONE transaction every DEK is re-wrapped under it, DEK N+1 becomes primary (the old
 *     primary active) and the job row is created. aws-kms: a new DEK from KMS, same transaction.
 *  3. Data: each column streamed in key order (src/core/rewrite/engine.ts), chunk writes
 *     and checkpoints in one transaction, `--workers` columns at a time, VACUUM along the way.
 *  4. Converge, then retire: re-count values not under N+1 and repeat passes until none
 *     remain (stale application instances); mark old DEKs without values `retired`.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Pool } from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { acquireAdvisoryLock, advisoryLockHolder, HeldLock, MAINTENANCE_LOCK, withTransaction } from '../../db/transaction';
import { requireInitialised } from '../../db/migrations';
import { IntegrityError, InterruptedError, OperationError, PreconditionError, ProviderError } from '../../errors';
import { createKeyProvider, ProviderOptions } from '../../kms';
import { LocalKeyProvider } from '../../kms/local';
import { newMasterKey, writeMasterKeyFile } from '../../kms/master-key-file';
import { KeyProvider } from '../../kms/provider';
import { takeBackup } from '../backup';
import { censusColumn, ColumnCensus, nonEnvelopeError, nonEnvelopeProblems } from '../census';
import { EncryptedColumn, listColumns } from '../columns';
import { describeFreeSpace, formatBytes, Headroom, measureHeadroom } from '../headroom';
import { createJob, describeLockHolder, finishJob, getJob, JobRecord, lastSucceededJob, listJobs, markOrphanedJobs, reopenJob } from '../jobs';
import { addPrimaryDataKey, KeyringRow, primaryOf, readKeyring, rewrapKeyring, unwrapKeyring } from '../keyring';
import { readSettings } from '../settings';
import { CopyBinaryParser, CopyRow } from './copy-binary';
import {
  ColumnPlan,
  countValues,
  countVersions,
  createStageSql,
  copyIntoStageSql,
  planColumn,
  readPageSql,
  tableBytes,
  VersionCount,
} from './plan';
import { ChunkEncoder } from './chunk-encoder';
import { ColumnState, PassContext, RateLimiter, rotateColumnPass, RotateEvents, saveColumnState, tablesWithoutVacuumRight, Vacuumer } from './engine';
import { formatDuration, sleep, testPause } from './util';

export type { RotateEvents, ColumnProgress } from './engine';

export const DEFAULT_BATCH_SIZE = 1000;
/** Chunks are bounded by bytes too, so large values never make one statement huge. */
export const DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024;
export const DEFAULT_MAX_BACKUP_AGE_MS = 24 * 3_600_000;
/** The application re-reads the keyring every 30 s by default; wait that long before the last count. */
export const DEFAULT_SETTLE_MS = 35_000;
const MAX_CONVERGENCE_ROUNDS = 10;

export interface RotateOptions {
  dryRun?: boolean;
  ifOlderThanMs?: number;
  workers?: number;
  batchSize?: number;
  chunkBytes?: number;
  maxRate?: number;
  maxBackupAgeMs?: number;
  skipBackupCheck?: boolean;
  backup?: boolean;
  backupDir?: string;
  dataDir?: string;
  /** The operator's figure of free bytes on the server's volume (--free-space), for a server this host cannot see. */
  freeSpaceBytes?: number;
  skipDiskCheck?: boolean;
  serverIsLocal?: boolean;
  settleMs?: number;
  /** VACUUM a table after this many bytes were rewritten in it (default: 10 % of it, 32 MB–1 GB). */
  vacuumEveryBytes?: number;
  providerOptions?: ProviderOptions;
  databaseUrl?: string;
  signal?: AbortSignal;
}

export interface ColumnSummary {
  column: string;
  storage: string;
  rows: number;
  bytes: number;
  skippedConcurrent: number;
  passes: number;
}

export interface RotateSummary {
  ok: true;
  result: 'rotated';
  jobId: number;
  resumed: boolean;
  fromVersion: number | null;
  toVersion: number;
  kekId: string;
  retiredVersions: number[];
  valuesBefore: Record<string, number>;
  valuesAfter: Record<string, number>;
  columns: ColumnSummary[];
  rows: number;
  bytes: number;
  skippedConcurrent: number;
  passes: number;
  vacuums: number;
  durationSeconds: number;
  /** Rows and bytes rewritten by this run (less than rows/bytes when it resumed a job). */
  rowsThisRun: number;
  bytesThisRun: number;
  /** This run's rates. */
  rowsPerSecond: number;
  megabytesPerSecond: number;
  backup: { jobId: number; file: string } | null;
  recommendation: string;
}

export interface NotDue {
  ok: true;
  result: 'not-due';
  primaryVersion: number;
  primaryAgeSeconds: number;
  ifOlderThanSeconds: number;
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
}

export type RotateResult = RotateSummary | NotDue | RotatePlan;

type Events = RotateEvents;

function addCounts(into: Record<string, number>, counts: VersionCount[]): void {
  for (const c of counts) {
    const k = c.version === null ? 'invalid' : String(c.version);
    into[k] = (into[k] ?? 0) + c.values;
  }
}

/** The latest unfinished rotate job whose target DEK is still the primary one. */
async function findResumable(pool: Pool, primary: KeyringRow): Promise<JobRecord | undefined> {
  const [latest] = await listJobs(pool, { kind: 'rotate', limit: 1 });
  if (!latest || latest.state === 'succeeded') return undefined;
  return latest.to_version === primary.version ? latest : undefined;
}

async function checkHeadroom(pool: Pool, opts: RotateOptions, events: Events): Promise<Headroom> {
  const h = await measureHeadroom(pool, opts);
  // TEST ONLY: ALATION_KEYS_TEST_FREE_BYTES overrides the free space seen, to exercise the check.
  const fake = process.env.ALATION_KEYS_TEST_FREE_BYTES;
  if (fake !== undefined && fake !== '') {
    h.freeBytes = Number(fake);
    h.freeBytesSource = 'data-directory';
    h.ok = h.freeBytes >= h.requiredBytes;
    h.reason = undefined;
  }
  if (opts.skipDiskCheck) {
    if (!h.ok) events.warn?.(`disk headroom check skipped (--skip-disk-check): ${describeHeadroom(h)}`);
    return h;
  }
  if (h.ok === null) {
    throw new PreconditionError(`disk headroom is unknown: ${h.reason}; a rotation needs ${formatBytes(h.requiredBytes)} free (1.5 × the database, ${formatBytes(h.databaseBytes)})`, {
      hint: "pass --free-space BYTES with the free space on the server's volume, or --data-dir with the server's data directory as mounted here",
    });
  }
  if (!h.ok) {
    throw new PreconditionError(
      `not enough disk headroom: ${describeFreeSpace(h)}, a rotation needs ${formatBytes(h.requiredBytes)} (1.5 × the database, ${formatBytes(h.databaseBytes)})`,
      { hint: 'free some space on the database volume, or pass --skip-disk-check to override knowingly' },
    );
  }
  return h;
}

function describeHeadroom(h: Headroom): string {
  return h.freeBytes === null
    ? `unknown (${h.reason}), needs ${formatBytes(h.requiredBytes)}`
    : `${describeFreeSpace(h)}, needs ${formatBytes(h.requiredBytes)} (1.5 × ${formatBytes(h.databaseBytes)})`;
}

async function checkBackup(pool: Pool, maxAgeMs: number): Promise<JobRecord> {
  const b = await lastSucceededJob(pool, 'backup');
  const age = b?.finished_at ? Date.now() - b.finished_at.getTime() : Infinity;
  if (!b || age > maxAgeMs) {
    throw new PreconditionError(
      b
        ? `the last successful backup (job ${b.id}, ${b.finished_at!.toISOString()}) is ${formatDuration(age)} old, older than --max-backup-age ${formatDuration(maxAgeMs)}`
        : 'no successful backup is recorded',
      { hint: 'run `alation-keys backup` first, or pass --backup to take one now, or --skip-backup-check to rotate without one' },
    );
  }
  return b;
}

async function openProvider(pool: Pool, opts: RotateOptions, rows: KeyringRow[]): Promise<{ provider: KeyProvider; deks: Map<number, Buffer> }> {
  const settings = await readSettings(pool);
  const provider = createKeyProvider(settings, opts.providerOptions ?? {});
  try {
    await provider.checkReachable();
  } catch (err) {
    if (err instanceof ProviderError || err instanceof IntegrityError) throw err;
    throw new ProviderError(`the key provider (${provider.kind}) cannot be reached: ${(err as Error).message}`, { cause: err });
  }
  const deks = await unwrapKeyring(rows, provider);
  return { provider, deks };
}

async function censusColumns(pool: Pool, cols: EncryptedColumn[]): Promise<ColumnCensus[]> {
  const out: ColumnCensus[] = [];
  for (const c of cols) out.push(await censusColumn(pool, c));
  return out;
}

async function planColumns(pool: Pool, cols: EncryptedColumn[]): Promise<ColumnPlan[]> {
  const plans: ColumnPlan[] = [];
  for (const [i, c] of cols.entries()) plans.push(await planColumn(pool, c, i));
  return plans;
}

function throwIfStopped(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new InterruptedError(`interrupted ${what}; nothing was changed`);
}

/** Runs a rotation, resumes one, reports that none is due, or (dry run) plans one. */
export async function rotate(pool: Pool, opts: RotateOptions = {}, events: Events = {}): Promise<RotateResult> {
  await requireInitialised(pool);
  const rows = await readKeyring(pool);
  const primary = primaryOf(rows);
  if (!primary) throw new PreconditionError('the keyring has no primary data key', { hint: 'run `alation-keys init`' });
  let resumable = await findResumable(pool, primary);

  if (opts.ifOlderThanMs !== undefined && !resumable) {
    const age = Date.now() - primary.created_at.getTime();
    if (age < opts.ifOlderThanMs) {
      return {
        ok: true,
        result: 'not-due',
        primaryVersion: primary.version,
        primaryAgeSeconds: Math.round(age / 1000),
        ifOlderThanSeconds: Math.round(opts.ifOlderThanMs / 1000),
      };
    }
  }
  if (opts.dryRun) return dryRun(pool, opts, rows, primary, resumable);

  const lock = await acquireAdvisoryLock(pool, (pid) => describeLockHolder(pool, pid), MAINTENANCE_LOCK);
  try {
    await markOrphanedJobs(pool, { holdingLock: true });
    const problems = nonEnvelopeProblems(await censusColumns(pool, await listColumns(pool)));
    if (problems.length > 0) throw nonEnvelopeError(problems, 'rotate refused');
    resumable = await findResumable(pool, primary);
    if (resumable) {
      events.info?.(`resuming job ${resumable.id} (v${resumable.from_version ?? '?'}→v${resumable.to_version}) from its checkpoints (it was ${resumable.state}${resumable.error ? `: ${resumable.error}` : ''})`);
    }
    const { provider, deks } = await openProvider(pool, opts, rows);
    events.info?.(`key provider ${provider.kind} reachable; ${deks.size} data key(s) unwrapped`);
    const headroom = await checkHeadroom(pool, opts, events);
    if (headroom.freeBytes !== null) events.info?.(`disk headroom ok: ${describeHeadroom(headroom)}`);
    throwIfStopped(opts.signal, 'during preflight');

    let backup: { jobId: number; file: string } | null = null;
    if (opts.backup) {
      events.info?.('taking a backup first (--backup)');
      const b = await takeBackup(pool, {
        outDir: opts.backupDir ?? process.env.ALATION_KEYS_BACKUP_DIR ?? '/var/backups/alation-keys',
        lockHeld: true,
        databaseUrl: opts.databaseUrl,
        masterKeyFile: opts.providerOptions?.masterKeyFile,
        signal: opts.signal,
      });
      backup = { jobId: b.jobId, file: b.file };
      events.info?.(`backup job ${b.jobId} written to ${b.file}`);
      throwIfStopped(opts.signal, 'after the backup');
    } else if (resumable) {
      events.info?.('backup check skipped: resuming a job that passed it when it started');
    } else if (opts.skipBackupCheck) {
      events.warn?.('backup check skipped (--skip-backup-check)');
    } else {
      const b = await checkBackup(pool, opts.maxBackupAgeMs ?? DEFAULT_MAX_BACKUP_AGE_MS);
      events.info?.(`recent backup: job ${b.id}, finished ${b.finished_at!.toISOString()}`);
    }

    const cols = await listColumns(pool);
    if (cols.length === 0) events.warn?.('no encrypted columns are registered: only the keys are rotated');
    const plans = await planColumns(pool, cols);
    throwIfStopped(opts.signal, 'during preflight');

    let job: JobRecord;
    let newDek: Buffer;
    let resumed = false;
    let kekId: string;
    if (resumable) {
      job = resumable;
      resumed = true;
      const dek = deks.get(job.to_version!);
      if (!dek) throw new IntegrityError(`data key v${job.to_version} of job ${job.id} could not be unwrapped`, { version: job.to_version! });
      newDek = dek;
      await reopenJob(pool, job.id);
      kekId = primary.kek_id;
    } else {
      const created = await createKeyAndJob(pool, provider, plans, events);
      job = created.job;
      newDek = created.dek;
      deks.set(job.to_version!, newDek);
      kekId = created.kekId;
    }
    return await runJob(pool, opts, events, { job, newDek, deks, plans, resumed, kekId, lock, backup });
  } finally {
    await lock.release();
  }
}

/** Step 2: the new key and the job row, committed before any value is touched. */
async function createKeyAndJob(
  pool: Pool,
  provider: KeyProvider,
  plans: ColumnPlan[],
  events: Events,
): Promise<{ job: JobRecord; dek: Buffer; kekId: string }> {
  const columns: Record<string, ColumnState> = {};
  let rowsTotal = 0;
  for (const p of plans) {
    // Counted without reading values (per-version counts come from the first pass itself).
    const { values: rows, bytes } = await countValues(pool, p);
    rowsTotal += rows;
    columns[p.name] = { watermark: null, pass: 1, done: false, rows, bytes, rowsDone: 0, bytesDone: 0, skipped: 0, before: {} };
  }
  let target = provider;
  let newMasterKeyId: string | undefined;
  if (provider instanceof LocalKeyProvider) {
    // The new master key goes into the file BEFORE the transaction: a crash in between
    // leaves only an unused key in the file, never a DEK wrapped under a key nobody has.
    provider.reload();
    const file = provider.masterKeyFile;
    const mk = newMasterKey();
    const next = { path: file.path, keys: [...file.keys, mk] };
    writeMasterKeyFile(next);
    target = new LocalKeyProvider(file.path, next);
    newMasterKeyId = mk.id;
  }
  const result = await withTransaction(pool, async (tx) => {
    const rewrapped = target === provider ? 0 : await rewrapKeyring(tx, target, target);
    const added = await addPrimaryDataKey(tx, target);
    const job = await createJob(tx, {
      kind: 'rotate',
      fromVersion: added.previousPrimary,
      toVersion: added.version,
      rowsTotal,
      detail: { columns, kekId: target.currentKekId(), masterKeyAdded: newMasterKeyId ?? null, rewrapped },
    });
    return { job, dek: added.dek, rewrapped };
  });
  events.info?.(
    `job ${result.job.id}: data key v${result.job.to_version} is now primary (v${result.job.from_version ?? '-'} active)` +
      (newMasterKeyId ? `; new master key ${newMasterKeyId}, ${result.rewrapped} data key(s) re-wrapped under it` : ''),
  );
  return { job: result.job, dek: result.dek, kekId: target.currentKekId() };
}

interface JobRun {
  job: JobRecord;
  newDek: Buffer;
  deks: Map<number, Buffer>;
  plans: ColumnPlan[];
  resumed: boolean;
  kekId: string;
  lock: HeldLock;
  backup: { jobId: number; file: string } | null;
}

function vacuumThreshold(opts: RotateOptions, sizes: Map<string, number>): (table: string) => number {
  return (table) => {
    if (opts.vacuumEveryBytes) return opts.vacuumEveryBytes;
    const size = sizes.get(table) ?? 0;
    return Math.min(Math.max(size * 0.1, 32 * 1024 * 1024), 1024 * 1024 * 1024);
  };
}

async function runJob(pool: Pool, opts: RotateOptions, events: Events, r: JobRun): Promise<RotateSummary> {
  const { job, plans } = r;
  const toVersion = job.to_version!;
  const started = Date.now();
  const stopper = new AbortController();
  const onSignal = () => stopper.abort();
  if (opts.signal) {
    if (opts.signal.aborted) stopper.abort();
    else opts.signal.addEventListener('abort', onSignal, { once: true });
  }
  const detail = (await getJob(pool, job.id))!.detail ?? {};
  const states = new Map<string, ColumnState>();
  for (const p of plans) {
    const saved = detail.columns?.[p.name] as Partial<ColumnState> | undefined;
    states.set(p.name, {
      watermark: saved?.watermark ?? null,
      pass: saved?.pass ?? 1,
      done: saved?.done ?? false,
      rows: saved?.rows ?? 0,
      bytes: saved?.bytes ?? 0,
      rowsDone: saved?.rowsDone ?? 0,
      bytesDone: saved?.bytesDone ?? 0,
      skipped: saved?.skipped ?? 0,
      before: saved?.before ?? {},
    });
  }
  const sizes = new Map<string, number>();
  // What earlier runs of this job already did: the rates in the summary are this run's.
  const rowsAtStart = [...states.values()].reduce((a, st) => a + st.rowsDone, 0);
  const bytesAtStart = [...states.values()].reduce((a, st) => a + st.bytesDone, 0);
  for (const p of plans) if (!sizes.has(p.table)) sizes.set(p.table, await tableBytes(pool, p));
  const unvacuumable = await tablesWithoutVacuumRight(pool, [...sizes.keys()]);
  if (unvacuumable.length > 0) {
    events.warn?.(
      `not allowed to VACUUM ${unvacuumable.join(', ')} (run rotate as the table owner): the space of rewritten rows is left to autovacuum, so these tables may grow by up to their own size during the rotation`,
    );
  }
  const vacuumer = new Vacuumer(pool, vacuumThreshold(opts, sizes), events, new Set(unvacuumable));
  const batchSize = Math.max(1, Math.min(opts.batchSize ?? DEFAULT_BATCH_SIZE, opts.maxRate ? Math.ceil(opts.maxRate) : Infinity));
  const ctx: PassContext = {
    pool,
    jobId: job.id,
    toVersion,
    newDek: r.newDek,
    deks: r.deks,
    batchSize,
    chunkBytes: opts.chunkBytes ?? (Number(process.env.ALATION_KEYS_ROTATE_CHUNK_BYTES) || DEFAULT_CHUNK_BYTES),
    stop: stopper.signal,
    limiter: new RateLimiter(opts.maxRate),
    vacuumer,
    events,
  };
  const workers = Math.max(1, opts.workers ?? 1);
  let passes = 1;

  const runPass = async (todo: ColumnPlan[]): Promise<void> => {
    const queue = [...todo];
    let failure: unknown;
    let finishedColumns = 0;
    const worker = async () => {
      for (;;) {
        if (stopper.signal.aborted) return;
        const p = queue.shift();
        if (!p) return;
        try {
          await rotateColumnPass(ctx, p, states.get(p.name)!);
        } catch (err) {
          if (!failure) failure = err;
          stopper.abort();
          return;
        }
        finishedColumns++;
        if (queue.length > 0 && finishedColumns === 1) await testPause('between-columns', stopper.signal);
      }
    };
    await Promise.all(Array.from({ length: Math.min(workers, Math.max(todo.length, 1)) }, worker));
    await vacuumer.idle();
    if (failure) throw failure;
  };

  try {
    await testPause('after-key', stopper.signal);
    if (stopper.signal.aborted) throw interrupted(job.id);
    // First pass (or what a resumed job has left of it).
    await runPass(plans.filter((p) => !states.get(p.name)!.done));
    if (stopper.signal.aborted) throw interrupted(job.id);
    await testPause('convergence', stopper.signal);
    if (stopper.signal.aborted) throw interrupted(job.id);

    // Converge: values written meanwhile by instances that had not loaded DEK N+1 yet.
    const settleMs = opts.settleMs ?? DEFAULT_SETTLE_MS;
    const publishedAt = job.started_at.getTime();
    let rounds = 0;
    let valuesAfter: Record<string, number> = {};
    for (;;) {
      const remaining = new Map<ColumnPlan, number>();
      valuesAfter = {};
      for (const p of plans) {
        const counts = await countVersions(pool, p);
        addCounts(valuesAfter, counts);
        const n = counts.filter((c) => c.version !== toVersion).reduce((a, c) => a + c.values, 0);
        if (n > 0) remaining.set(p, n);
      }
      const total = [...remaining.values()].reduce((a, b) => a + b, 0);
      const wait = publishedAt + settleMs - Date.now();
      if (total === 0) {
        if (wait <= 0) break;
        events.info?.(`every value is under v${toVersion}; waiting ${Math.ceil(wait / 1000)}s for application instances to load it before the last count`);
        await sleep(wait, stopper.signal);
        if (stopper.signal.aborted) throw interrupted(job.id);
        continue;
      }
      rounds++;
      if (rounds > MAX_CONVERGENCE_ROUNDS) {
        throw new OperationError(
          `${total} value(s) are still being written under older data keys after ${MAX_CONVERGENCE_ROUNDS} extra passes; job ${job.id} stays resumable`,
          { hint: `restart application instances that still encrypt with an old key (they should load v${toVersion} within 30 s), then run \`alation-keys rotate\` again` },
        );
      }
      passes++;
      events.info?.(
        `pass ${passes}: ${total} value(s) still under older keys (${[...remaining].map(([p, n]) => `${p.name}: ${n}`).join(', ')}), written by instances that had not loaded v${toVersion} yet`,
      );
      await sleep(Math.min(1000 * rounds, 5000), stopper.signal);
      if (stopper.signal.aborted) throw interrupted(job.id);
      for (const p of remaining.keys()) {
        const s = states.get(p.name)!;
        Object.assign(s, { watermark: null, pass: passes, done: false, rows: s.rows + remaining.get(p)! });
        await saveColumnState(pool, job.id, p.name, s);
      }
      await runPass([...remaining.keys()]);
      if (stopper.signal.aborted) throw interrupted(job.id);
    }

    // Retire: old DEKs no value uses any more (kept for old backups, never destroyed here).
    const retired = await withTransaction(pool, async (tx) => {
      const rr = await tx.query<{ version: number }>(
        `UPDATE alation_keys.keyring SET state = 'retired', retired_at = now()
          WHERE state = 'active' AND NOT (version = ANY($1::int[])) RETURNING version`,
        [Object.keys(valuesAfter).filter((k) => k !== 'invalid').map(Number)],
      );
      return rr.rows.map((x) => x.version).sort((a, b) => a - b);
    });
    const final = (await getJob(pool, job.id))!;
    const durationSeconds = (Date.now() - started) / 1000;
    const columns: ColumnSummary[] = plans.map((p) => {
      const s = states.get(p.name)!;
      return { column: p.name, storage: p.col.storage, rows: s.rowsDone, bytes: s.bytesDone, skippedConcurrent: s.skipped, passes: s.pass };
    });
    const rowsThisRun = columns.reduce((a, c) => a + c.rows, 0) - rowsAtStart;
    const bytesThisRun = columns.reduce((a, c) => a + c.bytes, 0) - bytesAtStart;
    const summary: RotateSummary = {
      ok: true,
      result: 'rotated',
      jobId: job.id,
      resumed: r.resumed,
      fromVersion: job.from_version,
      toVersion,
      kekId: r.kekId,
      retiredVersions: retired,
      valuesBefore: beforeOf(plans.map((p) => states.get(p.name)!)),
      valuesAfter,
      columns,
      rows: final.rows_done,
      bytes: final.bytes_done,
      skippedConcurrent: columns.reduce((a, c) => a + c.skippedConcurrent, 0),
      passes,
      vacuums: vacuumer.vacuums,
      durationSeconds: Math.round(durationSeconds * 10) / 10,
      rowsThisRun,
      bytesThisRun,
      rowsPerSecond: Math.round(rowsThisRun / Math.max(durationSeconds, 0.001)),
      megabytesPerSecond: Math.round((bytesThisRun / 1048576 / Math.max(durationSeconds, 0.001)) * 10) / 10,
      backup: r.backup,
      recommendation: 'take a backup now (`alation-keys backup`): backups made before this rotation need the old keys, which stay in the keyring as retired',
    };
    await finishJob(pool, job.id, 'succeeded', undefined, { summary });
    return summary;
  } catch (err) {
    const state = err instanceof InterruptedError ? 'interrupted' : 'failed';
    await vacuumer.idle().catch(() => undefined);
    await finishJob(pool, job.id, state, (err as Error).message).catch(() => undefined);
    throw err;
  } finally {
    opts.signal?.removeEventListener('abort', onSignal);
  }
}

/** Values per DEK version when the job started, as its first pass read them. */
function beforeOf(states: ColumnState[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of states) for (const [v, n] of Object.entries(s.before ?? {})) out[v] = (out[v] ?? 0) + n;
  return out;
}

function interrupted(jobId: number): InterruptedError {
  return new InterruptedError(`interrupted: job ${jobId} checkpointed and marked interrupted`, {
    hint: 'run `alation-keys rotate` again to resume it from its checkpoints',
  });
}

/** --dry-run: the plan and a measured sample; changes nothing and takes no lock and no key. */
async function dryRun(pool: Pool, opts: RotateOptions, rows: KeyringRow[], primary: KeyringRow, resumable: JobRecord | undefined): Promise<RotatePlan> {
  const preflight: string[] = [];
  const { provider, deks } = await openProvider(pool, opts, rows);
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
  if (!resumable && !opts.skipBackupCheck && !opts.backup) {
    try {
      await checkBackup(pool, opts.maxBackupAgeMs ?? DEFAULT_MAX_BACKUP_AGE_MS);
    } catch (err) {
      preflight.push((err as Error).message);
    }
  }
  const cols = await listColumns(pool);
  const plans = await planColumns(pool, cols);
  const censuses = await censusColumns(pool, cols);
  const nonEnvelopes = nonEnvelopeProblems(censuses);
  for (const x of nonEnvelopes) preflight.push(`values that are not envelopes in ${x}`);
  const targetVersion = resumable?.to_version ?? Math.max(...rows.map((r) => r.version)) + 1;
  const columns: RotatePlan['columns'] = [];
  let totalRows = 0;
  let totalBytes = 0;
  for (const [i, p] of plans.entries()) {
    const perVersion = await countVersions(pool, p);
    const { plaintext, malformed, nulls, state } = censuses[i];
    const todo = perVersion.filter((c) => c.version !== targetVersion);
    const rowsTodo = todo.reduce((s, c) => s + c.values, 0);
    const bytesTodo = todo.reduce((s, c) => s + c.bytes, 0);
    totalRows += rowsTodo;
    totalBytes += bytesTodo;
    columns.push({ column: p.name, storage: p.col.storage, state, rows: rowsTodo, bytes: bytesTodo, perVersion, plaintext, malformed, nulls });
  }
  const sample = await measureSample(pool, plans, deks, targetVersion);
  // The sample times reading, crypto and staging; the UPDATE of the real run costs about as
  // much again as staging plus reading (measured by bench/rotate-bench.ts), hence × 2.
  const estimatedSeconds = sample.bytes > 0 ? Math.round((sample.seconds * 2 * totalBytes) / sample.bytes) : totalRows === 0 ? 0 : null;
  return {
    ok: true,
    result: 'dry-run',
    resumableJob: resumable ? { id: resumable.id, fromVersion: resumable.from_version, toVersion: resumable.to_version, state: resumable.state } : null,
    primaryVersion: primary.version,
    newVersion: targetVersion,
    provider: provider.kind,
    columns,
    nonEnvelopes,
    rows: totalRows,
    bytes: totalBytes,
    headroom,
    backup: b?.finished_at ? { jobId: b.id, finishedAt: b.finished_at.toISOString(), ageHours: Math.round((Date.now() - b.finished_at.getTime()) / 360_000) / 10 } : null,
    preflight,
    sample,
    estimatedSeconds,
  };
}

/**
 * Times the pipeline on up to 1000 values per column: binary COPY out, decrypt, encrypt under
 * a throwaway key, COPY into a temporary staging table inside a transaction that is rolled
 * back. Nothing visible changes.
 */
async function measureSample(pool: Pool, plans: ColumnPlan[], deks: Map<number, Buffer>, version: number) {
  const throwaway = randomBytes(32);
  let rowsN = 0;
  let bytes = 0;
  const t0 = process.hrtime.bigint();
  const client = await pool.connect();
  let broken = false;
  try {
    for (const p of plans) {
      const sql = readPageSql(p, version, null, 1000, (s) => client.escapeLiteral(s));
      const parser = new CopyBinaryParser();
      const src = client.query(copyTo(sql));
      src.on('error', (e) => parser.destroy(e));
      src.pipe(parser);
      // The real re-encryption with a throwaway key; nothing of it is kept.
      const encoder = new ChunkEncoder({
        plan: p,
        toVersion: version,
        newDek: throwaway,
        deks: [...deks.entries()],
        batchSize: Number.MAX_SAFE_INTEGER,
        chunkBytes: Number.MAX_SAFE_INTEGER,
        watermark: null,
        filter: false,
      });
      broken = true;
      for await (const f of parser as AsyncIterable<CopyRow>) {
        try {
          encoder.add(f);
        } catch {
          /* the real run reports bad values; the sample only times */
        }
        rowsN++;
        bytes += f[p.keyColumns.length + 1]!.length;
      }
      broken = false;
      const chunk = encoder.take();
      encoder.wipe();
      if (!chunk || chunk.count === 0) continue;
      await client.query('BEGIN');
      try {
        await client.query(createStageSql(p));
        await pipeline(Readable.from(chunk.pieces), client.query(copyFrom(copyIntoStageSql(p))));
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
