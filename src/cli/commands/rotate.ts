import { Command } from 'commander';
import { describeFreeSpace, describeRequired, HEADROOM_RULE, parseByteSize } from '../../core/headroom';
import { DEFAULT_BATCH_SIZE, rotate, RotatePlan, RotateSummary, undecryptableMessage } from '../../core/rewrite/rotate';
import { describeReason } from '../../core/rewrite/undecryptable';
import { IntegrityError } from '../../errors';
import { nonEnvelopeError } from '../../core/census';
import { masterKeyRewriteHooks, testFreeBytesOverride, testPauseFromEnv } from '../../core/test-hooks';
import { createPool } from '../../db/connection';
import { formatDuration, parseDuration, parsePositiveInt, parsePositiveNumber } from '../../core/rewrite/util';
import { Runner } from '../context';
import { addStandbyOptions, describeThrottled, parseStandbyOptions } from '../standby-options';
import { IOStreams } from '../io';
import { ProgressDisplay } from '../progress';
import { formatCount, renderTable } from '../render';
import { count } from '../../plural';

export function register(program: Command, run: Runner): void {
  const cmd = program
    .command('rotate')
    .description('new data key, then re-encrypt every registered column under it (online, resumable); resumes an interrupted rotation')
    .option('--dry-run', 'print the plan (rows and bytes per version, disk, estimated duration) and change nothing')
    .option('--if-older-than <duration>', 'rotate only when the primary data key is older than this (e.g. 90d); else exit 0 "not due"')
    .option('--workers <n>', 'columns rewritten in parallel, each on its own connections', '1')
    .option('--batch-size <n>', 'values per chunk (one transaction each)', String(DEFAULT_BATCH_SIZE))
    .option('--max-rate <rows/s>', 'throttle: at most this many values per second')
    .option('--max-backup-age <duration>', 'a successful backup younger than this is required', '24h')
    .option('--skip-backup-check', 'rotate without a recent backup')
    .option('--backup', 'take a backup first (under the same lock)')
    .option('--backup-dir <dir>', 'where --backup writes (else $ALATION_KEYS_BACKUP_DIR, else /var/backups/alation-keys)')
    .option('--data-dir <path>', "the server's data directory as mounted on this host, for the disk headroom check")
    .option('--free-space <bytes>', "free space on the server's volume (e.g. 120GB), for a server whose data directory this host cannot see")
    .option('--skip-disk-check', `rotate without the disk headroom check (free ≥ ${HEADROOM_RULE})`)
    .option('--skip-undecryptable', 'rewrite every value that decrypts; leave each that does not untouched and listed in the job (its data key stays active); exit 5')
    .option('--settle-time <duration>', 'wait at least this long after the new key is published before the final count (application instances re-read the keyring every 30 s)', '35s');
  addStandbyOptions(cmd);
  cmd.action(
    run('rotate', cmd, async (ctx, _args, opts) => {
      const workers = parsePositiveInt(opts.workers, '--workers', 64);
      const batchSize = parsePositiveInt(opts.batchSize, '--batch-size', 1_000_000);
      const maxRate = opts.maxRate !== undefined ? parsePositiveNumber(opts.maxRate, '--max-rate') : undefined;
      const maxBackupAgeMs = parseDuration(opts.maxBackupAge, '--max-backup-age');
      const ifOlderThanMs = opts.ifOlderThan !== undefined ? parseDuration(opts.ifOlderThan, '--if-older-than') : undefined;
      const settleMs = /^\s*0+\s*$/.test(String(opts.settleTime)) ? 0 : parseDuration(opts.settleTime, '--settle-time');
      const standby = parseStandbyOptions(opts);
      const freeSpaceBytes = opts.freeSpace !== undefined ? parseByteSize(opts.freeSpace, '--free-space') : undefined;
      const signal = ctx.handleInterrupts();
      const pool = createPool({ databaseUrl: ctx.globals.databaseUrl, command: 'rotate', max: 2 * workers + 6 });
      const display = new ProgressDisplay(ctx.io, 'rotating');
      try {
        const result = await rotate(
          pool,
          {
            dryRun: !!opts.dryRun,
            ifOlderThanMs,
            workers,
            batchSize,
            maxRate,
            maxBackupAgeMs,
            skipBackupCheck: !!opts.skipBackupCheck,
            backup: !!opts.backup,
            backupDir: ctx.backupDir(opts.backupDir),
            pgDump: ctx.env.ALATION_KEYS_PG_DUMP,
            chunkBytes: Number(process.env.ALATION_KEYS_ROTATE_CHUNK_BYTES) || undefined,
            dataDir: opts.dataDir,
            freeSpaceBytes,
            skipDiskCheck: !!opts.skipDiskCheck,
            serverIsLocal: ctx.serverIsLocal,
            settleMs,
            skipUndecryptable: !!opts.skipUndecryptable,
            ...standby,
            providerOptions: ctx.providerOptions,
            actor: ctx.actor,
            env: ctx.env,
            databaseUrl: ctx.globals.databaseUrl,
            signal,
            pause: testPauseFromEnv(ctx.env),
            masterKeyRewriteHooks: masterKeyRewriteHooks(ctx.env),
            testFreeBytes: testFreeBytesOverride(ctx.env),
          },
          display.events(),
        );
        display.stop();
        if (ctx.globals.json) ctx.io.printJson(result);
        else if (result.result === 'not-due') {
          // Cron's line: with --quiet a run that is not due prints nothing (the reason stays in --json).
          if (ctx.globals.quiet) return;
          ctx.io.print(
            `not due: primary data key v${result.primaryVersion} is ${formatDuration(result.primaryAgeSeconds * 1000)} old (rotate when older than ${formatDuration(result.ifOlderThanSeconds * 1000)})`,
          );
        } else if (result.result === 'dry-run') {
          ctx.io.print(renderPlan(ctx.io, result));
        } else {
          ctx.io.print(renderSummary(ctx.io, result));
        }
        if (result.result === 'rotated' && !result.ok) {
          throw new IntegrityError(`rotation job ${result.jobId}: ${undecryptableMessage(result.undecryptable)}`, undefined, {
            reported: true,
            hint: 'README "Values that do not decrypt": restore or clear them, then run `alation-keys rotate` again to finish this job and retire the old keys',
          });
        }
        if (result.result === 'dry-run' && result.nonEnvelopes.length > 0 && !opts.skipUndecryptable) {
          throw nonEnvelopeError(result.nonEnvelopes, 'the rotation would be refused', { reported: true });
        }
      } catch (err) {
        display.fail();
        throw err;
      } finally {
        await pool.end().catch(() => undefined);
      }
    }),
  );
}

const MB = 1024 * 1024;
/** Values left untouched shown on a terminal; --json has all of them. */
const UNDECRYPTABLE_SHOWN = 20;

function versionsLine(v: Record<string, number>): string {
  const e = Object.entries(v);
  return e.length ? e.map(([k, n]) => `v${k}: ${formatCount(n)}`).join(', ') : 'none';
}

function renderSummary(io: IOStreams, s: RotateSummary): string {
  const out: string[] = [];
  const head = (t: string) => (s.ok ? io.ok(t) : io.bad(t));
  out.push(head(`rotation job ${s.jobId} ${s.ok ? 'succeeded' : 'rewrote every value that decrypts'}${s.resumed ? ' (resumed)' : ''}: data key v${s.toVersion} is primary, KEK ${s.kekId}`));
  out.push(`values per version before: ${versionsLine(s.valuesBefore)}`);
  out.push(`values per version after:  ${versionsLine(s.valuesAfter)}`);
  out.push(`retired: ${s.retiredVersions.length ? s.retiredVersions.map((v) => `v${v}`).join(', ') : 'none'} (kept for old backups, never destroyed by rotate)`);
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
    `settle wait ${s.settleSeconds}s (application instances load the new key before the last count; --settle-time); ${s.durationSeconds}s in all`,
  );
  if (s.undecryptable.length) {
    const shown = s.undecryptable.slice(0, UNDECRYPTABLE_SHOWN);
    out.push(io.bad(`left untouched, they do not decrypt${s.undecryptable.length > shown.length ? ` (the first ${shown.length} of ${formatCount(s.undecryptable.length)}; --json and \`jobs show ${s.jobId}\` list all)` : ''}:`));
    for (const u of shown) out.push(`  ${u.column} at ${Object.entries(u.key).map(([k, v]) => `${k}=${v}`).join(', ')}: value ${describeReason(u.reason, u.version)}`);
  }
  const waited = describeThrottled(s.throttled);
  if (waited) out.push(waited);
  out.push(`recommended: ${s.recommendation}`);
  return out.join('\n');
}

function renderPlan(io: IOStreams, p: RotatePlan): string {
  const out: string[] = [];
  out.push(
    p.resumableJob
      ? `dry run: would resume job ${p.resumableJob.id} (v${p.resumableJob.fromVersion}→v${p.resumableJob.toVersion}, ${p.resumableJob.state})`
      : `dry run: would create data key v${p.newVersion} (primary now v${p.primaryVersion}, provider ${p.provider}) and re-encrypt:`,
  );
  out.push(
    renderTable(
      io,
      ['column', 'storage', 'values to rewrite', 'MB', 'per version', 'plaintext', 'NULL'],
      p.columns.map((c) => [
        c.column,
        c.storage,
        formatCount(c.rows),
        (c.bytes / MB).toFixed(1),
        c.perVersion.map((v) => `v${v.version ?? '?'}: ${formatCount(v.values)}`).join(', '),
        formatCount(c.plaintext),
        formatCount(c.nulls),
      ]),
    ),
  );
  const h = p.headroom;
  out.push(
    `disk: needs ${describeRequired(h)}, ${h.freeBytes === null ? `free unknown (${h.reason})` : describeFreeSpace(h)}`,
  );
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
  return out.join('\n');
}
