import { Command } from 'commander';
import { readKeyring } from '../../core/keyring';
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
}
