/**
 * SQL that reads envelope headers in the database, without decrypting: the DEK version of a
 * stored value is bytes 3..6 of the envelope (for text storage, inside the base64 after `ak1:`).
 */
import { qualifiedName, quoteIdent } from '../db/transaction';
import type { EncryptedColumn } from './columns';

type ColumnRef = Pick<EncryptedColumn, 'table_schema' | 'table_name' | 'column_name' | 'storage'>;

/** Expression giving the 7-byte envelope header of the column value as bytea. */
export function headerExpr(col: ColumnRef, alias = ''): string {
  const c = (alias ? alias + '.' : '') + quoteIdent(col.column_name);
  // 12 base64 characters decode to 9 bytes: the 7-byte header and 2 nonce bytes.
  if (col.storage === 'bytea') return `substring(${c} FROM 1 FOR 7)`;
  return `(CASE WHEN substring(${c} FROM 1 FOR 16) ~ '^ak1:[A-Za-z0-9+/]{12}$' THEN substring(decode(substring(${c} FROM 5 FOR 12), 'base64') FROM 1 FOR 7) END)`;
}

/** Expression giving the DEK version (bigint) of a value; NULL for values too short to hold one. */
export function versionExpr(col: ColumnRef, alias = ''): string {
  const h = headerExpr(col, alias);
  return `(CASE WHEN length(${h}) = 7 AND substring(${h} FROM 1 FOR 3) = '\\x414b01'::bytea THEN (get_byte(${h}, 3)::bigint << 24) | (get_byte(${h}, 4) << 16) | (get_byte(${h}, 5) << 8) | get_byte(${h}, 6) END)`;
}

/** SELECT version, n: number of non-NULL values per DEK version in one column. */
export function versionCountSql(col: ColumnRef, all = false): string {
  const expr = all ? '0' : versionExpr(col);
  return `SELECT ${expr} AS version, count(*) AS n FROM ${qualifiedName(col.table_schema, col.table_name)}
           WHERE ${quoteIdent(col.column_name)} IS NOT NULL GROUP BY 1 ORDER BY 1`;
}
