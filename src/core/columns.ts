/** The registry of encrypted columns (SPEC 4.2). */
import { Pool } from 'pg';
import { PreconditionError, UsageError } from '../errors';
import { Storage } from '../crypto/envelope';
import { Queryable } from '../db/transaction';
import { formatColumnName, parseQualifiedName } from './identifiers';
import { censusColumn } from './census';

export interface EncryptedColumn {
  table_schema: string;
  table_name: string;
  column_name: string;
  key_columns: string[];
  storage: Storage;
  context: string;
  added_at: Date;
}

export async function listColumns(db: Queryable): Promise<EncryptedColumn[]> {
  const r = await db.query<EncryptedColumn>(
    `SELECT table_schema, table_name, column_name, key_columns, storage, context, added_at
       FROM alation_keys.encrypted_columns ORDER BY table_schema, table_name, column_name`,
  );
  return r.rows;
}

export async function findColumn(db: Queryable, name: string): Promise<EncryptedColumn | undefined> {
  const [schema, table, column] = parseQualifiedName(name, 3);
  const r = await db.query<EncryptedColumn>(
    `SELECT table_schema, table_name, column_name, key_columns, storage, context, added_at
       FROM alation_keys.encrypted_columns WHERE table_schema = $1 AND table_name = $2 AND column_name = $3`,
    [schema, table, column],
  );
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
}

export async function addColumn(db: Queryable, name: string, opts: { context?: string } = {}): Promise<AddColumnResult> {
  const [schema, table, column] = parseQualifiedName(name, 3);
  const display = formatColumnName({ table_schema: schema, table_name: table, column_name: column });
  if (schema === 'alation_keys') throw new UsageError('columns of the alation_keys schema cannot be registered');
  const existing = await findColumn(db, display);
  if (existing) return { column: existing, added: false };
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
  const context = opts.context ?? `${schema}.${table}.${column}`;
  const r = await db.query<EncryptedColumn>(
    `INSERT INTO alation_keys.encrypted_columns (table_schema, table_name, column_name, key_columns, storage, context)
     VALUES ($1, $2, $3, $4, $5, $6)
     RETURNING table_schema, table_name, column_name, key_columns, storage, context, added_at`,
    [schema, table, column, keyColumns, type, context],
  );
  return { column: r.rows[0], added: true };
}

/** Envelopes in the column (plaintext and NULLs are not counted). */
export async function countEncryptedValues(db: Queryable, col: EncryptedColumn): Promise<number> {
  return (await censusColumn(db, col)).envelopes;
}

export async function removeColumn(db: Queryable, name: string): Promise<EncryptedColumn> {
  const col = await findColumn(db, name);
  if (!col) throw new UsageError(`column ${name} is not registered`, { hint: 'see `alation-keys columns list`' });
  await db.query(
    `DELETE FROM alation_keys.encrypted_columns WHERE table_schema = $1 AND table_name = $2 AND column_name = $3`,
    [col.table_schema, col.table_name, col.column_name],
  );
  return col;
}

export async function requireColumns(pool: Pool): Promise<EncryptedColumn[]> {
  const cols = await listColumns(pool);
  if (cols.length === 0) {
    throw new PreconditionError('no encrypted columns are registered', { hint: 'run `alation-keys columns add SCHEMA.TABLE.COLUMN`' });
  }
  return cols;
}
