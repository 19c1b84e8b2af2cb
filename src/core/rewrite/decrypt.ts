/**
 * `decrypt COLUMN`: a column returned to plaintext in place, online, crash-safe and resumable,
 * through the rewrite engine with the decrypt transform (decrypt-transform.ts). The command
 * line asks for confirmation first (decryptionTarget says what it would do).
 *
 *  1. Lock + preflight (job-run.ts): maintenance lock, orphaned jobs marked, malformed
 *     envelopes refused (exit 5) before anything changes, key provider, disk headroom, backup.
 *  2. One transaction: the column `decrypting` (the library now writes plaintext and reads
 *     both) and the job row (kind `decrypt`). An interrupted job is resumed instead.
 *  3. Settle: wait until the settle time has passed since the state changed, so that no
 *     application instance still takes the column for `encrypted` when it meets plaintext.
 *  4. Data: each envelope opened with the DEK it names and its plaintext written back, with the
 *     engine's compare-and-swap; converge; then the column becomes `removed` in one statement
 *     that checks no envelope is left. Afterwards no value of the column names any DEK.
 */
import { Pool } from 'pg';
import { requireInitialised } from '../../db/migrations';
import { requireTablePrivileges, requireTemporaryTables } from '../../db/privileges';
import { withTransaction } from '../../db/transaction';
import { IntegrityError, OperationError, PreconditionError, UsageError } from '../../errors';
import { censusColumn } from '../census';
import { changeColumnState, EncryptedColumn, findColumn } from '../columns';
import { formatColumnName } from '../identifiers';
import { createJob, JobRecord, listJobs, reopenJob } from '../jobs';
import { readKeyring } from '../keyring';
import { initialState, valuesBefore } from './checkpoint';
import { Convergence } from './convergence';
import { DEFAULT_SETTLE_MS, Events, JobFigures, whyStopped, preflightJob, RewriteJobOptions, runFiguresSummary, runRewriteJob, underMaintenanceLock, withKeys } from './job-run';
import { censusColumns, planColumns, throwIfStopped } from './preflight';
import { countPendingColumns, pendingRowSql } from './transform';
import { decryptionPendingSql } from './decrypt-transform';
import { count, verb } from '../../plural';
import { sleep } from './util';

export interface DecryptSummary extends JobFigures {
  ok: true;
  result: 'decrypted';
  jobId: number;
  resumed: boolean;
  column: string;
  /** Values read by the first pass: per DEK version (decrypted), `plaintext` (left alone). */
  valuesBefore: Record<string, number>;
  backup: { jobId: number; file: string } | null;
}

/** What `decrypt COLUMN` would work on, for the confirmation. */
export interface DecryptionTarget {
  column: string;
  state: string;
  envelopes: number;
  plaintext: number;
}

async function requireDecryptable(pool: Pool, name: string): Promise<EncryptedColumn> {
  const col = await findColumn(pool, name);
  if (!col) throw new UsageError(`column ${name} is not registered`, { hint: 'see `alation-keys columns list`' });
  return col;
}

/** The column and what it holds (read-only), so the operator confirms knowing the numbers. */
export async function decryptionTarget(pool: Pool, name: string): Promise<DecryptionTarget> {
  await requireInitialised(pool);
  const col = await requireDecryptable(pool, name);
  const c = await censusColumn(pool, col);
  return { column: c.column, state: c.state, envelopes: c.envelopes, plaintext: c.plaintext };
}

/** The latest unfinished decrypt job of this column, while the column is still `decrypting`. */
async function findResumableDecryption(pool: Pool, col: EncryptedColumn): Promise<JobRecord | undefined> {
  if (col.state !== 'decrypting') return undefined;
  const name = formatColumnName(col);
  const jobs = await listJobs(pool, { kind: 'decrypt', limit: 20 });
  const latest = jobs.find((j) => Object.keys(j.detail?.columns ?? {}).includes(name));
  return latest && latest.state !== 'succeeded' ? latest : undefined;
}

/** Returns the column to plaintext (confirmation is the caller's), or resumes an interrupted decrypt job. */
export async function decrypt(pool: Pool, name: string, opts: RewriteJobOptions = {}, events: Events = {}): Promise<DecryptSummary> {
  await requireInitialised(pool);
  const rows = await readKeyring(pool);
  const first = await requireDecryptable(pool, name);
  await requireTablePrivileges(pool, [{ schema: first.table_schema, table: first.table_name }], ['SELECT', 'UPDATE'], 'to decrypt the column in place');
  await requireTemporaryTables(pool, 'to stage the decrypted values');

  return underMaintenanceLock(pool, async () => {
    const col = await requireDecryptable(pool, name);
    const display = formatColumnName(col);
    const resumable = await findResumableDecryption(pool, col);
    const [census] = await censusColumns(pool, [col]);
    if (census.malformed > 0) {
      throw new IntegrityError(`decrypt refused: ${display}: ${count(census.malformed, 'value')} ${verb(census.malformed, 'looks like an envelope but is', 'look like envelopes but are')} malformed; nothing was changed`, undefined, {
        hint: `list them with \`alation-keys verify ${display}\`; restore them from a backup (or set them NULL), then run \`alation-keys decrypt ${display}\` again`,
      });
    }
    if (resumable) {
      events.info?.(`resuming job ${resumable.id} (decrypt ${display}) from its checkpoints (${whyStopped(resumable)})`);
    }
    const pre = await preflightJob(pool, opts, events, rows, !!resumable);
    return withKeys(pre, async () => {
      const plans = await planColumns(pool, [col]);
      throwIfStopped(opts.signal, 'during preflight');
      let job: JobRecord;
      if (resumable) {
        job = resumable;
        await reopenJob(pool, job.id);
      } else {
        const envelopeBytes = Object.values(census.versions).reduce((a, v) => a + v.bytes, 0);
        job = await withTransaction(pool, async (tx) => {
          const changed = await changeColumnState(tx, col, 'decrypting', ['encrypted', 'encrypting', 'decrypting']);
          if (!changed) throw new PreconditionError(`${display} changed state meanwhile; nothing was changed`, { hint: 'run the command again' });
          return createJob(tx, {
            actor: opts.actor,
            kind: 'decrypt',
            rowsTotal: census.envelopes,
            detail: { columns: { [display]: initialState(census.envelopes, envelopeBytes) } },
          });
        });
        events.info?.(`job ${job.id}: ${display} is now decrypting (the library writes plaintext and reads both); ${count(census.envelopes, 'envelope')} to decrypt`);
      }
      // The state changed with the job's start (same transaction): settle from then.
      const settleUntil = job.started_at.getTime() + (opts.settleMs ?? DEFAULT_SETTLE_MS);
      const transform = { kind: 'decrypt' as const, deks: [...pre.deks.entries()] };
      return runRewriteJob<DecryptSummary>(pool, opts, events, {
        job,
        gate: pre.gate,
        plans,
        transform,
        startPause: 'job-start',
        resumeCommand: `alation-keys decrypt ${display}`,
        beforeFirstPass: async (stop) => {
          const wait = settleUntil - Date.now();
          if (wait <= 0) return;
          events.info?.(`waiting ${Math.ceil(wait / 1000)}s for application instances to see ${display} as decrypting before the first value is decrypted`);
          await sleep(wait, stop);
        },
        countRemaining: () => countPendingColumns(pool, transform, plans),
        stillUndecryptableSql: (p) => decryptionPendingSql(p, 't'),
        settleUntil,
        wording: decryptionWording(job.id, display),
        complete: async () => {
          const changed = await changeColumnState(pool, col, 'removed', ['decrypting'], pendingRowSql(transform, plans[0]));
          if (changed) events.info?.(`${display} is now removed: plaintext, no longer encrypted by anyone`);
          return changed;
        },
        summarise: (f) => ({
          ok: true,
          result: 'decrypted',
          jobId: job.id,
          resumed: !!resumable,
          column: display,
          valuesBefore: valuesBefore(plans.map((p) => f.states.get(p.name)!)),
          ...runFiguresSummary(plans, f),
          backup: pre.backup,
        }),
      });
    });
  });
}

function decryptionWording(jobId: number, column: string): Convergence['wording'] {
  return {
    settling: (s) => `no envelope is left in ${column}; waiting ${s}s before the last count`,
    nextPass: (n, total, perColumn) => `pass ${n}: ${count(total, 'envelope')} written meanwhile (${perColumn})`,
    stuck: (total, rounds) =>
      new OperationError(`envelopes keep being written to ${column}${total ? ` (${count(total, 'value')})` : ''} after ${count(rounds, 'extra pass', 'extra passes')}; job ${jobId} stays resumable`, {
        hint: `an application instance still encrypts ${column}: restart instances that have not re-read the registry (they should within 30 s), then run \`alation-keys decrypt ${column}\` again`,
      }),
  };
}
