import { Command } from 'commander';
import { DEFAULT_SCAN_BOUND } from '../../core/envelope-scan';
import { parsePositiveInt } from '../../core/rewrite/util';
import { describeReason } from '../../core/rewrite/undecryptable';
import { verify, VerifyReport } from '../../core/rewrite/verify';
import { testPauseFromEnv } from '../../core/test-hooks';
import { createPool } from '../../db/connection';
import { IntegrityError, UsageError } from '../../errors';
import { Runner } from '../context';
import { IOStreams } from '../io';
import { ProgressDisplay } from '../progress';
import { formatCount, renderTable } from '../render';
import { count, verb } from '../../plural';

/** Failures shown on a terminal; --json has all of them. */
const FAILURES_SHOWN = 20;

export function register(program: Command, run: Runner): void {
  const cmd = program
    .command('verify')
    .description('read-only: decrypt every value of the registered columns, list each one that fails, look for envelopes in unregistered columns')
    .argument('[columns...]', 'SCHEMA.TABLE.COLUMN (default: every registered column, and the look at unregistered ones)')
    .option('--workers <n>', 'columns verified at once, each in a reader thread of its own', '1')
    .option('--scan-limit <n>', 'most values looked at in each unregistered text/bytea column (0: do not look)', String(DEFAULT_SCAN_BOUND));
  cmd.action(
    run('verify', cmd, async (ctx, columns, opts: { workers: string; scanLimit: string }) => {
      const workers = parsePositiveInt(opts.workers, '--workers', 64);
      const scanBound = /^\s*0+\s*$/.test(String(opts.scanLimit)) ? 0 : parsePositiveInt(opts.scanLimit, '--scan-limit', 100_000_000);
      if (columns.length > 0 && opts.scanLimit !== String(DEFAULT_SCAN_BOUND)) {
        throw new UsageError('--scan-limit goes with verifying every registered column', { hint: 'leave out the column names to also look at unregistered columns' });
      }
      const signal = ctx.handleInterrupts();
      const pool = createPool({ databaseUrl: ctx.globals.databaseUrl, command: 'verify', max: 2 * workers + 4 });
      const display = new ProgressDisplay(ctx.io, 'verifying');
      try {
        const report = await verify(
          pool,
          { columns, workers, scanBound, providerOptions: ctx.providerOptions, actor: ctx.actor, pause: testPauseFromEnv(ctx.env), signal },
          display.events(),
        );
        display.stop();
        if (ctx.globals.json) ctx.io.printJson(report);
        else ctx.io.print(renderReport(ctx.io, report));
        if (!report.ok) {
          const parts = [];
          if (report.failed > 0) parts.push(`${count(report.failed, 'value', 'values', formatCount)} ${verb(report.failed, 'does', 'do')} not decrypt`);
          const found = report.unregistered?.found ?? [];
          if (found.length > 0) parts.push(`${count(found.length, 'unregistered column')} ${verb(found.length, 'holds', 'hold')} envelopes`);
          throw new IntegrityError(`verify job ${report.jobId}: ${parts.join(' and ')}`, undefined, {
            reported: true,
            hint: 'README "Values that do not decrypt" says what to do with each kind',
          });
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

function describeKey(key: Record<string, string>): string {
  return Object.entries(key)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
}

function renderReport(io: IOStreams, r: VerifyReport): string {
  const out: string[] = [];
  const rate = `${r.durationSeconds}s, ${formatCount(r.valuesPerSecond)} values/s, ${r.megabytesPerSecond} MB/s, ${count(r.threads, 'reader thread')}`;
  const plaintext = r.plaintext ? `, ${formatCount(r.plaintext)} plaintext where the column's state allows it` : '';
  const head = `verify job ${r.jobId}: ${count(r.values, 'value', 'values', formatCount)} read, ${formatCount(r.verified)} verified${plaintext}, ${formatCount(r.failed)} failed (${rate})`;
  out.push(r.failed ? io.bad(head) : io.ok(head));
  const rows: Array<Array<string | number>> = [];
  for (const c of r.columns) {
    const versions = Object.entries(c.versions).sort(([a], [b]) => (a === '-' ? 1 : b === '-' ? -1 : Number(a) - Number(b)));
    if (versions.length === 0) rows.push([c.column, c.state, '', 0, 0, c.plaintext ? formatCount(c.plaintext) : '']);
    versions.forEach(([v, n], i) =>
      rows.push([c.column, c.state, v === '-' ? '(none)' : `v${v}`, formatCount(n.verified), formatCount(n.failed), i === 0 && c.plaintext ? formatCount(c.plaintext) : '']),
    );
  }
  if (rows.length) out.push(renderTable(io, ['column', 'state', 'data key', 'verified', 'failed', 'plaintext (allowed)'], rows));
  if (r.failures.length) {
    const shown = r.failures.slice(0, FAILURES_SHOWN);
    out.push(`failures${r.failures.length > shown.length ? ` (the first ${shown.length} of ${formatCount(r.failures.length)}; --json lists all)` : ''}:`);
    for (const f of shown) out.push(`  ${f.column} at ${describeKey(f.key)}: ${f.reason}: value ${describeReason(f.reason, f.version)}`);
  }
  const u = r.unregistered;
  if (u) {
    out.push(`unregistered text/bytea columns: ${formatCount(u.columnsScanned)} looked at, at most ${formatCount(u.bound)} values each (--scan-limit)`);
    for (const f of u.found) {
      const versions = Object.entries(f.versions).map(([v, n]) => `v${v}: ${formatCount(n)}`).join(', ');
      out.push(io.bad(`  ${f.column}${f.removed ? ' (removed from the registry)' : ''}: ${count(f.envelopes, 'envelope', 'envelopes', formatCount)} among ${formatCount(f.scanned)} values looked at (${versions}), e.g. ${f.sample.join('; ')}`));
    }
    for (const x of u.unreadable) out.push(`  not looked at: ${x.column}: the role lacks ${x.missing} (${x.grant})`);
    if (u.found.length === 0) out.push('  no envelopes found');
  }
  return out.join('\n');
}
