/**
 * What every rewrite job (rotate, encrypt, decrypt) does around its transform, written once:
 *
 *  - underMaintenanceLock: the maintenance advisory lock, jobs orphaned by a dead process
 *    marked `interrupted`, the lock released whatever happens;
 *  - preflightJob: the key provider reachable and every DEK unwrapped, disk headroom, then a
 *    backup taken (--backup), or a recent one required (skipped when resuming, or knowingly);
 *  - runRewriteJob: the job's first pass (or what a resumed job has left of it) through the
 *    engine, `--workers` columns at a time with VACUUM along the way, the convergence passes
 *    and the settle wait, the kind's own completion (retire keys, change a column's state),
 *    and the job row marked succeeded, interrupted (exit 130, resumable) or failed.
 *
 * Each kind (rotate.ts, encrypt.ts, decrypt.ts) keeps only what is its own: which columns,
 * the transform, what "still to do" counts, and what happens once nothing is left.
 */
import { Pool } from 'pg';
import { acquireAdvisoryLock, HeldLock, MAINTENANCE_LOCK } from '../../db/transaction';
import { InterruptedError, UsageError } from '../../errors';
import { ProviderOptions } from '../../kms';
import { KeyProvider } from '../../kms/provider';
import { takeBackup } from '../backup';
import { noPause, TestPause } from '../test-hooks';
import { describeLockHolder, finishJob, getJob, JobActorOption, JobRecord, markOrphanedJobs } from '../jobs';
import { KeyringRow } from '../keyring';
import { ColumnState, nextPass, savedState, saveState } from './checkpoint';
import { converge, Convergence } from './convergence';
import { RewriteContext, rewriteColumns, RewriteEvents } from './engine';
import { planKeyRanges, mergeRanges, rangeStates } from './key-ranges';
import { ColumnPlan, tableBytes } from './plan';
import { checkBackup, checkHeadroom, DEFAULT_MAX_BACKUP_AGE_MS, describeHeadroom, openProvider, throwIfStopped } from './preflight';
import { StandbyGate, StandbyGateOptions, ThrottledTime } from './standby-gate';
import { allPacers, RateLimiter } from './throttle';
import { count, noun, verb } from '../../plural';
import { Transform } from './transform';
import { stillPending, UndecryptableReason } from './undecryptable';
import { tablesWithoutVacuumRight, Vacuumer } from './vacuum';

export const DEFAULT_BATCH_SIZE = 1000;
/** Chunks are bounded by bytes too, so large values never make one statement huge. */
export const DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024;
/** The application re-reads the keyring every 30 s by default; wait longer than that before relying on it. */
export const DEFAULT_SETTLE_MS = 35_000;
/** Rounds of "converge, then complete" before a job gives up on values that keep coming back. */
const MAX_COMPLETION_ROUNDS = 5;

/** The options every rewrite job takes (the CLI's shared rewrite options). */
export interface RewriteJobOptions extends JobActorOption, StandbyGateOptions {
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
   * Rewrite every value that can be, leave each that does not decrypt untouched and record its
   * row in the job (undecryptable.ts); the job then ends `failed`. Without it the first such
   * value stops the job (rotate, encrypt).
   */
  skipUndecryptable?: boolean;
  signal?: AbortSignal;
  /** TEST ONLY: holds the job at named points (src/core/test-hooks.ts). */
  pause?: TestPause;
  /** TEST ONLY: the free space the disk checks see (test-hooks.ts). */
  testFreeBytes?: number;
}

export type Events = RewriteEvents;

/** Runs `fn` holding the maintenance lock, after marking jobs whose process died as interrupted. */
export async function underMaintenanceLock<T>(pool: Pool, fn: (lock: HeldLock) => Promise<T>): Promise<T> {
  const lock = await acquireAdvisoryLock(pool, (pid) => describeLockHolder(pool, pid), MAINTENANCE_LOCK);
  try {
    await markOrphanedJobs(pool, { holdingLock: true });
    return await fn(lock);
  } finally {
    await lock.release();
  }
}

export interface Preflighted {
  provider: KeyProvider;
  /** Every data key of the keyring, unwrapped (zeroed by the caller once the job ends). */
  deks: Map<number, Buffer>;
  backup: { jobId: number; file: string } | null;
  /** Waits before each chunk for standbys (--max-replica-lag) and the WAL rate (--max-wal-rate); undefined without them. */
  gate: StandbyGate | undefined;
}

/**
 * The checks before a job writes anything (lock held): key provider and DEKs, disk headroom,
 * backup. `resuming`: the job passed the backup check when it started.
 */
export async function preflightJob(pool: Pool, opts: RewriteJobOptions, events: Events, rows: KeyringRow[], resuming: boolean): Promise<Preflighted> {
  const { provider, deks } = await openProvider(pool, opts.providerOptions ?? {}, rows);
  try {
    events.info?.(`key provider ${provider.kind} reachable; ${count(deks.size, 'data key')} unwrapped`);
    const headroom = await checkHeadroom(pool, opts, events);
    if (headroom.freeBytes !== null) events.info?.(`disk headroom ok: ${describeHeadroom(headroom)}`);
    // --max-replica-lag / --max-wal-rate: the role may see the standbys, and which are watched.
    const gate = await StandbyGate.open(pool, opts, events);
    throwIfStopped(opts.signal, 'during preflight');

    let backup: Preflighted['backup'] = null;
    if (opts.backup) {
      events.info?.('taking a backup first (--backup)');
      const b = await takeBackup(pool, {
        outDir: opts.backupDir,
        lockHeld: true,
        testFreeBytes: opts.testFreeBytes,
        actor: opts.actor,
        pgDump: opts.pgDump,
        env: opts.env ?? noEnvironmentForBackup(),
        databaseUrl: opts.databaseUrl,
        masterKeyFile: opts.providerOptions?.masterKeyFile,
        signal: opts.signal,
      });
      backup = { jobId: b.jobId, file: b.file };
      events.info?.(`backup job ${b.jobId} written to ${b.file}`);
      throwIfStopped(opts.signal, 'after the backup');
    } else if (resuming) {
      events.info?.('backup check skipped: resuming a job that passed it when it started');
    } else if (opts.skipBackupCheck) {
      events.warn?.('backup check skipped (--skip-backup-check)');
    } else {
      const b = await checkBackup(pool, opts.maxBackupAgeMs ?? DEFAULT_MAX_BACKUP_AGE_MS);
      events.info?.(`recent backup: job ${b.id}, finished ${b.finished_at!.toISOString()}`);
    }
    return { provider, deks, backup, gate };
  } catch (err) {
    for (const k of deks.values()) k.fill(0);
    provider.dispose();
    throw err;
  }
}

function noEnvironmentForBackup(): never {
  throw new UsageError('a rewrite job with backup: true needs options.env, the environment pg_dump runs with (PATH, PG* variables)');
}

/** Runs `fn` with the preflighted keys, then zeroes them and disposes of the provider. */
export async function withKeys<T>(pre: Preflighted, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } finally {
    // Key material is not left in memory longer than the job needs it.
    for (const k of pre.deks.values()) k.fill(0);
    pre.provider.dispose();
  }
}

/** What a finished run hands the kind's completion. */
export interface RunFigures {
  job: JobRecord;
  states: ReadonlyMap<string, ColumnState>;
  passes: number;
  vacuums: number;
  started: number;
  /** Rows and bytes earlier runs of this job had done (the rates are this run's). */
  rowsAtStart: number;
  bytesAtStart: number;
  /** Values left untouched because they do not decrypt (skipUndecryptable), still in place. */
  undecryptable: UndecryptableValueReport[];
  /** Time this run waited for standbys and for the WAL rate. */
  throttled: ThrottledTime;
  /** Time spent rewriting (every pass) and in the settle wait before the last count. */
  rewriteMs: number;
  settleMs: number;
}

/** A value a job left untouched because it does not decrypt. */
export interface UndecryptableValueReport {
  column: string;
  key: Record<string, string>;
  reason: UndecryptableReason;
  version: number | null;
}

/** One rewrite job, as its kind describes it to runRewriteJob. */
export interface RewriteJob<S> {
  job: JobRecord;
  /** The standby and WAL-rate gate the preflight opened (preflightJob), if any. */
  gate: StandbyGate | undefined;
  plans: ColumnPlan[];
  transform: Transform;
  /** The test pause before the first pass (rotate: `after-key`, the others: `job-start`). */
  startPause: 'after-key' | 'job-start';
  /** Called before the first pass (decrypt: wait until every instance writes plaintext). */
  beforeFirstPass?(stop: AbortSignal): Promise<void>;
  /** Values each column has still to do (columns with none may be left out), from the columns' states. */
  countRemaining(states: ReadonlyMap<string, ColumnState>): Promise<Map<ColumnPlan, number>>;
  /** With skipUndecryptable: a recorded row is still left untouched while this holds for its value (alias t). */
  stillUndecryptableSql(p: ColumnPlan): string;
  /** The last count is taken no earlier than this (epoch ms). */
  settleUntil: number;
  wording: Convergence['wording'];
  /** Once nothing is left: the kind's last step (retire keys, change a state). False: values came back, converge again. */
  complete(figures: RunFigures): Promise<boolean>;
  /** The job's result, saved in its detail as `summary`. */
  summarise(figures: RunFigures): S;
  /** How the operator resumes the job (the interrupted error's hint). */
  resumeCommand: string;
}

/** VACUUM a table after 10 % of it was rewritten (32 MB–1 GB), or --vacuum-every-bytes; warns about tables it may not VACUUM. */
async function startVacuumer(pool: Pool, plans: ColumnPlan[], opts: RewriteJobOptions, events: Events): Promise<Vacuumer> {
  const sizes = new Map<string, number>();
  for (const p of plans) if (!sizes.has(p.table)) sizes.set(p.table, await tableBytes(pool, p));
  const unvacuumable = await tablesWithoutVacuumRight(pool, [...sizes.keys()]);
  if (unvacuumable.length > 0) {
    events.warn?.(
      `not allowed to VACUUM ${unvacuumable.join(', ')} (run as the table owner): the space of rewritten rows is left to autovacuum, so these tables may grow by up to their own size during the job`,
    );
  }
  const threshold = (table: string) => opts.vacuumEveryBytes || Math.min(Math.max((sizes.get(table) ?? 0) * 0.1, 32 * 1024 * 1024), 1024 * 1024 * 1024);
  return new Vacuumer(pool, threshold, events, new Set(unvacuumable));
}

/** An AbortController that also aborts with `signal`; `detach` stops listening to it. */
export function linkedStopper(signal: AbortSignal | undefined): { stopper: AbortController; detach: () => void } {
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

/** `it was interrupted: job 4 checkpointed…`, without saying the state twice (the error of an interrupted job starts with it). */
export function whyStopped(job: JobRecord): string {
  const error = job.error?.replace(new RegExp(`^${job.state}:\\s*`), '');
  return `it was ${job.state}${error ? `: ${error}` : ''}`;
}

export function interruptedJob(jobId: number, resumeCommand: string): InterruptedError {
  return new InterruptedError(`interrupted: job ${jobId} checkpointed and marked interrupted`, {
    hint: `run \`${resumeCommand}\` again to resume it from its checkpoints`,
  });
}

/** The first pass, convergence, the kind's completion; the job row tells how it ended. */
export async function runRewriteJob<S extends object>(pool: Pool, opts: RewriteJobOptions, events: Events, spec: RewriteJob<S>): Promise<S> {
  const { job, plans } = spec;
  const started = Date.now();
  const { stopper, detach } = linkedStopper(opts.signal);
  const interrupted = () => interruptedJob(job.id, spec.resumeCommand);
  const detail = (await getJob(pool, job.id))!.detail;
  let states = new Map(plans.map((p) => [p.name, savedState(detail, p.name)]));
  const workers = Math.max(1, opts.workers ?? 1);
  // A column much larger than the rest runs its first pass as key ranges, one per worker (key-ranges.ts).
  const split = await planKeyRanges(pool, job.id, plans, states, detail.ranges ?? {}, workers);
  const ranges = rangeStates(split, (name) => (detail.columns?.[name] ? savedState(detail, name) : undefined), states);
  for (const { column, ranges: r } of split) events.info?.(`${column.name}: first pass in ${r.length} key ranges, one worker each`);
  const rowsAtStart = sumOf([...states.values(), ...ranges.values()], 'rowsDone');
  const bytesAtStart = sumOf([...states.values(), ...ranges.values()], 'bytesDone');
  const vacuumer = await startVacuumer(pool, plans, opts, events);
  const ctx: RewriteContext = {
    pool,
    jobId: job.id,
    transform: spec.transform,
    batchSize: Math.max(1, Math.min(opts.batchSize ?? DEFAULT_BATCH_SIZE, opts.maxRate ? Math.ceil(opts.maxRate) : Infinity)),
    chunkBytes: opts.chunkBytes ?? DEFAULT_CHUNK_BYTES,
    stopper,
    limiter: allPacers(new RateLimiter(opts.maxRate), spec.gate),
    vacuumer,
    events,
    skipUndecryptable: opts.skipUndecryptable,
    pause: opts.pause ?? noPause,
  };
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
    if (stopper.signal.aborted) throw interrupted();
  };

  try {
    await ctx.pause(spec.startPause, stopper.signal);
    if (stopper.signal.aborted) throw interrupted();
    await spec.beforeFirstPass?.(stopper.signal);
    if (stopper.signal.aborted) throw interrupted();
    const whole = plans.filter((p) => !states.get(p.name)!.done && !split.some((s) => s.column === p));
    const rangePlans = split.flatMap((s) => s.ranges).filter((r) => !ranges.get(r.name)!.done);
    states = new Map([...states, ...ranges]);
    // Ranges first: they are the long work, so each gets a worker from the start.
    await pass([...rangePlans, ...whole]);
    for (const s of split) {
      const merged = await mergeRanges(pool, job.id, s, states.get(s.column.name)!, states);
      if (merged) states.set(s.column.name, merged);
      for (const r of s.ranges) states.delete(r.name);
    }
    await ctx.pause('convergence', stopper.signal);
    if (stopper.signal.aborted) throw interrupted();

    let passes = 0;
    for (let round = 1; ; round++) {
      // Converge: values written meanwhile by instances that had not learnt the change yet.
      passes = await converge({
        countRemaining: () => spec.countRemaining(states),
        runPass: async (remaining, passNumber) => {
          for (const [p, n] of remaining) {
            const s = nextPass(states.get(p.name)!, passNumber, n);
            states.set(p.name, s);
            await saveState(pool, job.id, p.name, s);
          }
          await pass([...remaining.keys()]);
        },
        settleUntil: spec.settleUntil,
        stop: stopper.signal,
        interrupted,
        events: {
          ...events,
          settleWait: (w) => {
            settleMs += w.waitMs;
            events.settleWait?.(w);
          },
        },
        wording: spec.wording,
      });
      const undecryptable = await undecryptableLeft(pool, spec, states);
      const throttled = spec.gate?.throttled ?? { replicaLagMs: 0, walRateMs: 0 };
      const figures = (): RunFigures => ({ job, states, passes, vacuums: vacuumer.vacuums, started, rowsAtStart, bytesAtStart, undecryptable, throttled, rewriteMs, settleMs });
      if (await spec.complete(figures())) {
        const summary = spec.summarise({ ...figures(), job: (await getJob(pool, job.id))! });
        if (undecryptable.length === 0) await finishJob(pool, job.id, 'succeeded', undefined, { summary });
        else await finishJob(pool, job.id, 'failed', undecryptableMessage(undecryptable), { summary, undecryptable });
        return summary;
      }
      if (round >= MAX_COMPLETION_ROUNDS) throw spec.wording.stuck(0, round);
      events.info?.('values to rewrite appeared after the last count; converging again');
    }
  } catch (err) {
    const state = err instanceof InterruptedError ? 'interrupted' : 'failed';
    await vacuumer.idle().catch(() => undefined);
    await finishJob(pool, job.id, state, (err as Error).message, spec.gate ? { throttled: spec.gate.throttled } : undefined).catch(() => undefined);
    throw err;
  } finally {
    detach();
  }
}

/** The values the job left untouched because they do not decrypt, as they are now (rewritten meanwhile: gone). */
async function undecryptableLeft(pool: Pool, spec: RewriteJob<unknown>, states: ReadonlyMap<string, ColumnState>): Promise<UndecryptableValueReport[]> {
  const out: UndecryptableValueReport[] = [];
  for (const p of spec.plans) {
    for (const row of await stillPending(pool, p, spec.stillUndecryptableSql(p), states.get(p.name)?.undecryptable ?? [])) {
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

/** Per-column figures of a finished job. */
export interface ColumnSummary {
  column: string;
  storage: string;
  rows: number;
  bytes: number;
  skippedConcurrent: number;
  passes: number;
}

/** What every kind's summary reports of its run. */
export interface JobFigures {
  columns: ColumnSummary[];
  rows: number;
  bytes: number;
  skippedConcurrent: number;
  passes: number;
  vacuums: number;
  /** This run's time from the start of the rewrite to the end: the passes, the settle wait, the counts, the completion. */
  durationSeconds: number;
  /** Time spent rewriting values (every pass), which the rates are measured over. */
  rewriteSeconds: number;
  /** The settle wait before the last count (--settle-time). */
  settleSeconds: number;
  /** Rows and bytes rewritten by this run (less than rows/bytes when it resumed a job). */
  rowsThisRun: number;
  bytesThisRun: number;
  /** This run's rewrite rates: rowsThisRun and bytesThisRun over rewriteSeconds (the settle wait left out). */
  rowsPerSecond: number;
  megabytesPerSecond: number;
  /** Time this run waited for standbys (--max-replica-lag) and for the WAL rate (--max-wal-rate). */
  throttled: ThrottledTime;
}

/** A finished job's per-column figures and this run's rates, as every kind reports them. */
export function runFiguresSummary(plans: ColumnPlan[], f: RunFigures): JobFigures {
  const durationSeconds = (Date.now() - f.started) / 1000;
  const columns: ColumnSummary[] = plans.map((p) => {
    const s = f.states.get(p.name)!;
    return { column: p.name, storage: p.col.storage, rows: s.rowsDone, bytes: s.bytesDone, skippedConcurrent: s.skipped, passes: s.pass };
  });
  const rewriteSeconds = f.rewriteMs / 1000;
  const rowsThisRun = columns.reduce((a, c) => a + c.rows, 0) - f.rowsAtStart;
  const bytesThisRun = columns.reduce((a, c) => a + c.bytes, 0) - f.bytesAtStart;
  return {
    columns,
    rows: f.job.rows_done,
    bytes: f.job.bytes_done,
    skippedConcurrent: columns.reduce((a, c) => a + c.skippedConcurrent, 0),
    passes: f.passes,
    vacuums: f.vacuums,
    durationSeconds: Math.round(durationSeconds * 10) / 10,
    rewriteSeconds: Math.round(rewriteSeconds * 10) / 10,
    settleSeconds: Math.round(f.settleMs / 100) / 10,
    rowsThisRun,
    bytesThisRun,
    rowsPerSecond: Math.round(rowsThisRun / Math.max(rewriteSeconds, 0.001)),
    megabytesPerSecond: Math.round((bytesThisRun / 1048576 / Math.max(rewriteSeconds, 0.001)) * 10) / 10,
    throttled: f.throttled,
  };
}
