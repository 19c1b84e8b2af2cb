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
 *  3. Data: the rewrite engine (engine.ts) with the rotate transform (rotate-transform.ts):
 *     each column streamed in key order, chunk writes and checkpoints in one transaction,
 *     `--workers` columns at a time, VACUUM along the way.
 *  4. Converge (convergence.ts), then retire: re-count values not under N+1 and repeat passes
 *     until none remain (stale application instances); mark old DEKs without values `retired`.
 */
import { Pool } from 'pg';
import { acquireAdvisoryLock, HeldLock, MAINTENANCE_LOCK, withTransaction } from '../../db/transaction';
import { requireInitialised } from '../../db/migrations';
import { requireTablePrivileges, requireTemporaryTables } from '../../db/privileges';
import { IntegrityError, InterruptedError, OperationError, PreconditionError, UsageError } from '../../errors';
import { ProviderOptions } from '../../kms';
import { KeyProvider } from '../../kms/provider';
import { takeBackup } from '../backup';
import { convertingColumns, convertingError, nonEnvelopeError, nonEnvelopeProblems } from '../census';
import { listColumns } from '../columns';
import { createJob, describeLockHolder, finishJob, getJob, JobActorOption, JobRecord, markOrphanedJobs, reopenJob } from '../jobs';
import { addPrimaryDataKey, liveKekIds, primaryOf, readKeyring, retireUnusedDataKeys, rewrapKeyring } from '../keyring';
import { noPause, TestPause } from '../test-hooks';
import { RewriteHooks } from '../../kms/master-key-file';
import { ColumnState, initialState, nextPass, savedState, saveState, valuesBefore } from './checkpoint';
import { converge, Convergence } from './convergence';
import { dryRun, RotatePlan } from './dry-run';
import { RewriteContext, rewriteColumns, RewriteEvents } from './engine';
import { ColumnPlan, countValues, countVersions, notUnderSql, tableBytes, VersionCount } from './plan';
import { checkBackup, checkHeadroom, DEFAULT_MAX_BACKUP_AGE_MS, describeHeadroom, findResumable, openProvider, planColumns, throwIfStopped, censusColumns } from './preflight';
import { StandbyGate, StandbyGateOptions, ThrottledTime } from './standby-gate';
import { allPacers, RateLimiter } from './throttle';
import { countPendingExceptRecorded, stillPending, UndecryptableReason } from './undecryptable';
import { tablesWithoutVacuumRight, Vacuumer } from './vacuum';
import { count, noun, verb } from '../../plural';

export type { ColumnProgress, RewriteEvents as RotateEvents } from './engine';
export type { RotatePlan } from './dry-run';

export const DEFAULT_BATCH_SIZE = 1000;
/** Chunks are bounded by bytes too, so large values never make one statement huge. */
export const DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024;
/** The application re-reads the keyring every 30 s by default; wait that long before the last count. */
export const DEFAULT_SETTLE_MS = 35_000;

export interface RotateOptions extends JobActorOption, StandbyGateOptions {
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
  /** The pg_dump a --backup uses (else found on the environment's PATH or per-version directories). */
  pgDump?: string;
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
  /** The environment a --backup's pg_dump runs with (PATH, libpq's PG* variables): the caller's. */
  env?: NodeJS.ProcessEnv;
  /**
   * Rewrite every value that decrypts, leave each that does not untouched and record its row
   * in the job (undecryptable.ts); the data keys they name stay active. Without it the first
   * such value stops the rotation.
   */
  skipUndecryptable?: boolean;
  signal?: AbortSignal;
  /** TEST ONLY: holds the rotation at named points (src/core/test-hooks.ts). */
  pause?: TestPause;
  /** TEST ONLY: hooks around the master key file's rewrite (test-hooks.ts). */
  masterKeyRewriteHooks?: RewriteHooks;
  /** TEST ONLY: the free space the disk checks see (test-hooks.ts). */
  testFreeBytes?: number;
}

export interface ColumnSummary {
  column: string;
  storage: string;
  rows: number;
  bytes: number;
  skippedConcurrent: number;
  passes: number;
}

/** A value `rotate --skip-undecryptable` left untouched. */
export interface UndecryptableValueReport {
  column: string;
  key: Record<string, string>;
  reason: UndecryptableReason;
  version: number | null;
}

export interface RotateSummary {
  /** False when values that do not decrypt were left untouched (--skip-undecryptable): the job is `failed`. */
  ok: boolean;
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
  /** This run's time from the start of the rewrite to the end: the passes, the settle wait, the counts, retirement. */
  durationSeconds: number;
  /** Time spent rewriting values (every pass), which the rates are measured over. */
  rewriteSeconds: number;
  /** The settle wait before the last count (--settle-time after the key was published). */
  settleSeconds: number;
  /** Rows and bytes rewritten by this run (less than rows/bytes when it resumed a job). */
  rowsThisRun: number;
  bytesThisRun: number;
  /** This run's rewrite rates: rowsThisRun and bytesThisRun over rewriteSeconds (the settle wait left out). */
  rowsPerSecond: number;
  megabytesPerSecond: number;
  /** Values left untouched because they do not decrypt (--skip-undecryptable), still in place. */
  undecryptable: UndecryptableValueReport[];
  backup: { jobId: number; file: string } | null;
  /** Time this run waited for standbys (--max-replica-lag) and for the WAL rate (--max-wal-rate). */
  throttled: ThrottledTime;
  recommendation: string;
}

export interface NotDue {
  ok: true;
  result: 'not-due';
  primaryVersion: number;
  primaryAgeSeconds: number;
  ifOlderThanSeconds: number;
}

export type RotateResult = RotateSummary | NotDue | RotatePlan;

type Events = RewriteEvents;

function addCounts(into: Record<string, number>, counts: VersionCount[]): void {
  for (const c of counts) {
    const k = c.version === null ? 'invalid' : String(c.version);
    into[k] = (into[k] ?? 0) + c.values;
  }
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
  const tables = (await listColumns(pool)).map((c) => ({ schema: c.table_schema, table: c.table_name }));
  if (opts.dryRun) {
    await requireTablePrivileges(pool, tables, ['SELECT'], 'to count and sample the registered columns');
    return dryRun(pool, opts, rows, primary, resumable);
  }
  await requireTablePrivileges(pool, tables, ['SELECT', 'UPDATE'], 'to re-encrypt the registered columns');
  await requireTemporaryTables(pool, 'to stage the re-encrypted values');

  const lock = await acquireAdvisoryLock(pool, (pid) => describeLockHolder(pool, pid), MAINTENANCE_LOCK);
  try {
    await markOrphanedJobs(pool, { holdingLock: true });
    const censuses = await censusColumns(pool, await listColumns(pool));
    const converting = convertingColumns(censuses);
    if (converting.length > 0) throw convertingError(converting, 'rotate refused');
    const problems = nonEnvelopeProblems(censuses);
    if (problems.length > 0 && !opts.skipUndecryptable) throw nonEnvelopeError(problems, 'rotate refused');
    if (problems.length > 0) events.warn?.(`--skip-undecryptable: values that are not envelopes are left untouched: ${problems.join('; ')}`);
    resumable = await findResumable(pool, primary);
    if (resumable) {
      events.info?.(`resuming job ${resumable.id} (v${resumable.from_version ?? '?'}→v${resumable.to_version}) from its checkpoints (${whyStopped(resumable)})`);
    }
    const { provider, deks } = await openProvider(pool, opts.providerOptions ?? {}, rows);
    events.info?.(`key provider ${provider.kind} reachable; ${count(deks.size, 'data key')} unwrapped`);
    const headroom = await checkHeadroom(pool, opts, events);
    if (headroom.freeBytes !== null) events.info?.(`disk headroom ok: ${describeHeadroom(headroom)}`);
    // --max-replica-lag / --max-wal-rate: the role may see the standbys, and which are watched.
    const gate = await StandbyGate.open(pool, opts, events);
    throwIfStopped(opts.signal, 'during preflight');

    let backup: { jobId: number; file: string } | null = null;
    if (opts.backup) {
      events.info?.('taking a backup first (--backup)');
      const b = await takeBackup(pool, {
        outDir: opts.backupDir,
        lockHeld: true,
        actor: opts.actor,
        pgDump: opts.pgDump,
        env: opts.env ?? noEnvironmentForBackup(),
        testFreeBytes: opts.testFreeBytes,
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
      const created = await createKeyAndJob(pool, provider, plans, events, opts.actor, opts.masterKeyRewriteHooks ?? {});
      job = created.job;
      newDek = created.dek;
      deks.set(job.to_version!, newDek);
      kekId = created.kekId;
    }
    try {
      return await runJob(pool, opts, events, { job, newDek, deks, destroyed: rows.filter((k) => k.state === 'destroyed').map((k) => k.version), plans, resumed, kekId, lock, backup, gate });
    } finally {
      // Key material is not left in memory longer than the job needs it.
      for (const k of deks.values()) k.fill(0);
      provider.dispose();
    }
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
  actor: string | undefined,
  masterKeyHooks: RewriteHooks,
): Promise<{ job: JobRecord; dek: Buffer; kekId: string }> {
  const columns: Record<string, ColumnState> = {};
  let rowsTotal = 0;
  for (const p of plans) {
    // Counted without reading values (per-version counts come from the first pass itself).
    const { values: rows, bytes } = await countValues(pool, p);
    rowsTotal += rows;
    columns[p.name] = initialState(rows, bytes);
  }
  // A new master key (local provider) is in the file, read back and checked, BEFORE the
  // transaction that re-wraps the DEKs under it: a crash in between leaves only an unused key
  // in the file, never a DEK wrapped under a key nobody has.
  const newMasterKeyId = await provider.addKekVersion(masterKeyHooks);
  const target = provider;
  const result = await withTransaction(pool, async (tx) => {
    // Recorded so that `keys prune-master-keys` knows these master keys were this database's.
    const rewrappedFrom = newMasterKeyId ? await liveKekIds(tx) : [];
    const rewrapped = newMasterKeyId ? await rewrapKeyring(tx, target, target) : 0;
    const added = await addPrimaryDataKey(tx, target);
    const job = await createJob(tx, {
      actor,
      kind: 'rotate',
      fromVersion: added.previousPrimary,
      toVersion: added.version,
      rowsTotal,
      detail: { columns, kekId: target.currentKekId(), masterKeyAdded: newMasterKeyId, rewrapped, rewrappedFrom },
    });
    return { job, dek: added.dek, rewrapped };
  });
  events.info?.(
    `job ${result.job.id}: data key v${result.job.to_version} is now primary (v${result.job.from_version ?? '-'} active)` +
      (newMasterKeyId ? `; new master key ${newMasterKeyId}, ${count(result.rewrapped, 'data key')} re-wrapped under it` : ''),
  );
  return { job: result.job, dek: result.dek, kekId: target.currentKekId() };
}

interface JobRun {
  job: JobRecord;
  newDek: Buffer;
  deks: Map<number, Buffer>;
  /** Versions of destroyed data keys (a value naming one is reported as such). */
  destroyed: number[];
  plans: ColumnPlan[];
  resumed: boolean;
  kekId: string;
  lock: HeldLock;
  backup: { jobId: number; file: string } | null;
  gate: StandbyGate | undefined;
}

/** VACUUM a table after 10 % of it was rewritten (32 MB–1 GB), or --vacuum-every-bytes; warns about tables it may not VACUUM. */
async function startVacuumer(pool: Pool, plans: ColumnPlan[], opts: RotateOptions, events: Events): Promise<Vacuumer> {
  const sizes = new Map<string, number>();
  for (const p of plans) if (!sizes.has(p.table)) sizes.set(p.table, await tableBytes(pool, p));
  const unvacuumable = await tablesWithoutVacuumRight(pool, [...sizes.keys()]);
  if (unvacuumable.length > 0) {
    events.warn?.(
      `not allowed to VACUUM ${unvacuumable.join(', ')} (run rotate as the table owner): the space of rewritten rows is left to autovacuum, so these tables may grow by up to their own size during the rotation`,
    );
  }
  const threshold = (table: string) => opts.vacuumEveryBytes || Math.min(Math.max((sizes.get(table) ?? 0) * 0.1, 32 * 1024 * 1024), 1024 * 1024 * 1024);
  return new Vacuumer(pool, threshold, events, new Set(unvacuumable));
}

/** An AbortController that also aborts with `signal`; `detach` stops listening to it. */
function linkedStopper(signal: AbortSignal | undefined): { stopper: AbortController; detach: () => void } {
  const stopper = new AbortController();
  const onSignal = () => stopper.abort();
  if (signal?.aborted) stopper.abort();
  else signal?.addEventListener('abort', onSignal, { once: true });
  return { stopper, detach: () => signal?.removeEventListener('abort', onSignal) };
}

function sumOf(states: Iterable<ColumnState>, field: 'rowsDone' | 'bytesDone'): number {
  let n = 0;
  for (const s of states) n += s[field];
  return n;
}

/** Steps 3 and 4: the first pass (or what a resumed job has left of it), convergence, retirement. */
async function runJob(pool: Pool, opts: RotateOptions, events: Events, r: JobRun): Promise<RotateSummary> {
  const { job, plans } = r;
  const toVersion = job.to_version!;
  const started = Date.now();
  const { stopper, detach } = linkedStopper(opts.signal);
  const detail = (await getJob(pool, job.id))!.detail;
  let states = new Map(plans.map((p) => [p.name, savedState(detail, p.name)]));
  // What earlier runs of this job already did: the rates in the summary are this run's.
  const rowsAtStart = sumOf(states.values(), 'rowsDone');
  const bytesAtStart = sumOf(states.values(), 'bytesDone');
  const vacuumer = await startVacuumer(pool, plans, opts, events);
  const gate = r.gate;
  const ctx: RewriteContext = {
    pool,
    jobId: job.id,
    transform: { kind: 'rotate', toVersion, newDek: r.newDek, deks: [...r.deks.entries()], destroyed: r.destroyed },
    skipUndecryptable: opts.skipUndecryptable,
    batchSize: Math.max(1, Math.min(opts.batchSize ?? DEFAULT_BATCH_SIZE, opts.maxRate ? Math.ceil(opts.maxRate) : Infinity)),
    chunkBytes: opts.chunkBytes ?? DEFAULT_CHUNK_BYTES,
    stopper,
    limiter: allPacers(new RateLimiter(opts.maxRate), gate),
    vacuumer,
    events,
    pause: opts.pause ?? noPause,
  };
  const workers = Math.max(1, opts.workers ?? 1);
  // The rates are the rewrite's: the time of the passes, not the settle wait nor the counts.
  let rewriteMs = 0;
  let settleMs = 0;
  const pass = async (todo: ColumnPlan[]) => {
    const passStarted = Date.now();
    try {
      states = new Map([...states, ...(await rewriteColumns(ctx, todo, states, workers))]);
    } finally {
      rewriteMs += Date.now() - passStarted;
    }
    if (stopper.signal.aborted) throw interrupted(job.id);
  };

  try {
    await ctx.pause('after-key', stopper.signal);
    if (stopper.signal.aborted) throw interrupted(job.id);
    await pass(plans.filter((p) => !states.get(p.name)!.done));
    await ctx.pause('convergence', stopper.signal);
    if (stopper.signal.aborted) throw interrupted(job.id);

    // Converge: values written meanwhile by instances that had not loaded DEK N+1 yet.
    let valuesAfter: Record<string, number> = {};
    const passes = await converge({
      countRemaining: async () => {
        valuesAfter = {};
        const remaining = new Map<ColumnPlan, number>();
        for (const p of plans) {
          const counts = await countVersions(pool, p);
          addCounts(valuesAfter, counts);
          // With --skip-undecryptable, values left untouched because they do not decrypt are not
          // still to do while unchanged; without it a later pass meets them and stops.
          const recorded = opts.skipUndecryptable ? (states.get(p.name)!.undecryptable ?? []) : [];
          const n = recorded.length
            ? await countPendingExceptRecorded(pool, p, notUnderSql(p, toVersion, 't'), recorded)
            : counts.filter((c) => c.version !== toVersion).reduce((a, c) => a + c.values, 0);
          if (n > 0) remaining.set(p, n);
        }
        return remaining;
      },
      runPass: async (remaining, passNumber) => {
        for (const [p, n] of remaining) {
          const s = nextPass(states.get(p.name)!, passNumber, n);
          states.set(p.name, s);
          await saveState(pool, job.id, p.name, s);
        }
        await pass([...remaining.keys()]);
      },
      settleUntil: job.started_at.getTime() + (opts.settleMs ?? DEFAULT_SETTLE_MS),
      stop: stopper.signal,
      interrupted: () => interrupted(job.id),
      events: {
        ...events,
        settleWait: (w) => {
          settleMs += w.waitMs;
          events.settleWait?.(w);
        },
      },
      wording: rotationWording(job.id, toVersion),
    });

    // Retire: old DEKs no value uses any more (kept for old backups, never destroyed here); the
    // keys that values left untouched name are among those used, so they stay active.
    const retired = await retireUnusedDataKeys(pool, Object.keys(valuesAfter).filter((k) => k !== 'invalid').map(Number));
    const undecryptable = await undecryptableLeft(pool, plans, states, toVersion);
    const summary = summarise(r, (await getJob(pool, job.id))!, states, {
      started,
      rowsAtStart,
      bytesAtStart,
      retired,
      valuesAfter,
      passes,
      vacuums: vacuumer.vacuums,
      undecryptable,
      throttled: gate?.throttled ?? { replicaLagMs: 0, walRateMs: 0 },
      rewriteMs,
      settleMs,
    });
    if (undecryptable.length === 0) await finishJob(pool, job.id, 'succeeded', undefined, { summary });
    else await finishJob(pool, job.id, 'failed', undecryptableMessage(undecryptable), { summary, undecryptable });
    return summary;
  } catch (err) {
    const state = err instanceof InterruptedError ? 'interrupted' : 'failed';
    await vacuumer.idle().catch(() => undefined);
    await finishJob(pool, job.id, state, (err as Error).message, gate ? { throttled: gate.throttled } : undefined).catch(() => undefined);
    throw err;
  } finally {
    detach();
  }
}

/** The values the job left untouched because they do not decrypt, as they are now (rewritten meanwhile: gone). */
async function undecryptableLeft(pool: Pool, plans: ColumnPlan[], states: ReadonlyMap<string, ColumnState>, toVersion: number): Promise<UndecryptableValueReport[]> {
  const out: UndecryptableValueReport[] = [];
  for (const p of plans) {
    for (const row of await stillPending(pool, p, notUnderSql(p, toVersion, 't'), states.get(p.name)?.undecryptable ?? [])) {
      const key: Record<string, string> = {};
      p.keyColumns.forEach((k, i) => (key[k] = row.key[i]));
      out.push({ column: p.name, key, reason: row.reason, version: row.version });
    }
  }
  return out;
}

/** The job's error line for values left untouched. */
export function undecryptableMessage(left: UndecryptableValueReport[]): string {
  const keys = [...new Set(left.map((x) => x.version).filter((v): v is number => v !== null))].sort((a, b) => a - b);
  return (
    `${count(left.length, 'value')} ${verb(left.length, 'does', 'do')} not decrypt and ${verb(left.length, 'was', 'were')} left untouched (--skip-undecryptable)` +
    (keys.length ? `; ${noun(keys.length, 'data key')} ${keys.map((v) => `v${v}`).join(', ')} ${verb(keys.length, 'stays', 'stay')} active for ${noun(left.length, 'it', 'them')}` : '') +
    '; `alation-keys verify` lists them'
  );
}

/** How convergence messages speak of a rotation. */
function rotationWording(jobId: number, toVersion: number): Convergence['wording'] {
  return {
    settling: (s) => `every value is under v${toVersion}; waiting ${s}s for application instances to load it before the last count`,
    nextPass: (n, total, perColumn) => `pass ${n}: ${count(total, 'value')} still under older keys (${perColumn}), written by instances that had not loaded v${toVersion} yet`,
    stuck: (total, rounds) =>
      new OperationError(`${count(total, 'value')} ${verb(total, 'is', 'are')} still being written under older data keys after ${count(rounds, 'extra pass', 'extra passes')}; job ${jobId} stays resumable`, {
        hint: `restart application instances that still encrypt with an old key (they should load v${toVersion} within 30 s), then run \`alation-keys rotate\` again`,
      }),
  };
}

/** The result of a finished job: its figures, this run's rates. */
function summarise(
  r: JobRun,
  final: JobRecord,
  states: ReadonlyMap<string, ColumnState>,
  run: {
    started: number;
    rowsAtStart: number;
    bytesAtStart: number;
    retired: number[];
    valuesAfter: Record<string, number>;
    passes: number;
    vacuums: number;
    undecryptable: UndecryptableValueReport[];
    throttled: ThrottledTime;
    rewriteMs: number;
    settleMs: number;
  },
): RotateSummary {
  const durationSeconds = (Date.now() - run.started) / 1000;
  const rewriteSeconds = run.rewriteMs / 1000;
  const columns: ColumnSummary[] = r.plans.map((p) => {
    const s = states.get(p.name)!;
    return { column: p.name, storage: p.col.storage, rows: s.rowsDone, bytes: s.bytesDone, skippedConcurrent: s.skipped, passes: s.pass };
  });
  const rowsThisRun = columns.reduce((a, c) => a + c.rows, 0) - run.rowsAtStart;
  const bytesThisRun = columns.reduce((a, c) => a + c.bytes, 0) - run.bytesAtStart;
  return {
    ok: run.undecryptable.length === 0,
    result: 'rotated',
    jobId: r.job.id,
    resumed: r.resumed,
    fromVersion: r.job.from_version,
    toVersion: r.job.to_version!,
    kekId: r.kekId,
    retiredVersions: run.retired,
    valuesBefore: valuesBefore(r.plans.map((p) => states.get(p.name)!)),
    valuesAfter: run.valuesAfter,
    columns,
    rows: final.rows_done,
    bytes: final.bytes_done,
    skippedConcurrent: columns.reduce((a, c) => a + c.skippedConcurrent, 0),
    passes: run.passes,
    vacuums: run.vacuums,
    durationSeconds: Math.round(durationSeconds * 10) / 10,
    rewriteSeconds: Math.round(rewriteSeconds * 10) / 10,
    settleSeconds: Math.round(run.settleMs / 100) / 10,
    rowsThisRun,
    bytesThisRun,
    rowsPerSecond: Math.round(rowsThisRun / Math.max(rewriteSeconds, 0.001)),
    megabytesPerSecond: Math.round((bytesThisRun / 1048576 / Math.max(rewriteSeconds, 0.001)) * 10) / 10,
    undecryptable: run.undecryptable,
    backup: r.backup,
    throttled: run.throttled,
    recommendation: 'take a backup now (`alation-keys backup`): backups made before this rotation need the old keys, which stay in the keyring as retired',
  };
}

/** `it was interrupted: job 4 checkpointed…`, without saying the state twice (the error of an interrupted job starts with it). */
function whyStopped(job: JobRecord): string {
  const error = job.error?.replace(new RegExp(`^${job.state}:\\s*`), '');
  return `it was ${job.state}${error ? `: ${error}` : ''}`;
}

function interrupted(jobId: number): InterruptedError {
  return new InterruptedError(`interrupted: job ${jobId} checkpointed and marked interrupted`, {
    hint: 'run `alation-keys rotate` again to resume it from its checkpoints',
  });
}

function noEnvironmentForBackup(): never {
  throw new UsageError('rotate with backup: true needs options.env, the environment pg_dump runs with (PATH, PG* variables)');
}
