import { Command } from 'commander';
import { encrypt, EncryptPlan, EncryptSummary } from '../../core/rewrite/encrypt';
import { Runner } from '../context';
import { IOStreams } from '../io';
import { formatCount, renderTable } from '../render';
import { RewriteFlags, addRewriteOptions, renderDryRunChecks, renderJobFigures, renderUndecryptable, runRewriteCommand } from './rewrite-command';
import { undecryptableMessage } from '../../core/rewrite/job-run';
import { IntegrityError } from '../../errors';

export function register(program: Command, run: Runner): void {
  const cmd = program
    .command('encrypt')
    .description('encrypt the plaintext already in encrypting columns in place (online, resumable); each column becomes encrypted')
    .argument('[columns...]', 'SCHEMA.TABLE.COLUMN (default: every column in state encrypting)')
    .option('--dry-run', 'print the plan (plaintext values and bytes per column, disk, estimated duration) and change nothing');
  addRewriteOptions(cmd, 'encrypt', { skipUndecryptable: true }, 'wait at least this long after the job starts before the final count (application instances re-read the registry every 30 s)');
  cmd.action(
    run('encrypt', cmd, async (ctx, columns, opts: RewriteFlags & { dryRun?: boolean }) => {
      const result = await runRewriteCommand(ctx, opts, 'encrypting', (pool, options, events) => encrypt(pool, { ...options, columns, dryRun: !!opts.dryRun }, events));
      if (ctx.globals.json) ctx.io.printJson(result);
      else if (result.result === 'nothing-to-do') ctx.io.print(result.message);
      else ctx.io.print(result.result === 'dry-run' ? renderPlan(ctx.io, result) : renderSummary(ctx.io, result));
      if (result.result === 'encrypted' && !result.ok) {
        throw new IntegrityError(`encrypt job ${result.jobId}: ${undecryptableMessage(result.undecryptable)}`, undefined, {
          reported: true,
          hint: 'README "Values that do not decrypt": restore or clear them; `alation-keys verify` lists them',
        });
      }
    }),
  );
}

function renderSummary(io: IOStreams, s: EncryptSummary): string {
  const out: string[] = [];
  const head = (t: string) => (s.ok ? io.ok(t) : io.bad(t));
  out.push(head(`encrypt job ${s.jobId} ${s.ok ? 'succeeded' : 'encrypted every plaintext value'}${s.resumed ? ' (resumed)' : ''}: ${s.columns.map((c) => c.column).join(', ')} encrypted under data key v${s.version}`));
  out.push(`values read: ${formatCount(s.valuesBefore.plaintext ?? 0)} plaintext (encrypted), ${formatCount(s.valuesBefore.envelope ?? 0)} envelopes (left as they were)`);
  out.push(...renderJobFigures(io, s, "application instances learn the column's state before the last count"));
  out.push(...renderUndecryptable(io, s.jobId, s.undecryptable));
  return out.join('\n');
}

function renderPlan(io: IOStreams, p: EncryptPlan): string {
  const out: string[] = [];
  out.push(p.resumableJob ? `dry run: would resume job ${p.resumableJob.id} (${p.resumableJob.state})` : `dry run: would encrypt under data key v${p.version}:`);
  out.push(
    renderTable(
      io,
      ['column', 'storage', 'state', 'plaintext', 'MB', 'envelopes', 'malformed', 'NULL'],
      p.columns.map((c) => [c.column, c.storage, c.state, formatCount(c.plaintext), (c.plaintextBytes / (1024 * 1024)).toFixed(1), formatCount(c.envelopes), formatCount(c.malformed), formatCount(c.nulls)]),
    ),
  );
  out.push(...renderDryRunChecks(io, p));
  return out.join('\n');
}
