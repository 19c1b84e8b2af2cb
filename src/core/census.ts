/**
 * The census of a registered column: values per DEK version, plaintext (values that are not
 * envelopes, SPEC 4.2), envelopes whose header cannot be read, and NULLs. Counted from the
 * headers in SQL in one scan; nothing is decrypted.
 */
import { Storage } from '../crypto/envelope';
import { headerPrefixSql, headerSql, isEnvelopeSql, versionOfHeader } from '../crypto/envelope-sql';
import { Queryable, qualifiedName, quoteIdent } from '../db/transaction';
import { IntegrityError, PreconditionError } from '../errors';
import { formatColumnName } from './identifiers';
import { count } from '../plural';

/** A registered column as the census needs it (an EncryptedColumn fits). */
type ColumnRef = { table_schema: string; table_name: string; column_name: string; storage: Storage; state?: string };

export interface VersionCensus {
  values: number;
  bytes: number;
}

export interface ColumnCensus {
  column: string;
  storage: string;
  /** The column's state (SPEC 4.2). */
  state: string;
  /** DEK version -> envelopes under it and their stored bytes. */
  versions: Record<string, VersionCensus>;
  /** Envelopes (values starting like one, whatever their header). */
  envelopes: number;
  /** Values starting like an envelope whose header cannot be read (too short, bad base64). */
  malformed: number;
  /** Non-NULL values that are not envelopes. */
  plaintext: number;
  plaintextBytes: number;
  nulls: number;
}

/**
 * The census of one column in one scan: per kind (NULL, envelope, plaintext) and raw header,
 * values and bytes. The header's prefix is read once per row (OFFSET 0 keeps the planner from
 * repeating it in every expression): one TOAST slice fetch per large value.
 */
export function censusSql(col: ColumnRef): string {
  const v = quoteIdent(col.column_name);
  return `SELECT CASE WHEN p IS NULL THEN 'null' WHEN ${isEnvelopeSql(col.storage, 'p')} THEN 'envelope' ELSE 'plaintext' END AS kind,
            CASE WHEN ${isEnvelopeSql(col.storage, 'p')} THEN ${headerSql(col.storage, 'p')} END AS h,
            count(*) AS n, sum(len)::bigint AS bytes
       FROM (SELECT ${headerPrefixSql(col.storage, v)} AS p, octet_length(${v}) AS len
               FROM ${qualifiedName(col.table_schema, col.table_name)} OFFSET 0) AS s
      GROUP BY 1, 2`;
}

export async function censusColumn(db: Queryable, col: ColumnRef): Promise<ColumnCensus> {
  const r = await db.query<{ kind: 'null' | 'envelope' | 'plaintext'; h: Buffer | null; n: string; bytes: string | null }>(censusSql(col));
  const out: ColumnCensus = {
    column: formatColumnName(col),
    storage: col.storage,
    state: col.state ?? 'encrypted',
    versions: {},
    envelopes: 0,
    malformed: 0,
    plaintext: 0,
    plaintextBytes: 0,
    nulls: 0,
  };
  for (const row of r.rows) {
    const n = Number(row.n);
    const bytes = Number(row.bytes ?? 0);
    if (row.kind === 'null') out.nulls += n;
    else if (row.kind === 'plaintext') {
      out.plaintext += n;
      out.plaintextBytes += bytes;
    } else {
      out.envelopes += n;
      const version = versionOfHeader(row.h);
      if (version === null) out.malformed += n;
      else {
        const c = (out.versions[String(version)] ??= { values: 0, bytes: 0 });
        c.values += n;
        c.bytes += bytes;
      }
    }
  }
  return out;
}

/** One line per column of an `encrypted` column holding values that are not envelopes (or unreadable ones). */
export function nonEnvelopeProblems(censuses: ColumnCensus[]): string[] {
  const out: string[] = [];
  for (const c of censuses) {
    if (c.state !== 'encrypted') continue;
    const parts: string[] = [];
    if (c.plaintext > 0) parts.push(count(c.plaintext, 'plaintext value'));
    if (c.malformed > 0) parts.push(count(c.malformed, 'malformed envelope'));
    if (parts.length) out.push(`${c.column}: ${parts.join(' and ')}`);
  }
  return out;
}

/**
 * The refusal of a command that needs every value of its `encrypted` columns to be an
 * envelope (rotate): exit 5 naming the columns and counts, before anything is changed.
 */
export function nonEnvelopeError(problems: string[], what: string, opts: { reported?: boolean } = {}): IntegrityError {
  return new IntegrityError(`${what}: ${problems.length === 1 ? 'an encrypted column holds' : 'encrypted columns hold'} values that are not envelopes: ${problems.join('; ')}; nothing was changed`, undefined, {
    reported: opts.reported,
    hint: 'list them with `alation-keys verify COLUMN`; encrypt stray plaintext with `alation-keys encrypt COLUMN`; restore malformed values from a backup (or set them NULL)',
  });
}

/**
 * Columns in the middle of a conversion (`encrypting`, `decrypting`): one line each. A rotation
 * waits for them, since their plaintext is neither under the old key nor the new one.
 */
export function convertingColumns(censuses: ColumnCensus[]): string[] {
  return censuses
    .filter((c) => c.state === 'encrypting' || c.state === 'decrypting')
    .map((c) => `${c.column} is ${c.state} (${c.state === 'encrypting' ? `${count(c.plaintext, 'plaintext value')} left` : `${count(c.envelopes, 'envelope')} left`})`);
}

export function convertingError(lines: string[], what: string): PreconditionError {
  return new PreconditionError(`${what}: ${lines.join('; ')}; nothing was changed`, {
    hint: 'finish first: `alation-keys encrypt` for encrypting columns, `alation-keys decrypt COLUMN` for a decrypting one',
  });
}
