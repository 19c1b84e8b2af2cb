import { Command } from 'commander';
import { initialise } from '../../core/init';
import { Runner } from '../context';

export function register(program: Command, run: Runner): void {
  const cmd = program
    .command('init')
    .description('create or migrate the alation_keys schema, the installation id, the master key file if absent, and DEK v1');
  cmd.action(
    run('init', cmd, async (ctx) => {
      const result = await initialise(ctx.pool, { masterKeyFile: ctx.globals.masterKeyFile });
      if (ctx.globals.json) return ctx.io.printJson(result);
      if (!result.changed) {
        ctx.io.print(`already initialised (schema v${result.schemaVersion}, installation ${result.installationId}); nothing to do`);
        return;
      }
      if (result.migrationsApplied.length) ctx.io.print(`schema alation_keys migrated to v${result.schemaVersion}`);
      ctx.io.print(`installation id ${result.installationId}`);
      if (result.masterKeyFileCreated) {
        ctx.io.print(`created master key file ${result.masterKeyFile} (mode 0600)`);
        ctx.io.info('keep a copy of the master key file in a safe place: without it no value can be decrypted');
      }
      if (result.dataKeyCreated) ctx.io.print(`created data key v${result.dataKeyCreated} (primary)`);
    }),
  );
}
