import { Command } from 'commander';
import { rotate, RotatePlan, RotateSummary, undecryptableMessage } from '../../core/rewrite/rotate';
import { IntegrityError } from '../../errors';
import { masterKeyRewriteHooks } from '../../core/test-hooks';
import { nonEnvelopeError } from '../../core/census';
import { formatDuration, parseDuration } from '../../core/rewrite/util';
import { Runner } from '../context';
import { IOStreams } from '../io';
import { RewriteFlags, addRewriteOptions, renderDryRunChecks, renderJobFigures, renderUndecryptable, runRewriteCommand } from './rewrite-command';
import { formatCount, renderTable } from '../render';

/** rotate's flags: the shared rewrite flags and its own. */
interface RotateFlags extends RewriteFlags {
  dryRun?: boolean;
  ifOlderThan?: string;
}

export function register(program: Command, run: Runner): void {
  const cmd = program
    .command('rotate')
    .description('new data key, then re-encrypt every registered column under it (online, resumable); resumes an interrupted rotation')
    .option('--dry-run', 'print the plan (rows and bytes per version, disk, estimated duration) and change nothing')
    .option('--if-older-than <duration>', 'rotate only when the primary data key is older than this (e.g. 90d); else exit 0 "not due"');
  addRewriteOptions(cmd, 'rotate', { skipUndecryptable: true }, 'wait at least this long after the new key is published before the final count (application instances re-read the keyring every 30 s)');
  cmd.action(
    run('rotate', cmd, async (ctx, _args, opts: RotateFlags) => {
      const ifOlderThanMs = opts.ifOlderThan !== undefined ? parseDuration(opts.ifOlderThan, '--if-older-than') : undefined;
      const result = await runRewriteCommand(ctx, opts, 'rotating', (pool, options, events) =>
        rotate(pool, { ...options, dryRun: !!opts.dryRun, ifOlderThanMs, masterKeyRewriteHooks: masterKeyRewriteHooks(ctx.env) }, events),
      );
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
    }),
  );
}

const MB = 1024 * 1024;

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
  out.push(...renderJobFigures(io, s, 'application instances load the new key before the last count'));
  out.push(...renderUndecryptable(io, s.jobId, s.undecryptable));
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
  out.push(...renderDryRunChecks(io, p));
  out.push(...renderWalEstimate(p.wal));
  return out.join('\n');
}

/** The WAL a rotation will write and the checkpoints inside it (README "Performance → WAL"). */
function renderWalEstimate(w: RotatePlan['wal']): string[] {
  const mb = (n: number) => `${formatCount(Math.round(n / MB))} MB`;
  const images = w.fullPageWrites ? `one image of each page that changes ${mb(w.pageImageBytes)}` : 'no page images: full_page_writes is off';
  const checkpoints =
    w.checkpointsDuring === 0
      ? `none expected (max_wal_size: one every ${mb(w.bytesBetweenCheckpoints)} of WAL)`
      : `about ${formatCount(w.checkpointsDuring)} (max_wal_size: one every ${mb(w.bytesBetweenCheckpoints)} of WAL); after each, pages are imaged again where a table's key order does not follow its pages (README "Performance → WAL")`;
  return [`WAL to expect: about ${mb(w.bytes)} (the new values ${mb(w.recordBytes)}, ${images})`, `checkpoints during it: ${checkpoints}`];
}
