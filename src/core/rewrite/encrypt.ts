/**
 * `encrypt [COLUMN…]`: the plaintext already in `encrypting` columns (default: every one)
 * encrypted in place under the primary data key, online, crash-safe and resumable, through
 * the rewrite engine with the encrypt transform (encrypt-transform.ts); then converge, settle,
 * and the column becomes `encrypted` (SPEC 4.2). A column named on the command line that is
 * `encrypted` but holds stray plaintext is handled the same way (it is `encrypting` meanwhile,
 * so the library reads its plaintext).
 *
 *  1. Lock + preflight (job-run.ts): maintenance lock, orphaned jobs marked, malformed
 *     envelopes refused (exit 5) before anything changes, key provider, disk headroom, backup.
 *  2. One transaction: the columns `encrypting`, the job row (kind `encrypt`, to_version the
 *     primary DEK) with each column's plaintext count. An interrupted job is resumed instead.
 *  3. Data: each column streamed in key order; every value that is not an envelope is sealed;
 *     envelopes are opened (checked) and left alone; chunks written with a compare-and-swap on
 *     the value's digest, so a value the application wrote meanwhile is never overwritten.
 *  4. Converge: plaintext written meanwhile is encrypted by further passes; after the settle
 *     time, each column becomes `encrypted` in one statement that checks no plaintext is left.
 */
import { randomBytes } from 'node:crypto';
import { Pool } from 'pg';
import { requireInitialised } from '../../db/migrations';
import { requireTablePrivileges, requireTemporaryTables } from '../../db/privileges';
import { withTransaction } from '../../db/transaction';
import { IntegrityError, OperationError, PreconditionError } from '../../errors';
import { ColumnCensus } from '../census';
import { changeColumnState, EncryptedColumn, findColumn, listColumns, requireRegisteredColumns } from '../columns';
import { formatColumnName } from '../identifiers';
import { createJob, JobRecord, listJobs, reopenJob } from '../jobs';
import { primaryOf, readKeyring } from '../keyring';
import { initialState, valuesBefore } from './checkpoint';
import { Convergence } from './convergence';
import { DryRunChecks, DryRunOptions, estimateSeconds, measureSample, withDryRunChecks } from './dry-run';
import { DEFAULT_SETTLE_MS, JobFigures, whyStopped, UndecryptableValueReport, Events, preflightJob, RewriteJobOptions, runFiguresSummary, runRewriteJob, underMaintenanceLock, withKeys } from './job-run';
import { censusColumns, planColumns, throwIfStopped } from './preflight';
import { countPendingColumns, pendingRowSql } from './transform';
import { encryptionPendingSql } from './encrypt-transform';
import { count, verb } from '../../plural';

export interface EncryptOptions extends RewriteJobOptions {
  /** Columns named on the command line (default: every `encrypting` one). */
  columns?: string[];
  dryRun?: boolean;
}

export interface EncryptSummary extends JobFigures {
  /** False when envelopes that do not decrypt were left untouched (--skip-undecryptable): the job is `failed`. */
  ok: boolean;
  result: 'encrypted';
  jobId: number;
  resumed: boolean;
  /** The data key the plaintext was encrypted under. */
  version: number;
  /** Values read by the first pass: `plaintext` (encrypted) and `envelope` (left alone). */
  valuesBefore: Record<string, number>;
  /** Envelopes left untouched because they do not decrypt (--skip-undecryptable), still in place. */
  undecryptable: UndecryptableValueReport[];
  backup: { jobId: number; file: string } | null;
}

export interface NothingToEncrypt {
  ok: true;
  result: 'nothing-to-do';
  message: string;
}

export interface EncryptPlan extends DryRunChecks {
  ok: true;
  result: 'dry-run';
  resumableJob: { id: number; state: string } | null;
  version: number;
  columns: Array<{ column: string; storage: string; state: string; plaintext: number; plaintextBytes: number; envelopes: number; malformed: number; nulls: number }>;
  rows: number;
  bytes: number;
  sample: { rows: number; bytes: number; seconds: number };
  estimatedSeconds: number | null;
}

export type EncryptResult = EncryptSummary | NothingToEncrypt | EncryptPlan;

/** The columns to encrypt: those named (registered, not `decrypting`), else every `encrypting` one. */
async function selectColumns(pool: Pool, names: string[] | undefined): Promise<EncryptedColumn[]> {
  if (!names || names.length === 0) return (await listColumns(pool)).filter((c) => c.state === 'encrypting');
  const cols = await requireRegisteredColumns(pool, names, (name) => `register it first: \`alation-keys columns add ${name}\``);
  const decrypting = cols.find((c) => c.state === 'decrypting');
  if (decrypting) {
    throw new PreconditionError(`${formatColumnName(decrypting)} is decrypting`, { hint: `finish that first: \`alation-keys decrypt ${formatColumnName(decrypting)}\`` });
  }
  return cols;
}

/**
 * The latest unfinished encrypt job, when every column it was started for is still registered
 * and not `decrypting`, and it covers the columns asked for: it is resumed, with its columns.
 */
async function findResumableEncryption(pool: Pool, asked: string[] | undefined): Promise<{ job: JobRecord; cols: EncryptedColumn[] } | undefined> {
  const [latest] = await listJobs(pool, { kind: 'encrypt', limit: 1 });
  if (!latest || latest.state === 'succeeded') return undefined;
  const names = Object.keys(latest.detail?.columns ?? {});
  const byName = new Map((await listColumns(pool)).map((c) => [formatColumnName(c), c]));
  const cols = names.map((n) => byName.get(n));
  if (names.length === 0 || cols.some((c) => !c || c.state === 'decrypting')) return undefined;
  if (asked?.length && asked.some((n) => !names.includes(n))) return undefined;
  return { job: latest, cols: cols as EncryptedColumn[] };
}

function malformedLines(censuses: ColumnCensus[]): string[] {
  return censuses.filter((c) => c.malformed > 0).map((c) => `${c.column}: ${count(c.malformed, 'value')} ${verb(c.malformed, 'looks like an envelope but is', 'look like envelopes but are')} malformed`);
}

/** Encrypts the plaintext of the columns, resumes an interrupted encrypt job, or (dry run) plans one. */
export async function encrypt(pool: Pool, opts: EncryptOptions = {}, events: Events = {}): Promise<EncryptResult> {
  await requireInitialised(pool);
  const rows = await readKeyring(pool);
  const primary = primaryOf(rows);
  if (!primary) throw new PreconditionError('the keyring has no primary data key', { hint: 'run `alation-keys init`' });
  const selected = await selectColumns(pool, opts.columns);
  const resumable = await findResumableEncryption(pool, opts.columns);
  const cols = resumable?.cols ?? selected;
  if (cols.length === 0) {
    return { ok: true, result: 'nothing-to-do', message: 'no column is encrypting (`columns add` registers a column holding plaintext as encrypting); nothing was changed' };
  }
  const tables = cols.map((c) => ({ schema: c.table_schema, table: c.table_name }));
  if (opts.dryRun) {
    await requireTablePrivileges(pool, tables, ['SELECT'], 'to count and sample the columns');
    return withDryRunChecks(pool, opts as DryRunOptions, rows, !!resumable, (checks) => encryptionPlan(pool, cols, primary.version, resumable?.job, checks));
  }
  await requireTablePrivileges(pool, tables, ['SELECT', 'UPDATE'], 'to encrypt the columns in place');
  await requireTemporaryTables(pool, 'to stage the encrypted values');

  return underMaintenanceLock(pool, async () => {
    // Again under the lock: markOrphanedJobs may just have marked the job interrupted.
    const again = await findResumableEncryption(pool, opts.columns);
    const jobCols = again?.cols ?? cols;
    const censuses = await censusColumns(pool, jobCols);
    const malformed = malformedLines(censuses);
    if (malformed.length > 0 && !opts.skipUndecryptable) {
      throw new IntegrityError(`encrypt refused: ${malformed.join('; ')}; nothing was changed`, undefined, {
        hint: 'list them with `alation-keys verify COLUMN`; restore them from a backup (or set them NULL), then run `alation-keys encrypt` again (or pass --skip-undecryptable to leave them and encrypt the rest)',
      });
    }
    if (again) {
      events.info?.(`resuming job ${again.job.id} (encrypt ${jobCols.map(formatColumnName).join(', ')}) from its checkpoints (${whyStopped(again.job)})`);
    }
    const pre = await preflightJob(pool, opts, events, rows, !!again);
    return withKeys(pre, async () => {
      const plans = await planColumns(pool, jobCols);
      throwIfStopped(opts.signal, 'during preflight');
      let job: JobRecord;
      if (again) {
        job = again.job;
        await reopenJob(pool, job.id);
      } else {
        job = await withTransaction(pool, async (tx) => {
          for (const c of jobCols) await changeColumnState(tx, c, 'encrypting', ['encrypted', 'encrypting']);
          return createJob(tx, {
            actor: opts.actor,
            kind: 'encrypt',
            toVersion: primary.version,
            rowsTotal: censuses.reduce((a, c) => a + c.plaintext, 0),
            detail: { columns: Object.fromEntries(censuses.map((c) => [c.column, initialState(c.plaintext, c.plaintextBytes)])) },
          });
        });
        events.info?.(`job ${job.id}: encrypting ${censuses.map((c) => `${c.column} (${count(c.plaintext, 'plaintext value')})`).join(', ')} under data key v${job.to_version}`);
      }
      const toVersion = job.to_version!;
      const dek = pre.deks.get(toVersion);
      if (!dek) throw new IntegrityError(`data key v${toVersion} of job ${job.id} could not be unwrapped`, { version: toVersion });
      const destroyed = rows.filter((k) => k.state === 'destroyed').map((k) => k.version);
      const transform = { kind: 'encrypt' as const, toVersion, dek, deks: [...pre.deks.entries()], destroyed };
      return runRewriteJob<EncryptSummary>(pool, opts, events, {
        job,
        gate: pre.gate,
        plans,
        transform,
        startPause: 'job-start',
        resumeCommand: 'alation-keys encrypt',
        countRemaining: () => countPendingColumns(pool, transform, plans),
        // A recorded envelope that does not decrypt is left while it is still an envelope.
        stillUndecryptableSql: (p) => `NOT (${encryptionPendingSql(p, 't')})`,
        settleUntil: job.started_at.getTime() + (opts.settleMs ?? DEFAULT_SETTLE_MS),
        wording: encryptionWording(job.id),
        complete: async () => {
          let all = true;
          for (const p of plans) {
            const changed = await changeColumnState(pool, p.col, 'encrypted', ['encrypting'], pendingRowSql(transform, p));
            if (changed) events.info?.(`${p.name} is now encrypted`);
            all &&= changed || (await findColumn(pool, p.name))?.state === 'encrypted';
          }
          return all;
        },
        summarise: (f) => ({
          ok: f.undecryptable.length === 0,
          result: 'encrypted',
          jobId: job.id,
          resumed: !!again,
          version: toVersion,
          valuesBefore: valuesBefore(plans.map((p) => f.states.get(p.name)!)),
          ...runFiguresSummary(plans, f),
          undecryptable: f.undecryptable,
          backup: pre.backup,
        }),
      });
    });
  });
}

function encryptionWording(jobId: number): Convergence['wording'] {
  return {
    settling: (s) => `no plaintext is left; waiting ${s}s for application instances to see the columns as encrypting before the last count`,
    nextPass: (n, total, perColumn) => `pass ${n}: ${count(total, 'plaintext value')} written meanwhile (${perColumn})`,
    stuck: (total, rounds) =>
      new OperationError(`plaintext keeps being written${total ? ` (${count(total, 'value')})` : ''} after ${count(rounds, 'extra pass', 'extra passes')}; job ${jobId} stays resumable`, {
        hint: 'something writes plaintext without the library (which encrypts a column in state encrypting): make it write through the library, then run `alation-keys encrypt` again',
      }),
  };
}

async function encryptionPlan(pool: Pool, cols: EncryptedColumn[], version: number, resumable: JobRecord | undefined, checks: DryRunChecks): Promise<EncryptPlan> {
  const censuses = await censusColumns(pool, cols);
  const preflight = [...checks.preflight, ...malformedLines(censuses)];
  const plans = await planColumns(pool, cols);
  const throwaway = randomBytes(32);
  // Only plaintext is sampled (pendingOnly), so no envelope is opened: no data key is needed.
  const sample = await measureSample(pool, plans, { kind: 'encrypt', toVersion: version, dek: throwaway, deks: [] });
  const rows = censuses.reduce((a, c) => a + c.plaintext, 0);
  const bytes = censuses.reduce((a, c) => a + c.plaintextBytes, 0);
  return {
    ok: true,
    result: 'dry-run',
    ...checks,
    preflight,
    resumableJob: resumable ? { id: resumable.id, state: resumable.state } : null,
    version,
    columns: censuses.map((c) => ({
      column: c.column,
      storage: c.storage,
      state: c.state,
      plaintext: c.plaintext,
      plaintextBytes: c.plaintextBytes,
      envelopes: c.envelopes,
      malformed: c.malformed,
      nulls: c.nulls,
    })),
    rows,
    bytes,
    sample,
    estimatedSeconds: estimateSeconds(sample, rows, bytes),
  };
}
