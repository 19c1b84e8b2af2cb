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
import { withTransaction } from '../../db/transaction';
import { requireInitialised } from '../../db/migrations';
import { requireTablePrivileges, requireTemporaryTables } from '../../db/privileges';
import { IntegrityError, OperationError, PreconditionError } from '../../errors';
import { KeyProvider } from '../../kms/provider';
import { convertingColumns, convertingError, nonEnvelopeError, nonEnvelopeProblems } from '../census';
import { listColumns } from '../columns';
import { createJob, JobRecord, reopenJob } from '../jobs';
import { addPrimaryDataKey, liveKekIds, primaryOf, readKeyring, retireUnusedDataKeys, rewrapKeyring } from '../keyring';
import { RewriteHooks } from '../../kms/master-key-file';
import { ColumnState, initialState, valuesBefore } from './checkpoint';
import { Convergence } from './convergence';
import { dryRun, RotatePlan } from './dry-run';
import { DEFAULT_SETTLE_MS, Events, JobFigures, whyStopped, preflightJob, RewriteJobOptions, runFiguresSummary, runRewriteJob, underMaintenanceLock, withKeys } from './job-run';
import { ColumnPlan, countValues, countVersions, notUnderSql, VersionCount } from './plan';
import { countPendingExceptRecorded } from './undecryptable';
import { count, verb } from '../../plural';
import type { UndecryptableValueReport } from './job-run';
import { censusColumns, findResumable, planColumns, SCAN_CONNECTIONS, throwIfStopped } from './preflight';
import { mapWithConcurrency } from '../concurrency';

export type { ColumnProgress, RewriteEvents as RotateEvents } from './engine';
export type { RotatePlan } from './dry-run';
export type { ColumnSummary, UndecryptableValueReport } from './job-run';
export { DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_BYTES, DEFAULT_SETTLE_MS, undecryptableMessage } from './job-run';

export interface RotateOptions extends RewriteJobOptions {
  dryRun?: boolean;
  ifOlderThanMs?: number;
  /** TEST ONLY: hooks around the master key file's rewrite (test-hooks.ts). */
  masterKeyRewriteHooks?: RewriteHooks;
}

export interface RotateSummary extends JobFigures {
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
  /** Values left untouched because they do not decrypt (--skip-undecryptable), still in place. */
  undecryptable: UndecryptableValueReport[];
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

export type RotateResult = RotateSummary | NotDue | RotatePlan;

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

  return underMaintenanceLock(pool, async () => {
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
    const pre = await preflightJob(pool, opts, events, rows, !!resumable);
    return withKeys(pre, async () => {
      const cols = await listColumns(pool);
      if (cols.length === 0) events.warn?.('no encrypted columns are registered: only the keys are rotated');
      const plans = await planColumns(pool, cols);
      throwIfStopped(opts.signal, 'during preflight');

      let job: JobRecord;
      let newDek: Buffer;
      let kekId: string;
      if (resumable) {
        job = resumable;
        const dek = pre.deks.get(job.to_version!);
        if (!dek) throw new IntegrityError(`data key v${job.to_version} of job ${job.id} could not be unwrapped`, { version: job.to_version! });
        newDek = dek;
        await reopenJob(pool, job.id);
        kekId = primary.kek_id;
      } else {
        const created = await createKeyAndJob(pool, pre.provider, plans, events, opts.actor, opts.masterKeyRewriteHooks ?? {});
        job = created.job;
        newDek = created.dek;
        pre.deks.set(job.to_version!, newDek);
        kekId = created.kekId;
      }
      const toVersion = job.to_version!;
      let valuesAfter: Record<string, number> = {};
      let retired: number[] = [];
      return runRewriteJob<RotateSummary>(pool, opts, events, {
        job,
        gate: pre.gate,
        plans,
        transform: { kind: 'rotate', toVersion, newDek, deks: [...pre.deks.entries()], destroyed: rows.filter((k) => k.state === 'destroyed').map((k) => k.version) },
        startPause: 'after-key',
        resumeCommand: 'alation-keys rotate',
        // Values written meanwhile by instances that had not loaded DEK N+1 yet.
        countRemaining: async (states) => {
          // One full scan of the headers per column, SCAN_CONNECTIONS columns at a time.
          const perColumn = await mapWithConcurrency(plans, SCAN_CONNECTIONS, async (p) => {
            const counts = await countVersions(pool, p);
            // With --skip-undecryptable, values left untouched because they do not decrypt are not
            // still to do while unchanged; without it a later pass meets them and stops.
            const recorded = opts.skipUndecryptable ? (states.get(p.name)!.undecryptable ?? []) : [];
            const n = recorded.length
              ? await countPendingExceptRecorded(pool, p, notUnderSql(p, toVersion, 't'), recorded)
              : counts.filter((c) => c.version !== toVersion).reduce((a, c) => a + c.values, 0);
            return { p, counts, n };
          });
          valuesAfter = {};
          const remaining = new Map<ColumnPlan, number>();
          for (const { p, counts, n } of perColumn) {
            addCounts(valuesAfter, counts);
            if (n > 0) remaining.set(p, n);
          }
          return remaining;
        },
        stillUndecryptableSql: (p) => notUnderSql(p, toVersion, 't'),
        settleUntil: job.started_at.getTime() + (opts.settleMs ?? DEFAULT_SETTLE_MS),
        wording: rotationWording(job.id, toVersion),
        // Retire: old DEKs no value uses any more (kept for old backups, never destroyed here); the
        // keys that values left untouched name are among those used, so they stay active.
        complete: async () => {
          retired = await retireUnusedDataKeys(pool, Object.keys(valuesAfter).filter((k) => k !== 'invalid').map(Number));
          return true;
        },
        summarise: (f) => ({
          ok: f.undecryptable.length === 0,
          result: 'rotated',
          jobId: job.id,
          resumed: !!resumable,
          fromVersion: job.from_version,
          toVersion,
          kekId,
          retiredVersions: retired,
          valuesBefore: valuesBefore(plans.map((p) => f.states.get(p.name)!)),
          valuesAfter,
          ...runFiguresSummary(plans, f),
          undecryptable: f.undecryptable,
          backup: pre.backup,
          recommendation: 'take a backup now (`alation-keys backup`): backups made before this rotation need the old keys, which stay in the keyring as retired',
        }),
      });
    });
  });
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
