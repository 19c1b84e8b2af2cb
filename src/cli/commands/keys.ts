import { Command } from 'commander';
import { readKeyring } from '../../core/keyring';
import { destroyDataKey, DestroyOptions, parseVersion, planDestroy, planPruneMasterKeys, pruneMasterKeys } from '../../core/keys';
import { parseDuration } from '../../core/rewrite/util';
import { testPauseFromEnv } from '../../core/test-hooks';
import { requireInitialised } from '../../db/migrations';
import { Runner } from '../context';
import { formatAge, formatTime, renderTable } from '../render';
import { count, noun, verb } from '../../plural';

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
    .description('delete the key material of a retired data key (refused while any value or a retained backup needs it)')
    .argument('<version>', 'data key version, e.g. 3')
    .option('--backup-retention <duration>', 'backups younger than this are kept; one that needs the key blocks the destroy', '30d')
    .option('--force', 'destroy even though a backup within the retention needs the key (it becomes unrestorable)');
  destroy.action(
    run('keys', destroy, async (ctx, [versionText], flags: { backupRetention?: string; force?: boolean }) => {
      const version = parseVersion(versionText);
      const opts: DestroyOptions = {
        backupRetentionMs: parseDuration(flags.backupRetention ?? '30d', '--backup-retention'),
        force: !!flags.force,
        providerOptions: ctx.providerOptions,
        actor: ctx.actor,
        pause: testPauseFromEnv(ctx.env),
      };
      const plan = await planDestroy(ctx.pool, version, opts);
      if (plan.alreadyDestroyed) {
        if (ctx.globals.json) return ctx.io.printJson({ destroyed: false, alreadyDestroyed: true, version, destroyedAt: plan.destroyedAt });
        return ctx.io.print(`data key v${version} was already destroyed${plan.destroyedAt ? ` on ${formatTime(plan.destroyedAt)}` : ''}; nothing to do`);
      }
      if (plan.retainedNeeding.length) {
        ctx.io.warn(`--force: ${count(plan.retainedNeeding.length, 'backup')} within the retention ${verb(plan.retainedNeeding.length, 'needs', 'need')} data key v${version}; values in them that use it can never be decrypted again`);
      }
      if (plan.backupsHolding.length) {
        ctx.io.warn(`still holding data key v${version} after this (wrapped), until the dump is deleted and \`alation-keys keys prune-master-keys\` removes its master key:`);
        for (const b of plan.backupsHolding) {
          ctx.io.warn(
            `  backup job ${b.jobId}, ${formatTime(b.finishedAt)}: ${b.path ?? b.file ?? '(unknown file)'}${b.onDisk === 'missing' ? ' (not on this disk)' : ''}, wrapped under ${b.kekId}${b.needs ? ', needed to restore it' : ''}`,
          );
        }
      }
      await ctx.io.confirm(
        `Destroy data key v${version}? Its key material is deleted from the keyring` +
          (plan.backupsHolding.length ? `; ${count(plan.backupsHolding.length, 'backup dump')} listed above still ${verb(plan.backupsHolding.length, 'holds', 'hold')} it wrapped.` : '; no recorded backup holds it.'),
        { typeToConfirm: `v${version}` },
      );
      const result = await destroyDataKey(ctx.pool, version, opts);
      if (ctx.globals.json) {
        return ctx.io.printJson({
          destroyed: true,
          version,
          destroyedAt: result.destroyedAt,
          jobId: result.jobId,
          backupsHolding: result.backupsHolding,
          newMasterKey: result.newMasterKey,
        });
      }
      ctx.io.print(
        `destroyed data key v${version} at ${formatTime(result.destroyedAt)} (job ${result.jobId})` +
          (result.newMasterKey ? `; remaining data keys re-wrapped under new master key ${result.newMasterKey}` : ''),
      );
      if (result.newMasterKey) ctx.io.info('run `alation-keys keys prune-master-keys` to delete the master keys that wrapped it from the master key file');
    }),
  );

  const prune = keys
    .command('prune-master-keys')
    .description('remove from the master key file the master keys that wrap no data key and that no retained backup needs')
    .option('--backup-retention <duration>', 'backups younger than this are kept, with the master keys they need', '30d')
    .option('--dry-run', 'only list what would be removed');
  prune.action(
    run('keys', prune, async (ctx, _args, flags: { backupRetention?: string; dryRun?: boolean }) => {
      const opts = {
        backupRetentionMs: parseDuration(flags.backupRetention ?? '30d', '--backup-retention'),
        masterKeyFile: ctx.globals.masterKeyFile,
        actor: ctx.actor,
      };
      const plan = await planPruneMasterKeys(ctx.pool, opts);
      if (!flags.dryRun && plan.removable.length) {
        if (plan.foreign.length) {
          ctx.io.warn(`kept ${count(plan.foreign.length, 'master key')} this database never used (${plan.foreign.join(', ')}): another database may share ${plan.masterKeyFile}`);
        }
        await ctx.io.confirm(`Remove ${noun(plan.removable.length, 'master key')} ${plan.removable.join(', ')} from ${plan.masterKeyFile}? Dumps that need them can no longer be restored.`);
      }
      const result = flags.dryRun ? { ...plan, removed: [] as string[], jobId: null } : await pruneMasterKeys(ctx.pool, opts);
      if (ctx.globals.json) return ctx.io.printJson({ dryRun: !!flags.dryRun, ...result });
      if (flags.dryRun) {
        return ctx.io.print(plan.removable.length ? `would remove ${plan.removable.join(', ')} from ${plan.masterKeyFile}` : 'no master key to remove');
      }
      ctx.io.print(result.removed.length ? `removed ${noun(result.removed.length, 'master key')} ${result.removed.join(', ')} from ${plan.masterKeyFile} (job ${result.jobId})` : 'no master key to remove');
    }),
  );
}
