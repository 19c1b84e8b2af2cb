import { Command } from 'commander';
import { readKeyring } from '../../core/keyring';
import { destroyDataKey, parseVersion, planDestroy } from '../../core/keys';
import { requireInitialised } from '../../db/migrations';
import { Runner } from '../context';
import { formatAge, formatTime, renderTable } from '../render';

export function register(program: Command, run: Runner): void {
  const keys = program.command('keys').description('data keys (DEKs) and their states');
  const list = keys.command('list').description('list data keys');
  list.action(
    run('keys', list, async (ctx) => {
      await requireInitialised(ctx.pool);
      const rows = await readKeyring(ctx.pool);
      const doc = rows.map((r) => ({
        version: r.version,
        state: r.state,
        kekProvider: r.kek_provider,
        kekId: r.kek_id,
        createdAt: r.created_at.toISOString(),
        retiredAt: r.retired_at?.toISOString() ?? null,
        destroyedAt: r.destroyed_at?.toISOString() ?? null,
      }));
      if (ctx.globals.json) return ctx.io.printJson({ keys: doc });
      ctx.io.print(
        renderTable(
          ctx.io,
          ['version', 'state', 'age', 'KEK provider', 'KEK', 'created', 'retired', 'destroyed'],
          rows.map((r) => [r.version, r.state, formatAge(r.created_at), r.kek_provider, r.kek_id, formatTime(r.created_at), formatTime(r.retired_at), formatTime(r.destroyed_at)]),
        ),
      );
    }),
  );

  const destroy = keys
    .command('destroy')
    .description('delete the key material of a retired data key for good (refused while any value uses it)')
    .argument('<version>', 'data key version, e.g. 3');
  destroy.action(
    run('keys', destroy, async (ctx, [versionText]) => {
      const version = parseVersion(versionText);
      const plan = await planDestroy(ctx.pool, version);
      if (plan.alreadyDestroyed) {
        if (ctx.globals.json) return ctx.io.printJson({ destroyed: false, alreadyDestroyed: true, version, destroyedAt: plan.destroyedAt });
        return ctx.io.print(`data key v${version} was already destroyed${plan.destroyedAt ? ` on ${formatTime(plan.destroyedAt)}` : ''}; nothing to do`);
      }
      if (plan.backupsNeeding.length) {
        ctx.io.warn(
          `${plan.backupsNeeding.length} recorded backup(s) need data key v${version}; once it is destroyed, values in them that use it can never be decrypted:`,
        );
        for (const b of plan.backupsNeeding) {
          ctx.io.warn(`  job ${b.jobId}, ${formatTime(b.finishedAt)}: ${b.path ?? b.file ?? '(unknown file)'}${b.onDisk === 'missing' ? ' (not on this disk)' : ''}`);
        }
      }
      await ctx.io.confirm(`Destroy data key v${version}? Its key material is deleted for good.`, { typeToConfirm: `v${version}` });
      const result = await destroyDataKey(ctx.pool, version);
      if (ctx.globals.json) {
        return ctx.io.printJson({ destroyed: true, version, destroyedAt: result.destroyedAt, jobId: result.jobId, backupsNeeding: result.backupsNeeding });
      }
      ctx.io.print(`destroyed data key v${version} at ${formatTime(result.destroyedAt)} (job ${result.jobId})`);
    }),
  );
}
