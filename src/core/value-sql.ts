/**
 * SQL that reads envelope headers of a registered column in the database, without
 * decrypting; the expressions themselves come from src/crypto/envelope-sql.ts.
 */
import { headerSql, versionSql } from '../crypto/envelope-sql';
import { quoteIdent } from '../db/transaction';
import type { EncryptedColumn } from './columns';

type ColumnRef = Pick<EncryptedColumn, 'table_schema' | 'table_name' | 'column_name' | 'storage'>;

function valueRef(col: ColumnRef, alias: string): string {
  return (alias ? alias + '.' : '') + quoteIdent(col.column_name);
}

/** Expression giving the 7-byte envelope header of the column value as bytea. */
export function headerExpr(col: ColumnRef, alias = ''): string {
  return headerSql(col.storage, valueRef(col, alias));
}

/** Expression giving the DEK version (bigint) of a value; NULL for values too short to hold one. */
export function versionExpr(col: ColumnRef, alias = ''): string {
  return versionSql(col.storage, valueRef(col, alias));
}

