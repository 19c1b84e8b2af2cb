/**
 * What a rotation works on: each registered column with its walk key and key types, the SQL
 * that reads a page and writes a chunk, and counts of values per DEK version.
 */
import { Queryable, qualifiedName, quoteIdent } from '../../db/transaction';
import { PreconditionError } from '../../errors';
import { EncryptedColumn, requireColumnType } from '../columns';
import { formatColumnName } from '../identifiers';
import { headerLiteralSql, headerPrefixSql, headerSql, storedPrefixLength as envelopePrefixLength, versionOfHeader } from '../../crypto/envelope-sql';
import { headerExpr } from '../value-sql';
import { noun } from '../../plural';

export interface ColumnPlan {
  col: EncryptedColumn;
  /** schema.table.column as the operator writes it. */
  name: string;
  /** "schema"."table" */
  table: string;
  keyColumns: string[];
  /** format_type of each key column, used to cast the text form back. */
  keyTypes: string[];
  /** Stable per-run index, used to name the staging table. */
  index: number;
  /**
   * One key range of the column (key-ranges.ts): the pass reads only keys up to and including
   * this; it starts after the range's lower bound, its state's first watermark.
   */
  upTo?: string[] | null;
}

/** What the compare-and-swap compares with the value read: its stored prefix, or a digest of it all. */
export type ValueMatch = 'prefix' | 'digest';

export interface VersionCount {
  version: number | null;
  values: number;
  bytes: number;
}

export async function planColumn(db: Queryable, col: EncryptedColumn, index: number): Promise<ColumnPlan> {
  await requireColumnType(db, col);
  const r = await db.query<{ attname: string; type: string }>(
    `SELECT a.attname::text AS attname, format_type(a.atttypid, a.atttypmod) AS type
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY($3::text[]) AND a.attnum > 0 AND NOT a.attisdropped`,
    [col.table_schema, col.table_name, col.key_columns],
  );
  const types = new Map(r.rows.map((row) => [row.attname, row.type]));
  const name = formatColumnName(col);
  const missing = col.key_columns.filter((k) => !types.has(k));
  if (missing.length) {
    throw new PreconditionError(`key ${noun(missing.length, 'column')} ${missing.join(', ')} of ${name} no longer ${noun(missing.length, 'exists', 'exist')}`, {
      hint: 'remove and re-add the column with `alation-keys columns remove/add` so its walk key is found again',
    });
  }
  return {
    col,
    name,
    table: qualifiedName(col.table_schema, col.table_name),
    keyColumns: col.key_columns,
    keyTypes: col.key_columns.map((k) => types.get(k)!),
    index,
  };
}

/**
 * "The value is not under `version`", reading the stored header once: cheaper than comparing
 * versionExpr, which evaluates the header (a TOAST slice fetch for large values) many times.
 */
export function notUnderSql(p: ColumnPlan, version: number, alias = ''): string {
  return `${headerExpr(p.col, alias)} IS DISTINCT FROM ${headerLiteralSql(version)}`;
}

/** Row-constructor of the key columns, qualified by `alias`. */
export function keyTuple(p: ColumnPlan, alias = ''): string {
  const a = alias ? alias + '.' : '';
  const cols = p.keyColumns.map((k) => a + quoteIdent(k));
  return cols.length === 1 ? cols[0] : `(${cols.join(', ')})`;
}

/** Literal row-constructor of key values (text forms cast to the key types). */
export function keyLiteral(p: ColumnPlan, values: string[], escapeLiteral: (s: string) => string): string {
  const parts = values.map((v, i) => `${escapeLiteral(v)}::${p.keyTypes[i]}`);
  return parts.length === 1 ? parts[0] : `(${parts.join(', ')})`;
}

/** Parameter row-constructor ($first, $first+1, …) cast to the key types. */
export function keyParams(p: ColumnPlan, first: number): string {
  const parts = p.keyTypes.map((t, i) => `$${first + i}::${t}`);
  return parts.length === 1 ? parts[0] : `(${parts.join(', ')})`;
}

/**
 * The COPY that reads one page: keys as text, the row version's xmin, then the value, in key
 * order, after the watermark; with `pending` (a predicate on alias t), only the rows it holds for.
 *
 * COPY cannot take bind parameters ($1), so the watermark is inlined as escaped literals
 * (client.escapeLiteral) cast to the key types, and identifiers are quoted with quoteIdent.
 */
export function readPageSql(
  p: ColumnPlan,
  watermark: string[] | null,
  limit: number,
  escapeLiteral: (s: string) => string,
  pending: string | null = null,
): string {
  // Output columns are renamed (k0, k1, …) so that ORDER BY t.key sorts by the key's own
  // type, not by its text form.
  const keys = p.keyColumns.map((k, i) => `t.${quoteIdent(k)}::text AS k${i}`).join(', ');
  const v = 't.' + quoteIdent(p.col.column_name);
  const where = [`${v} IS NOT NULL`];
  if (pending) where.push(pending);
  if (watermark) where.unshift(`${keyTuple(p, 't')} > ${keyLiteral(p, watermark, escapeLiteral)}`);
  if (p.upTo) where.unshift(`${keyTuple(p, 't')} <= ${keyLiteral(p, p.upTo, escapeLiteral)}`);
  const order = p.keyColumns.map((k) => 't.' + quoteIdent(k)).join(', ');
  return `COPY (SELECT ${keys}, t.xmin::text AS row_xmin, ${v} AS value FROM ${p.table} AS t WHERE ${where.join(' AND ')} ORDER BY ${order} LIMIT ${Math.floor(limit)}) TO STDOUT (FORMAT binary)`;
}

/**
 * Up to `parts - 1` keys that cut the column's non-NULL rows into `parts` ranges of about equal
 * row counts, from a sample of about `sampleRows` keys (TABLESAMPLE SYSTEM: whole pages, cheap
 * on a large table). Each is the last key of its range. Fewer when the sample is too small.
 */
export async function sampleKeyBoundaries(db: Queryable, p: ColumnPlan, rows: number, parts: number, sampleRows = 10_000): Promise<string[][]> {
  const percent = Math.min(100, Math.max(0.01, (sampleRows / Math.max(rows, 1)) * 100));
  const keys = p.keyColumns.map((k, i) => `${quoteIdent(k)}::text AS k${i}`).join(', ');
  const order = p.keyColumns.map((k) => quoteIdent(k)).join(', ');
  const r = await db.query<Record<string, string>>(
    `SELECT ${keys} FROM ${p.table} TABLESAMPLE SYSTEM (${percent}) WHERE ${quoteIdent(p.col.column_name)} IS NOT NULL ORDER BY ${order}`,
  );
  const sample = r.rows.map((row) => p.keyColumns.map((_, i) => row[`k${i}`]));
  if (sample.length < parts * 10) return [];
  const out: string[][] = [];
  for (let i = 1; i < parts; i++) {
    const key = sample[Math.floor((i * sample.length) / parts) - 1];
    if (!out.length || JSON.stringify(out[out.length - 1]) !== JSON.stringify(key)) out.push(key);
  }
  return out;
}

/** `id=42` or `tenant=a, n=7`: a row's walk key as messages show it. */
export function describeKey(p: ColumnPlan, keys: string[]): string {
  return p.keyColumns.map((k, i) => `${k}=${keys[i]}`).join(', ');
}

/** One staging table per column and kind of match (their old_match columns differ in type). */
export function stageTableName(p: ColumnPlan, match: ValueMatch): string {
  return `alation_keys_rewrite_stage_${p.index}_${match}`;
}

/** Temporary staging table for one column's chunks (dropped with the session). */
export function createStageSql(p: ColumnPlan, match: ValueMatch): string {
  const keys = p.keyColumns.map((_, i) => `k${i} text`).join(', ');
  const t = p.col.storage === 'bytea' ? 'bytea' : 'text';
  return `CREATE TEMP TABLE IF NOT EXISTS ${stageTableName(p, match)} (${keys}, row_xmin text, old_match ${match === 'digest' ? 'bytea' : t}, new_value ${t}) ON COMMIT DELETE ROWS`;
}

/**
 * Staged values stay inline where they fit (STORAGE MAIN): otherwise every value over ~2 kB
 * would be written to the temporary table's TOAST and read back by the UPDATE (~10 % of the
 * rewrite, measured).
 */
export function stageStorageSql(p: ColumnPlan, match: ValueMatch): string {
  return `ALTER TABLE ${stageTableName(p, match)} ALTER COLUMN new_value SET STORAGE MAIN`;
}

export function copyIntoStageSql(p: ColumnPlan, match: ValueMatch): string {
  return `COPY ${stageTableName(p, match)} FROM STDIN (FORMAT binary)`;
}

/** Length of the stored prefix compared before overwriting: the envelope's header and nonce. */
export function storedPrefixLength(p: ColumnPlan): number {
  return envelopePrefixLength(p.col.storage);
}

/**
 * The stored value's match key in SQL, as the reader stages it (chunk-encoder.ts): its first
 * storedPrefixLength bytes, or the SHA-256 of the whole value (a text value: of its UTF-8 bytes,
 * which is what binary COPY gives the reader).
 */
function matchKeySql(p: ColumnPlan, match: ValueMatch, value: string): string {
  if (match === 'prefix') return `substring(${value} FROM 1 FOR ${storedPrefixLength(p)})`;
  return p.col.storage === 'bytea' ? `sha256(${value})` : `sha256(convert_to(${value}, 'UTF8'))`;
}

/**
 * The chunk's UPDATE: a row changes only if its stored value is still the one read (an
 * envelope: same header and random nonce; plaintext: same digest), so a value the application
 * wrote meanwhile is never overwritten. An unchanged row version (same xmin) implies an unchanged value and is checked
 * first: it lives in the tuple header, while the prefix of a TOASTed value costs a TOAST read.
 * Frozen rows show xmin 2 (and bootstrap rows 1) whatever wrote them, so for those only the
 * prefix counts: a row frozen when read and rewritten and frozen again must not match.
 * $1… are the chunk's low key values, then the high key values (a range predicate keeps the
 * plan on the key index).
 */
export function updateFromStageSql(p: ColumnPlan, match: ValueMatch): string {
  const v = quoteIdent(p.col.column_name);
  const n = p.keyColumns.length;
  const join = p.keyColumns.map((k, i) => `t.${quoteIdent(k)} = s.k${i}::${p.keyTypes[i]}`).join(' AND ');
  return `UPDATE ${p.table} AS t SET ${v} = s.new_value FROM ${stageTableName(p, match)} AS s
           WHERE ${join}
             AND ((s.row_xmin NOT IN ('1', '2') AND t.xmin = s.row_xmin::xid) OR ${matchKeySql(p, match, `t.${v}`)} = s.old_match)
             AND ${keyTuple(p, 't')} >= ${keyParams(p, 1)} AND ${keyTuple(p, 't')} <= ${keyParams(p, 1 + n)}`;
}

/** Non-NULL values and their stored bytes, without reading any value (no TOAST access). */
export async function countValues(db: Queryable, p: ColumnPlan): Promise<{ values: number; bytes: number }> {
  const v = quoteIdent(p.col.column_name);
  const r = await db.query<{ n: string; bytes: string | null }>(`SELECT count(${v}) AS n, sum(octet_length(${v}))::bigint AS bytes FROM ${p.table}`);
  return { values: Number(r.rows[0].n), bytes: Number(r.rows[0].bytes ?? 0) };
}

/**
 * Values and bytes per raw header of a column's non-NULL values, in one scan; the header is
 * read from the value's prefix taken once per row (OFFSET 0 keeps the planner from repeating
 * it): one TOAST slice fetch per large value.
 */
export function countVersionsSql(p: ColumnPlan): string {
  const v = quoteIdent(p.col.column_name);
  return `SELECT ${headerSql(p.col.storage, 'p')} AS h, count(*) AS n, sum(len)::bigint AS bytes
       FROM (SELECT ${headerPrefixSql(p.col.storage, v)} AS p, octet_length(${v}) AS len
               FROM ${p.table} WHERE ${v} IS NOT NULL OFFSET 0) AS s
      GROUP BY 1`;
}

/** Values (non-NULL) and stored bytes per DEK version (NULL version = not a well-formed envelope). */
export async function countVersions(db: Queryable, p: ColumnPlan): Promise<VersionCount[]> {
  // Grouped by the raw header; versions are read here.
  const r = await db.query<{ h: Buffer | null; n: string; bytes: string | null }>(countVersionsSql(p));
  const by = new Map<number | null, VersionCount>();
  for (const row of r.rows) {
    const h = row.h;
    const version = versionOfHeader(h);
    const c = by.get(version) ?? { version, values: 0, bytes: 0 };
    c.values += Number(row.n);
    c.bytes += Number(row.bytes ?? 0);
    by.set(version, c);
  }
  return [...by.values()].sort((a, b) => (a.version ?? -1) - (b.version ?? -1));
}

export async function tableBytes(db: Queryable, p: ColumnPlan): Promise<number> {
  const r = await db.query<{ n: string }>(`SELECT pg_total_relation_size($1::regclass)::text AS n`, [p.table]);
  return Number(r.rows[0].n);
}
