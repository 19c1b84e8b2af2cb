import { Command } from 'commander';
import { listJobs, markOrphanedJobs, requireJob } from '../../core/jobs';
import { requireInitialised } from '../../db/migrations';
import { UsageError } from '../../errors';
import { CommandContext, Runner } from '../context';
import { formatCount, formatTime, renderJobsTable } from '../render';

async function listAction(ctx: CommandContext, opts: { limit?: string; kind?: string }) {
  await requireInitialised(ctx.pool);
  await markOrphanedJobs(ctx.pool);
  const limit = opts.limit === undefined ? 20 : Number(opts.limit);
  if (!Number.isInteger(limit) || limit < 1) throw new UsageError(`--limit must be a positive whole number, got "${opts.limit}"`);
  const jobs = await listJobs(ctx.pool, { limit, kind: opts.kind });
  if (ctx.globals.json) return ctx.io.printJson({ jobs });
  if (jobs.length === 0) return ctx.io.print('no jobs recorded');
  ctx.io.print(renderJobsTable(ctx.io, jobs, { actor: true }));
}

export function register(program: Command, run: Runner): void {
  // `list` is the default subcommand, so `jobs --limit 2` and `jobs list --limit 2` both reach it;
  // the options are declared once, on `list` (declared on both, the parent took them and
  // `jobs list` ignored its own).
  const jobs = program.command('jobs').description('job history (default: list)');
  const list = jobs
    .command('list', { isDefault: true })
    .description('list recent jobs, newest first')
    .option('--limit <n>', 'how many jobs to list', '20')
    .option('--kind <kind>', 'only jobs of this kind (rotate, backup, byok-onboard, …)');
  list.action(run('jobs', list, (ctx, _a, opts) => listAction(ctx, opts)));

  const show = jobs.command('show').description('one job with its detail').argument('<id>', 'job id');
  show.action(
    run('jobs', show, async (ctx, [id]) => {
      await requireInitialised(ctx.pool);
      await markOrphanedJobs(ctx.pool);
      const job = await requireJob(ctx.pool, id);
      if (ctx.globals.json) return ctx.io.printJson({ job });
      const lines = [
        `job ${job.id}: ${job.kind}, ${job.state}`,
        `started   ${formatTime(job.started_at)} by ${job.actor}`,
        `finished  ${formatTime(job.finished_at) || '-'}`,
      ];
      if (job.to_version) lines.push(`versions  ${job.from_version ?? '-'} → ${job.to_version}`);
      lines.push(`progress  ${formatCount(job.rows_done)}${job.rows_total !== null ? ` of ${formatCount(job.rows_total)}` : ''} rows, ${formatCount(job.bytes_done)} bytes`);
      if (job.error) lines.push(`error     ${job.error}`);
      lines.push('detail', JSON.stringify(job.detail, null, 2));
      ctx.io.print(lines.join('\n'));
    }),
  );
}
