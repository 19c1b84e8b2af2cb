import { Command } from 'commander';
import { addColumn, columnTypeProblem, countEncryptedValues, findColumn, listColumns, removeColumn } from '../../core/columns';
import { formatColumnName } from '../../core/identifiers';
import { countVersions } from '../../core/status';
import { requireInitialised } from '../../db/migrations';
import { PreconditionError, UsageError } from '../../errors';
import { Runner } from '../context';
import { formatCount, formatTime, renderTable } from '../render';
import { renderColumnCensus } from './status';
import { count, noun } from '../../plural';

export function register(program: Command, run: Runner): void {
  const columns = program.command('columns').description('manage the registry of encrypted columns');

  const list = columns.command('list').description('list registered columns');
  list.action(
    run('columns', list, async (ctx) => {
      await requireInitialised(ctx.pool);
      const cols = await listColumns(ctx.pool);
      const counts = await Promise.all(cols.map((c) => countVersions(ctx.pool, c)));
      if (ctx.globals.json) {
        return ctx.io.printJson({
          columns: cols.map((c, i) => {
            const { versions, plaintext, malformed, nulls } = counts[i];
            return { column: formatColumnName(c), ...c, values: versions, plaintext, malformed, nulls };
          }),
        });
      }
      if (cols.length === 0) return ctx.io.print('no encrypted columns registered (add one with `alation-keys columns add SCHEMA.TABLE.COLUMN`)');
      ctx.io.print(
        renderTable(
          ctx.io,
          ['column', 'storage', 'key', 'context', 'added'],
          cols.map((c) => [formatColumnName(c), c.storage, c.key_columns.join(', '), c.context, formatTime(c.added_at)]),
        ),
      );
      ctx.io.print(renderColumnCensus(ctx.io, counts));
    }),
  );

  const add = columns
    .command('add')
    .description('register SCHEMA.TABLE.COLUMN (bytea or text, in a table with a primary or unique not-null key)')
    .argument('<column>', 'SCHEMA.TABLE.COLUMN; quote mixed-case names: public."MyTable"."Secret"')
    .option('--context <text>', 'AAD context, unique and non-empty (default the quoted SCHEMA.TABLE.COLUMN; kept if the table is renamed later)');
  add.action(
    run('columns', add, async (ctx, [name], opts: { context?: string }) => {
      await requireInitialised(ctx.pool);
      const { column, added, plaintext } = await addColumn(ctx.pool, name, { context: opts.context });
      const display = formatColumnName(column);
      const next = column.state === 'encrypting' ? `alation-keys encrypt ${display}` : null;
      if (ctx.globals.json) return ctx.io.printJson({ added, state: column.state, plaintext, next, column: { column: display, ...column } });
      if (!added) return ctx.io.print(`${display} is already registered (${column.state}); nothing to do`);
      ctx.io.print(`registered ${display} (${column.storage}, walked by ${column.key_columns.join(', ')}, context "${column.context}"): ${column.state}`);
      if (next) {
        ctx.io.print(
          `it holds ${count(plaintext, 'plaintext value', 'plaintext values', formatCount)}: the library now writes envelopes and still reads the plaintext; encrypt it in place with \`${next}\``,
        );
      }
    }),
  );

  const remove = columns
    .command('remove')
    .description('unregister SCHEMA.TABLE.COLUMN (its values are no longer rotated; refused while it holds encrypted values)')
    .argument('<column>', 'SCHEMA.TABLE.COLUMN')
    .option('--force', 'unregister even though the column still holds encrypted values');
  remove.action(
    run('columns', remove, async (ctx, [name], opts: { force?: boolean }) => {
      await requireInitialised(ctx.pool);
      const col = await findColumn(ctx.pool, name);
      if (!col) throw new UsageError(`column ${name} is not registered`, { hint: 'see `alation-keys columns list`' });
      // A dropped column holds nothing; one whose type changed cannot be counted as registered.
      const problem = await columnTypeProblem(ctx.pool, col);
      if (problem && !problem.gone && !opts.force) throw problem.error;
      const n = problem ? 0 : await countEncryptedValues(ctx.pool, col);
      if (n > 0 && !opts.force) {
        throw new PreconditionError(`${formatColumnName(col)} still holds ${count(n, 'encrypted value')}; unregistered, ${noun(n, 'it', 'they')} would no longer be rotated`, {
          hint: 'decrypt or clear the values first, or pass --force to unregister anyway (`keys destroy` still counts them)',
        });
      }
      if (n > 0) {
        ctx.io.warn(`${formatColumnName(col)} holds ${count(n, 'encrypted value')}; once removed ${noun(n, 'it is', 'they are')} no longer rotated`);
        await ctx.io.confirm(`Unregister ${formatColumnName(col)}?`);
      }
      const removed = await removeColumn(ctx.pool, name);
      if (ctx.globals.json) return ctx.io.printJson({ removed: formatColumnName(removed), values: n });
      ctx.io.print(`unregistered ${formatColumnName(removed)}`);
    }),
  );
}
