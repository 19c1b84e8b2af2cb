import { Command } from 'commander';
import { collectStatus, ColumnVersionCounts, StatusReport } from '../../core/status';
import { describeFreeSpace, describeRequired, formatBytes, parseByteSize } from '../../core/headroom';
import { collectMetrics } from '../../core/metrics';
import { PreconditionError, UsageError } from '../../errors';
import { replaceFileAtomically } from '../../files/atomic-file';
import { renderPrometheus } from '../prometheus';
import { IOStreams } from '../io';
import { CommandContext, Runner } from '../context';
import { formatCount, formatTime, renderJobsTable, renderTable } from '../render';
import { count, verb } from '../../plural';

/** status's flags as commander gives them (--no-provider-check: providerCheck false). */
interface StatusFlags {
  check?: boolean;
  dataDir?: string;
  freeSpace?: string;
  providerCheck: boolean;
  prometheus?: boolean;
  output?: string;
}

export function register(program: Command, run: Runner): void {
  const cmd = program
    .command('status')
    .description('provider, keys with values per version, last backup, disk headroom, recent jobs')
    .option('--check', 'exit 3 when something needs attention (for monitoring)')
    .option('--data-dir <path>', "the server's data directory as mounted on this host, for the headroom check")
    .option('--free-space <bytes>', "free space on the server's volume (e.g. 120GB), for a server whose data directory this host cannot see")
    .option('--no-provider-check', 'do not contact the key provider')
    .option('--prometheus', 'print the figures as Prometheus metrics (text exposition format)')
    .option('--output <file>', "with --prometheus: write them to FILE atomically (for node_exporter's textfile collector)");
  cmd.action(
    run('status', cmd, async (ctx, _args, opts: StatusFlags) => {
      const statusOptions = {
        ...ctx.providerOptions,
        dataDir: opts.dataDir,
        freeSpaceBytes: opts.freeSpace !== undefined ? parseByteSize(opts.freeSpace, '--free-space') : undefined,
        serverIsLocal: ctx.serverIsLocal,
        checkProvider: opts.providerCheck !== false,
      };
      if (opts.output !== undefined && !opts.prometheus) throw new UsageError('--output goes with --prometheus', { hint: 'alation-keys status --prometheus --output FILE' });
      if (opts.prometheus) return prometheusStatus(ctx, statusOptions, { output: opts.output, check: !!opts.check });
      const report = await collectStatus(ctx.pool, statusOptions);
      if (ctx.globals.json) ctx.io.printJson(report);
      else ctx.io.print(renderStatus(ctx.io, report));
      if (opts.check && report.attention.length > 0) {
        throw new PreconditionError(`${count(report.attention.length, 'thing')} ${verb(report.attention.length, 'needs', 'need')} attention`, { reported: true });
      }
    }),
  );
}

async function prometheusStatus(
  ctx: CommandContext,
  statusOptions: Parameters<typeof collectMetrics>[1],
  opts: { output?: string; check: boolean },
): Promise<void> {
  if (ctx.globals.json) throw new UsageError('--prometheus and --json are two different outputs; choose one');
  if (opts.output === '') throw new UsageError('--output needs a file name');
  const families = await collectMetrics(ctx.pool, statusOptions);
  const text = renderPrometheus(families);
  if (opts.output) {
    replaceFileAtomically(opts.output, text, 0o644);
    ctx.io.info(`wrote ${families.length} metric families to ${opts.output}`);
  } else {
    ctx.io.print(text);
  }
  const attention = families.find((f) => f.name === 'alation_keys_attention_items')?.samples[0]?.value ?? 0;
  if (opts.check && attention > 0) throw new PreconditionError(`${count(attention, 'thing')} ${verb(attention, 'needs', 'need')} attention`, { reported: true });
}

export function renderStatus(io: IOStreams, r: StatusReport): string {
  const out: string[] = [];
  const p = r.provider;
  const reach = p.reachable === null ? 'not checked' : p.reachable ? io.ok('reachable') : io.bad(`unreachable: ${p.error}`);
  out.push(`installation ${r.installationId}`);
  out.push(`key provider ${p.kind}, KEK ${p.kekId ?? 'unknown'} (${reach})`);
  if (p.aws) {
    out.push(`  region ${p.aws.region}, role ${p.aws.roleArn}, ExternalId ${p.aws.externalId}, BYOK since ${p.byokEnabledAt ?? '?'}`);
  }
  out.push('');
  out.push('data keys');
  out.push(
    renderTable(
      io,
      ['version', 'state', 'age', 'KEK', 'values', 'per column'],
      r.keys.map((k) => [
        k.version,
        k.state,
        `${k.ageDays}d`,
        k.kekId,
        formatCount(k.values),
        Object.entries(k.valuesByColumn)
          .map(([c, n]) => `${c}: ${formatCount(n)}`)
          .join('\n'),
      ]),
    ),
  );
  if (r.columns.length) {
    out.push('');
    out.push('columns');
    out.push(renderColumnCensus(io, r.columns));
  }
  out.push('');
  const b = r.lastBackup;
  out.push(
    b ? `last backup: job ${b.jobId}, ${formatTime(b.finishedAt)} (${b.ageHours}h ago)${b.file ? `, ${b.file}` : ''}` : 'last backup: none recorded',
  );
  const h = r.headroom;
  out.push(
    h.freeBytes === null
      ? `disk headroom: unknown (${h.reason}); a rotation needs ${formatBytes(h.requiredBytes)}`
      : `disk headroom: ${describeFreeSpace(h)}, a rotation needs ${describeRequired(h)} ${h.ok ? io.ok('ok') : io.bad('NOT ENOUGH')}`,
  );
  if (r.recentJobs.length) {
    out.push('');
    out.push('recent jobs');
    out.push(renderJobsTable(io, r.recentJobs));
  }
  out.push('');
  if (r.attention.length) {
    out.push(io.bad('needs attention:'));
    for (const a of r.attention) out.push(`  - ${a}`);
  } else {
    out.push(io.ok('nothing needs attention'));
  }
  return out.join('\n');
}

/** Values per DEK version, plaintext, malformed and NULLs of each column (status, columns list). */
export function renderColumnCensus(io: IOStreams, columns: ColumnVersionCounts[]): string {
  return renderTable(
    io,
    ['column', 'state', 'per data key', 'plaintext', 'malformed', 'NULL'],
    columns.map((c) => [
      c.column,
      c.state,
      Object.entries(c.versions)
        .map(([v, n]) => `v${v}: ${formatCount(n)}`)
        .join('\n'),
      c.plaintext > 0 && c.state === 'encrypted' ? io.bad(formatCount(c.plaintext)) : formatCount(c.plaintext),
      c.malformed > 0 ? io.bad(formatCount(c.malformed)) : formatCount(c.malformed),
      formatCount(c.nulls),
    ]),
  );
}
