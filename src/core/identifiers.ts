import { UsageError } from '../errors';

/**
 * Splits `schema.table.column` the way psql reads identifiers: unquoted parts fold to lower
 * case, "quoted" parts keep their case and may contain dots and doubled quotes.
 */
export function parseQualifiedName(input: string, parts: number, what = 'SCHEMA.TABLE.COLUMN'): string[] {
  const out: string[] = [];
  let i = 0;
  const fail = (why: string) =>
    new UsageError(`"${input}" is not a valid ${what}: ${why}`, {
      hint: 'write it as schema.table.column; quote mixed-case names: public."MyTable"."Secret"',
    });
  while (i <= input.length) {
    let name = '';
    if (input[i] === '"') {
      i++;
      for (;;) {
        if (i >= input.length) throw fail('unterminated quote');
        if (input[i] === '"') {
          if (input[i + 1] === '"') {
            name += '"';
            i += 2;
            continue;
          }
          i++;
          break;
        }
        name += input[i++];
      }
      if (name === '') throw fail('empty quoted name');
    } else {
      const start = i;
      while (i < input.length && input[i] !== '.') {
        if (input[i] === '"' || /\s/.test(input[i])) throw fail(`unexpected character ${JSON.stringify(input[i])}`);
        i++;
      }
      name = input.slice(start, i).toLowerCase();
      if (name === '') throw fail('empty name');
    }
    out.push(name);
    if (i === input.length) break;
    if (input[i] !== '.') throw fail('expected a dot');
    i++;
    if (i === input.length) throw fail('ends with a dot');
  }
  if (out.length !== parts) throw fail(`expected ${parts} dot-separated names, got ${out.length}`);
  return out;
}

/** Renders a name so parseQualifiedName reads it back. */
export function formatIdentifier(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : '"' + name.replace(/"/g, '""') + '"';
}

export function formatColumnName(c: { table_schema: string; table_name: string; column_name: string }): string {
  return [c.table_schema, c.table_name, c.column_name].map(formatIdentifier).join('.');
}
