/** The registry of encrypted columns (SPEC 4.2). */
import { PreconditionError, UsageError } from '../errors';
import { Storage } from '../crypto/envelope';
import { requireTablePrivileges } from '../db/privileges';
import { Queryable, qualifiedName } from '../db/transaction';
import { formatColumnName, parseQualifiedName } from './identifiers';
import { censusColumn } from './census';

/**
 * SPEC 4.2 states. `removed` rows are history: not a registered column for anything but
 * `keys destroy` (which counts the values they may still hold) and context uniqueness.
 */
export type ColumnState = 'encrypted' | 'encrypting' | 'decrypting' | 'removed';

export interface EncryptedColumn {
  table_schema: string;
  table_name: string;
  column_name: string;
  key_columns: string[];
  storage: Storage;
  context: string;
  state: ColumnState;
  added_at: Date;
}

const COLUMN_FIELDS = 'table_schema, table_name, column_name, key_columns, storage, context, state, added_at';

/** The registered columns (every state but `removed`). */
export async function listColumns(db: Queryable): Promise<EncryptedColumn[]> {
  const r = await db.query<EncryptedColumn>(
    `SELECT ${COLUMN_FIELDS} FROM alation_keys.encrypted_columns WHERE state <> 'removed' ORDER BY table_schema, table_name, column_name`,
  );
  return r.rows;
}

/** Every column the registry has ever held, `removed` ones included. */
export async function listColumnsEverRegistered(db: Queryable): Promise<EncryptedColumn[]> {
  const r = await db.query<EncryptedColumn>(
    `SELECT ${COLUMN_FIELDS} FROM alation_keys.encrypted_columns ORDER BY table_schema, table_name, column_name`,
  );
  return r.rows;
}

async function findRegistryRow(db: Queryable, schema: string, table: string, column: string): Promise<EncryptedColumn | undefined> {
  const r = await db.query<EncryptedColumn>(
    `SELECT ${COLUMN_FIELDS} FROM alation_keys.encrypted_columns WHERE table_schema = $1 AND table_name = $2 AND column_name = $3`,
    [schema, table, column],
  );
  return r.rows[0];
}

/** The registered column of that name (not a `removed` one), or undefined. */
export async function findColumn(db: Queryable, name: string): Promise<EncryptedColumn | undefined> {
  const [schema, table, column] = parseQualifiedName(name, 3);
  const row = await findRegistryRow(db, schema, table, column);
  return row && row.state !== 'removed' ? row : undefined;
}

/**
 * The registered columns `names` names, each once, in the order named; a name that is not
 * registered is a UsageError with `hint(name)`.
 */
export async function requireRegisteredColumns(db: Queryable, names: string[], hint: (name: string) => string): Promise<EncryptedColumn[]> {
  const out: EncryptedColumn[] = [];
  for (const name of names) {
    const col = await findColumn(db, name);
    if (!col) throw new UsageError(`column ${name} is not registered`, { hint: hint(name) });
    if (!out.some((c) => formatColumnName(c) === formatColumnName(col))) out.push(col);
  }
  return out;
}

/** The column whose row holds `context`, in any state. */
async function findContextOwner(db: Queryable, context: string): Promise<EncryptedColumn | undefined> {
  const r = await db.query<EncryptedColumn>(`SELECT ${COLUMN_FIELDS} FROM alation_keys.encrypted_columns WHERE context = $1`, [context]);
  return r.rows[0];
}

/** The key used to walk a table: its primary key, else its narrowest unique not-null key. */
export async function findWalkKey(db: Queryable, schema: string, table: string): Promise<string[] | undefined> {
  const r = await db.query<{ cols: string[] }>(
    `SELECT array_agg(a.attname::text ORDER BY k.ord) AS cols
       FROM pg_index i
       JOIN pg_class c ON c.oid = i.indrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
      WHERE n.nspname = $1 AND c.relname = $2 AND i.indisunique AND i.indisvalid AND i.indimmediate
        AND i.indpred IS NULL AND i.indexprs IS NULL
      GROUP BY i.indexrelid, i.indisprimary
     HAVING bool_and(a.attnotnull) AND bool_and(k.attnum > 0)
      ORDER BY i.indisprimary DESC, count(*), i.indexrelid
      LIMIT 1`,
    [schema, table],
  );
  return r.rows[0]?.cols;
}

export interface AddColumnResult {
  column: EncryptedColumn;
  added: boolean;
  /** Values already in the column that are not envelopes (a column holding any starts `encrypting`). */
  plaintext: number;
}

export async function addColumn(db: Queryable, name: string, opts: { context?: string } = {}): Promise<AddColumnResult> {
  const [schema, table, column] = parseQualifiedName(name, 3);
  const display = formatColumnName({ table_schema: schema, table_name: table, column_name: column });
  if (schema === 'alation_keys') throw new UsageError('columns of the alation_keys schema cannot be registered');
  if (opts.context !== undefined && opts.context === '') {
    throw new UsageError('--context must not be empty', { hint: 'leave --context out to use the column\'s quoted name' });
  }
  const existing = await findRegistryRow(db, schema, table, column);
  if (existing && existing.state !== 'removed') return { column: existing, added: false, plaintext: 0 };
  if (existing && opts.context !== undefined && opts.context !== existing.context) {
    throw new UsageError(`${display} was registered before with context "${existing.context}"; a re-added column keeps it`, {
      hint: 'leave --context out: its old values verify only under their own context',
    });
  }
  const t = await db.query<{ relkind: string }>(
    `SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
    [schema, table],
  );
  if (t.rowCount === 0) {
    throw new UsageError(`table ${display.split('.').slice(0, 2).join('.')} does not exist`, {
      hint: 'check the name; unquoted names are folded to lower case, so quote mixed-case ones',
    });
  }
  if (!['r', 'p'].includes(t.rows[0].relkind)) throw new UsageError(`${schema}.${table} is not a table`);
  const c = await db.query<{ type: string }>(
    `SELECT format_type(a.atttypid, a.atttypmod) AS type
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped`,
    [schema, table, column],
  );
  if (c.rowCount === 0) throw new UsageError(`column ${display} does not exist`);
  const type = c.rows[0].type;
  if (type !== 'bytea' && type !== 'text') {
    throw new UsageError(`column ${display} is of type ${type}; only bytea and text columns can hold envelopes`);
  }
  const keyColumns = await findWalkKey(db, schema, table);
  if (!keyColumns) {
    throw new UsageError(`table ${schema}.${table} has no primary key or unique not-null key`, {
      hint: 'add a primary key: rotation walks the table in key order',
    });
  }
  if (keyColumns.includes(column)) throw new UsageError(`column ${display} is part of the table's key and cannot be encrypted`);
  await requireTablePrivileges(db, [{ schema, table }], ['SELECT', 'UPDATE'], `to encrypt and rotate ${display}`);
  // SPEC 4.2: a column that already holds plaintext starts `encrypting` (`encrypt` converts it in
  // place); an empty one, or one holding only envelopes, starts `encrypted`.
  const { plaintext } = await censusColumn(db, { table_schema: schema, table_name: table, column_name: column, storage: type as Storage });
  const state: ColumnState = plaintext > 0 ? 'encrypting' : 'encrypted';
  if (existing) {
    const r = await db.query<EncryptedColumn>(
      `UPDATE alation_keys.encrypted_columns SET state = $6, key_columns = $4, storage = $5
        WHERE table_schema = $1 AND table_name = $2 AND column_name = $3 AND state = 'removed'
        RETURNING ${COLUMN_FIELDS}`,
      [schema, table, column, keyColumns, type, state],
    );
    return { column: r.rows[0] ?? existing, added: true, plaintext };
  }
  const context = opts.context ?? (await defaultContext(db, schema, table, column));
  await refuseTakenContext(db, display, context, opts.context !== undefined);
  try {
    const r = await db.query<EncryptedColumn>(
      `INSERT INTO alation_keys.encrypted_columns (table_schema, table_name, column_name, key_columns, storage, context, state)
       VALUES ($1, $2, $3, $4, $5, $6, $7)
       RETURNING ${COLUMN_FIELDS}`,
      [schema, table, column, keyColumns, type, context, state],
    );
    return { column: r.rows[0], added: true, plaintext };
  } catch (err) {
    // Another registration took the context between the check and the insert.
    if ((err as { code?: string }).code === '23505') await refuseTakenContext(db, display, context, opts.context !== undefined);
    throw err;
  }
}

/** SPEC 4.2: the canonical quoted name, each part quoted as PostgreSQL's quote_ident does. */
async function defaultContext(db: Queryable, schema: string, table: string, column: string): Promise<string> {
  const r = await db.query<{ context: string }>(`SELECT quote_ident($1) || '.' || quote_ident($2) || '.' || quote_ident($3) AS context`, [
    schema,
    table,
    column,
  ]);
  return r.rows[0].context;
}

async function refuseTakenContext(db: Queryable, display: string, context: string, explicit: boolean): Promise<void> {
  const owner = await findContextOwner(db, context);
  if (!owner) return;
  const who = `${formatColumnName(owner)}${owner.state === 'removed' ? ' (removed, kept as history)' : ''}`;
  const message = `context "${context}" belongs to ${who}; a value of one column would verify in the other`;
  if (explicit) throw new UsageError(message, { hint: `pass a --context no other column has, or leave it out for ${display}` });
  throw new PreconditionError(message, { hint: `register ${display} with a --context of its own` });
}

/**
 * Why a registered column can no longer be read as registered: its table or column is gone,
 * or its type changed since registration (exit 3 naming column and type). Undefined when fine.
 */
export interface ColumnProblem {
  /** The table or the column was dropped (it holds nothing any more). */
  gone: boolean;
  error: PreconditionError;
}

export async function columnTypeProblem(db: Queryable, col: EncryptedColumn): Promise<ColumnProblem | undefined> {
  const name = formatColumnName(col);
  const r = await db.query<{ type: string | null }>(
    `SELECT (SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
              WHERE a.attrelid = c.oid AND a.attname = $3 AND a.attnum > 0 AND NOT a.attisdropped) AS type
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
    [col.table_schema, col.table_name, col.column_name],
  );
  if (r.rowCount === 0 || r.rows[0].type === null) {
    const error = new PreconditionError(`registered column ${name} no longer exists`, {
      hint: `unregister it with \`alation-keys columns remove ${name}\`, or restore the column`,
    });
    return { gone: true, error };
  }
  const type = r.rows[0].type;
  if (type !== col.storage) {
    const error = new PreconditionError(`registered column ${name} was ${col.storage} at registration but is now of type ${type}`, {
      hint: `change it back (ALTER TABLE … ALTER COLUMN … TYPE ${col.storage}), or remove and re-add the column`,
    });
    return { gone: false, error };
  }
  return undefined;
}

/** Throws exit 3 when a registered column is gone or changed type (see columnTypeProblem). */
export async function requireColumnType(db: Queryable, col: EncryptedColumn): Promise<void> {
  const problem = await columnTypeProblem(db, col);
  if (problem) throw problem.error;
}

/** Envelopes in the column (plaintext and NULLs are not counted). */
export async function countEncryptedValues(db: Queryable, col: EncryptedColumn): Promise<number> {
  return (await censusColumn(db, col)).envelopes;
}

/**
 * Moves a column from one state to another (SPEC 4.2), only from one of `from`. With
 * `unlessAnySql` (a predicate on the table's rows, alias `t`), only when no row satisfies it,
 * checked in the same statement. Returns whether the state changed.
 */
export async function changeColumnState(
  db: Queryable,
  col: Pick<EncryptedColumn, 'table_schema' | 'table_name' | 'column_name'>,
  to: ColumnState,
  from: ColumnState[],
  unlessAnySql?: string,
): Promise<boolean> {
  const guard = unlessAnySql ? ` AND NOT EXISTS (SELECT 1 FROM ${qualifiedName(col.table_schema, col.table_name)} AS t WHERE ${unlessAnySql})` : '';
  const r = await db.query(
    `UPDATE alation_keys.encrypted_columns SET state = $4
      WHERE table_schema = $1 AND table_name = $2 AND column_name = $3 AND state = ANY($5::text[])${guard}`,
    [col.table_schema, col.table_name, col.column_name, to, from],
  );
  return (r.rowCount ?? 0) > 0;
}

/** Unregisters a column; its row stays as `removed`, so its context is never given to another column. */
export async function removeColumn(db: Queryable, name: string): Promise<EncryptedColumn> {
  const col = await findColumn(db, name);
  if (!col) throw new UsageError(`column ${name} is not registered`, { hint: 'see `alation-keys columns list`' });
  await db.query(
    `UPDATE alation_keys.encrypted_columns SET state = 'removed' WHERE table_schema = $1 AND table_name = $2 AND column_name = $3`,
    [col.table_schema, col.table_name, col.column_name],
  );
  return col;
}

/** A text or bytea column no registered column is (verify's look for forgotten envelopes). */
export interface UnregisteredTextColumn {
  table_schema: string;
  table_name: string;
  column_name: string;
  storage: Storage;
  removed: boolean;
  usage: boolean;
  can_select: boolean;
  role: string;
}

/** text and bytea columns of ordinary tables outside the system schemas and ours that no registered column is. */
export async function unregisteredTextColumns(db: Queryable): Promise<UnregisteredTextColumn[]> {
  const r = await db.query<UnregisteredTextColumn>(
    `SELECT n.nspname::text AS table_schema, c.relname::text AS table_name, a.attname::text AS column_name,
            format_type(a.atttypid, NULL) AS storage, coalesce(ec.state = 'removed', false) AS removed,
            has_schema_privilege(n.oid, 'USAGE') AS usage, has_column_privilege(c.oid, a.attnum, 'SELECT') AS can_select,
            quote_ident(current_user) AS role
       FROM pg_attribute a
       JOIN pg_class c ON c.oid = a.attrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN alation_keys.encrypted_columns ec
              ON ec.table_schema = n.nspname AND ec.table_name = c.relname AND ec.column_name = a.attname
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped
        AND a.atttypid IN ('text'::regtype, 'bytea'::regtype)
        AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'alation_keys') AND n.nspname NOT LIKE 'pg\\_%'
        AND (ec.state IS NULL OR ec.state = 'removed')
      ORDER BY 1, 2, 3`,
  );
  return r.rows;
}
