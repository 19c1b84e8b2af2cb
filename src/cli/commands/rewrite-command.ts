/**
 * The options every rewrite job (rotate, encrypt, decrypt) takes on the command line, declared
 * and parsed once, and how each runs its job: a pool sized for its workers, progress on
 * stderr, SIGINT/SIGTERM as a clean stop at the next checkpoint.
 */
import { Command } from 'commander';
import { describeFreeSpace, describeRequired, Headroom, HEADROOM_RULE, parseByteSize } from '../../core/headroom';
import { DEFAULT_BATCH_SIZE, JobFigures, RewriteJobOptions, UndecryptableValueReport } from '../../core/rewrite/job-run';
import { ColumnProgress, RewriteEvents } from '../../core/rewrite/engine';
import { formatDuration, parseDuration, parsePositiveInt, parsePositiveNumber } from '../../core/rewrite/util';
import { createPool } from '../../db/connection';
import { testFreeBytesOverride, testPauseFromEnv } from '../../core/test-hooks';
import { describeReason } from '../../core/rewrite/undecryptable';
import { Pool } from 'pg';
import { CommandContext } from '../context';
import { IOStreams } from '../io';
import { ProgressDisplay } from '../progress';
import { formatCount, renderTable } from '../render';
import { addStandbyOptions, describeThrottled, parseStandbyOptions, StandbyFlags } from '../standby-options';
import { count } from '../../plural';

export type { ColumnProgress };

/** Adds the shared options; `verb` names the job in their help ("rotate", "encrypt", …). */
export function addRewriteOptions(cmd: Command, verb: string, has: { skipUndecryptable: boolean }, settleHelp: string): Command {
  if (has.skipUndecryptable) {
    cmd.option('--skip-undecryptable', 'rewrite every value that can be; leave each that does not decrypt untouched and listed in the job (its data key stays active); exit 5');
  }
  cmd
    .option('--workers <n>', 'columns rewritten in parallel, each on its own connections', '1')
    .option('--batch-size <n>', 'values per chunk (one transaction each)', String(DEFAULT_BATCH_SIZE))
    .option('--max-rate <rows/s>', 'throttle: at most this many values per second')
    .option('--max-backup-age <duration>', 'a successful backup younger than this is required', '24h')
    .option('--skip-backup-check', `${verb} without a recent backup`)
    .option('--backup', 'take a backup first (under the same lock)')
    .option('--backup-dir <dir>', 'where --backup writes (else $ALATION_KEYS_BACKUP_DIR, else /var/backups/alation-keys)')
    .option('--data-dir <path>', "the server's data directory as mounted on this host, for the disk headroom check")
    .option('--free-space <bytes>', "free space on the server's volume (e.g. 120GB), for a server whose data directory this host cannot see")
    .option('--skip-disk-check', `${verb} without the disk headroom check (free ≥ ${HEADROOM_RULE})`)
    .option('--settle-time <duration>', settleHelp, '35s');
  return addStandbyOptions(cmd);
}

/** The shared flags as commander gives them (addRewriteOptions). */
export interface RewriteFlags extends StandbyFlags {
  workers: string;
  batchSize: string;
  maxRate?: string;
  maxBackupAge: string;
  skipBackupCheck?: boolean;
  backup?: boolean;
  backupDir?: string;
  dataDir?: string;
  freeSpace?: string;
  skipDiskCheck?: boolean;
  settleTime: string;
  skipUndecryptable?: boolean;
}

/** The parsed shared options (bad values: exit 2 naming the option). */
export function rewriteJobOptions(ctx: CommandContext, opts: RewriteFlags, signal: AbortSignal): RewriteJobOptions & { workers: number } {
  return {
    workers: parsePositiveInt(opts.workers, '--workers', 64),
    batchSize: parsePositiveInt(opts.batchSize, '--batch-size', 1_000_000),
    maxRate: opts.maxRate !== undefined ? parsePositiveNumber(opts.maxRate, '--max-rate') : undefined,
    maxBackupAgeMs: parseDuration(opts.maxBackupAge, '--max-backup-age'),
    skipBackupCheck: !!opts.skipBackupCheck,
    backup: !!opts.backup,
    backupDir: ctx.backupDir(opts.backupDir),
    pgDump: ctx.env.ALATION_KEYS_PG_DUMP,
    chunkBytes: Number(ctx.env.ALATION_KEYS_ROTATE_CHUNK_BYTES) || undefined,
    dataDir: opts.dataDir,
    freeSpaceBytes: opts.freeSpace !== undefined ? parseByteSize(opts.freeSpace, '--free-space') : undefined,
    skipDiskCheck: !!opts.skipDiskCheck,
    serverIsLocal: ctx.serverIsLocal,
    settleMs: /^\s*0+\s*$/.test(String(opts.settleTime)) ? 0 : parseDuration(opts.settleTime, '--settle-time'),
    providerOptions: ctx.providerOptions,
    actor: ctx.actor,
    env: ctx.env,
    databaseUrl: ctx.globals.databaseUrl,
    skipUndecryptable: !!opts.skipUndecryptable,
    ...parseStandbyOptions(opts),
    signal,
    pause: testPauseFromEnv(ctx.env),
    testFreeBytes: testFreeBytesOverride(ctx.env),
  };
}

/**
 * Runs a rewrite job from the command line: options parsed, a pool of 2 × workers + 6
 * connections, progress as `label`, interrupts handled; the pool is closed afterwards.
 */
export async function runRewriteCommand<T>(
  ctx: CommandContext,
  opts: RewriteFlags,
  label: string,
  job: (pool: Pool, options: RewriteJobOptions, events: RewriteEvents) => Promise<T>,
): Promise<T> {
  const signal = ctx.handleInterrupts();
  const options = rewriteJobOptions(ctx, opts, signal);
  const pool = createPool({ databaseUrl: ctx.globals.databaseUrl, command: ctx.command, max: 2 * options.workers + 6 });
  const display = new ProgressDisplay(ctx.io, label);
  try {
    const result = await job(pool, options, display.events());
    display.stop();
    return result;
  } catch (err) {
    display.fail();
    throw err;
  } finally {
    await pool.end().catch(() => undefined);
  }
}

const MB = 1024 * 1024;

/**
 * The figures every finished rewrite job reports: a row per column, then totals and this run's
 * rewrite rates, the settle wait (`settleReason`: what it waited for) and the time in all.
 */
export function renderJobFigures(io: IOStreams, s: JobFigures & { resumed: boolean }, settleReason: string): string[] {
  const out: string[] = [];
  if (s.columns.length) {
    out.push(
      renderTable(
        io,
        ['column', 'storage', 'values', 'MB', 'changed meanwhile', 'passes'],
        s.columns.map((c) => [c.column, c.storage, formatCount(c.rows), (c.bytes / MB).toFixed(1), formatCount(c.skippedConcurrent), c.passes]),
      ),
    );
  }
  const thisRun = s.resumed ? ` (this run: ${formatCount(s.rowsThisRun)} values, ${(s.bytesThisRun / MB).toFixed(1)} MB)` : '';
  out.push(
    `${count(s.rows, 'value', 'values', formatCount)}, ${(s.bytes / MB).toFixed(1)} MB${thisRun} rewritten in ${s.rewriteSeconds}s (${formatCount(s.rowsPerSecond)} values/s, ${s.megabytesPerSecond} MB/s); ${count(s.passes, 'pass', 'passes')}, ${count(s.vacuums, 'vacuum')}`,
    `settle wait ${s.settleSeconds}s (${settleReason}; --settle-time); ${s.durationSeconds}s in all`,
  );
  const waited = describeThrottled(s.throttled);
  if (waited) out.push(waited);
  return out;
}

/** The tail of every dry run: disk, backup, the estimate, what the real run would refuse now. */
export function renderDryRunChecks(
  io: IOStreams,
  p: { headroom: Headroom; backup: { jobId: number; ageHours: number } | null; estimatedSeconds: number | null; sample: { rows: number; seconds: number }; preflight: string[] },
): string[] {
  const out: string[] = [];
  const h = p.headroom;
  out.push(`disk: needs ${describeRequired(h)}, ${h.freeBytes === null ? `free unknown (${h.reason})` : describeFreeSpace(h)}`);
  out.push(p.backup ? `last backup: job ${p.backup.jobId}, ${p.backup.ageHours}h ago` : 'last backup: none recorded');
  out.push(
    `estimated duration: ${p.estimatedSeconds === null ? 'unknown' : formatDuration(p.estimatedSeconds * 1000)} (from a sample of ${formatCount(p.sample.rows)} values in ${p.sample.seconds}s)`,
  );
  if (p.preflight.length) {
    out.push(io.bad('would refuse now:'));
    for (const x of p.preflight) out.push(`  - ${x}`);
  } else {
    out.push(io.ok('preflight: ok'));
  }
  out.push('nothing was changed');
  return out;
}

/** Values left untouched shown on a terminal; --json has all of them. */
const UNDECRYPTABLE_SHOWN = 20;

/** The values a job left untouched because they do not decrypt (--skip-undecryptable), the first 20. */
export function renderUndecryptable(io: IOStreams, jobId: number, left: UndecryptableValueReport[]): string[] {
  if (left.length === 0) return [];
  const shown = left.slice(0, UNDECRYPTABLE_SHOWN);
  const out = [io.bad(`left untouched, they do not decrypt${left.length > shown.length ? ` (the first ${shown.length} of ${formatCount(left.length)}; --json and \`jobs show ${jobId}\` list all)` : ''}:`)];
  for (const u of shown) out.push(`  ${u.column} at ${Object.entries(u.key).map(([k, v]) => `${k}=${v}`).join(', ')}: value ${describeReason(u.reason, u.version)}`);
  return out;
}
