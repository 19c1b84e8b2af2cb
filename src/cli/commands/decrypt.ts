import { Command } from 'commander';
import { decrypt, decryptionTarget, DecryptSummary } from '../../core/rewrite/decrypt';
import { Runner } from '../context';
import { IOStreams } from '../io';
import { formatCount } from '../render';
import { count } from '../../plural';
import { RewriteFlags, addRewriteOptions, renderJobFigures, runRewriteCommand } from './rewrite-command';

export function register(program: Command, run: Runner): void {
  const cmd = program
    .command('decrypt')
    .description('return a column to plaintext in place (online, resumable; confirmation required); the column becomes removed')
    .argument('<column>', 'SCHEMA.TABLE.COLUMN');
  addRewriteOptions(cmd, 'decrypt', { skipUndecryptable: false }, 'wait at least this long after the column becomes decrypting before decrypting values (application instances re-read the registry every 30 s)');
  cmd.action(
    run('decrypt', cmd, async (ctx, [name], opts: RewriteFlags) => {
      const target = await decryptionTarget(ctx.pool, name);
      ctx.io.warn(
        `${target.column} (${target.state}) holds ${count(target.envelopes, 'envelope')}: decrypt writes their plaintext back into the table, and the column is no longer encrypted by anyone`,
      );
      await ctx.io.confirm(`Decrypt ${target.column} back to plaintext?`, { typeToConfirm: target.column });
      const result = await runRewriteCommand(ctx, opts, 'decrypting', (pool, options, events) => decrypt(pool, name, options, events));
      if (ctx.globals.json) return ctx.io.printJson(result);
      ctx.io.print(renderSummary(ctx.io, result));
    }),
  );
}

function renderSummary(io: IOStreams, s: DecryptSummary): string {
  const out: string[] = [];
  out.push(io.ok(`decrypt job ${s.jobId} succeeded${s.resumed ? ' (resumed)' : ''}: ${s.column} holds plaintext and is removed from the registry (its context is kept)`));
  const versions = Object.entries(s.valuesBefore).filter(([k]) => k !== 'plaintext');
  out.push(`values decrypted per data key: ${versions.length ? versions.map(([k, n]) => `v${k}: ${formatCount(n)}`).join(', ') : 'none'}; ${formatCount(s.valuesBefore.plaintext ?? 0)} plaintext left as they were`);
  out.push(...renderJobFigures(io, s, "application instances learn the column's state before the last count"));
  out.push('recommended: stop calling the library for this column; backups made before now still hold its envelopes and need their keys');
  return out.join('\n');
}
