/**
 * `verify`'s look for envelopes where nobody expects them: `text` and `bytea` columns that are
 * not registered (a column someone forgot to register, or one removed while it still held
 * envelopes). Bounded: at most `bound` non-NULL values of each column are looked at (the first
 * ones in the table's physical order), with a sample of the rows that hold envelopes. Headers
 * are read in SQL (envelope-sql.ts); nothing is decrypted. Columns the role may not read are
 * listed with the privilege they need, never a raw SQL error.
 */
import { headerSql, isEnvelopeSql, versionOfHeader } from '../crypto/envelope-sql';
import { Queryable, qualifiedName, quoteIdent } from '../db/transaction';
import { findWalkKey, unregisteredTextColumns, UnregisteredTextColumn as Candidate } from './columns';
import { formatColumnName, formatIdentifier } from './identifiers';

export const DEFAULT_SCAN_BOUND = 10_000;
const SAMPLE_ROWS = 5;

export interface EnvelopesFound {
  column: string;
  /** The column was registered once and removed (`columns remove --force`). */
  removed: boolean;
  /** Non-NULL values looked at (at most the bound). */
  scanned: number;
  /** Values among them that look like envelopes (a readable v1 header). */
  envelopes: number;
  /** Those per DEK version their header names. */
  versions: Record<string, number>;
  /** Up to five rows holding one (`id=42`, or `ctid=(0,3)` in a table with no key). */
  sample: string[];
}

export interface UnreadableColumn {
  column: string;
  /** e.g. "SELECT on table public.audit_log" */
  missing: string;
  grant: string;
}

export interface UnregisteredScan {
  /** Most values looked at per column. */
  bound: number;
  columnsScanned: number;
  found: EnvelopesFound[];
  unreadable: UnreadableColumn[];
}

function sqlString(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

/** The SQL text naming a row: its walk key (`id=42`), else its ctid. */
async function rowLabelSql(db: Queryable, c: Candidate): Promise<string> {
  const key = await findWalkKey(db, c.table_schema, c.table_name);
  if (!key) return `'ctid=' || t.ctid::text`;
  return `concat_ws(', ', ${key.map((k) => `${sqlString(k + '=')} || t.${quoteIdent(k)}::text`).join(', ')})`;
}

async function scanColumn(db: Queryable, c: Candidate, bound: number): Promise<EnvelopesFound> {
  const v = `t.${quoteIdent(c.column_name)}`;
  const label = await rowLabelSql(db, c);
  const r = await db.query<{ scanned: string; groups: Array<{ h: string | null; n: number; sample: string[] }> }>(
    `WITH s AS (SELECT ${v} AS v, ${label} AS k FROM ${qualifiedName(c.table_schema, c.table_name)} AS t WHERE ${v} IS NOT NULL LIMIT ${Math.floor(bound)}),
          e AS (SELECT k, ${headerSql(c.storage, 's.v')} AS h FROM s WHERE ${isEnvelopeSql(c.storage, 's.v')})
     SELECT (SELECT count(*) FROM s) AS scanned,
            (SELECT coalesce(json_agg(x), '[]'::json)
               FROM (SELECT encode(h, 'hex') AS h, count(*) AS n, (array_agg(k ORDER BY k))[1:${SAMPLE_ROWS}] AS sample FROM e GROUP BY h) x) AS groups`,
  );
  const out: EnvelopesFound = { column: formatColumnName(c), removed: c.removed, scanned: Number(r.rows[0].scanned), envelopes: 0, versions: {}, sample: [] };
  for (const g of r.rows[0].groups) {
    const version = versionOfHeader(g.h === null ? null : Buffer.from(g.h, 'hex'));
    if (version === null) continue;
    out.envelopes += Number(g.n);
    out.versions[version] = (out.versions[version] ?? 0) + Number(g.n);
    out.sample.push(...g.sample);
  }
  out.sample = out.sample.sort().slice(0, SAMPLE_ROWS);
  return out;
}

/** Looks at up to `bound` values of every unregistered text/bytea column for envelopes. */
export async function scanUnregisteredColumns(db: Queryable, bound = DEFAULT_SCAN_BOUND, stop?: AbortSignal): Promise<UnregisteredScan> {
  const out: UnregisteredScan = { bound, columnsScanned: 0, found: [], unreadable: [] };
  for (const c of await unregisteredTextColumns(db)) {
    if (stop?.aborted) break;
    const column = formatColumnName(c);
    const table = `${formatIdentifier(c.table_schema)}.${formatIdentifier(c.table_name)}`;
    if (!c.usage) {
      const schema = formatIdentifier(c.table_schema);
      out.unreadable.push({ column, missing: `USAGE on schema ${schema}`, grant: `GRANT USAGE ON SCHEMA ${schema} TO ${c.role}` });
      continue;
    }
    if (!c.can_select) {
      out.unreadable.push({ column, missing: `SELECT on table ${table}`, grant: `GRANT SELECT ON ${table} TO ${c.role}` });
      continue;
    }
    try {
      const found = await scanColumn(db, c, bound);
      out.columnsScanned++;
      if (found.envelopes > 0) out.found.push(found);
    } catch (err) {
      // Row-level security or a privilege revoked meanwhile: say which column, go on.
      if ((err as { code?: string }).code !== '42501') throw err;
      out.unreadable.push({ column, missing: `SELECT on table ${table} (${(err as Error).message})`, grant: `GRANT SELECT ON ${table} TO ${c.role}` });
    }
  }
  return out;
}
