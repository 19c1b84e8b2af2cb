/**
 * Values that do not decrypt, as the rewrite engine's reader meets them. One place for every
 * transform (rotate, encrypt, verify):
 *
 *  - what is wrong with a value (its reason), found by readStoredEnvelope / openWithDataKeys,
 *    which a transform's `read` calls and which throw an UndecryptableValue;
 *  - what a pass does then (chunk-encoder.ts): stop before writing the chunk with an
 *    IntegrityError naming the row (stoppedAt), or — `--skip-undecryptable`, and always for
 *    `verify` — leave the value untouched and record its row (an UndecryptableRow in the chunk,
 *    then in the column's checkpoint, so the job lists them);
 *  - how later counts leave the recorded rows out while those rows are unchanged
 *    (countPendingExceptRecorded), so convergence ends with them still in place.
 */
import { EnvelopeAuthError, EnvelopeFormatError, envelopeOfStoredBytes, envelopeVersion, openEnvelope, isStoredEnvelopeBytes, Storage } from '../../crypto/envelope';
import { Queryable, quoteIdent } from '../../db/transaction';
import { IntegrityError } from '../../errors';
import { ColumnPlan, describeKey } from './plan';

export const UNDECRYPTABLE_REASONS = ['authentication', 'malformed', 'unknown-key', 'destroyed-key', 'plaintext'] as const;
/**
 * authentication: the GCM tag does not verify (a flipped bit, a truncated tail, a value moved
 * from another column); malformed: it starts like an envelope but its header or base64 cannot
 * be read; unknown-key / destroyed-key: it names a data key the keyring does not have, or one
 * that was destroyed; plaintext: not an envelope at all, in a column whose state forbids that.
 */
export type UndecryptableReason = (typeof UNDECRYPTABLE_REASONS)[number];

/** Most rows recorded per column; more is not a few damaged values but a wrong key or context. */
export const MAX_RECORDED_PER_COLUMN = 10_000;

/** A value left untouched because it does not decrypt: its row (walk key and xmin as read) and why. */
export interface UndecryptableRow {
  key: string[];
  /** The row version's xmin when it was read: a later count leaves the row out while it is unchanged. */
  xmin: string;
  reason: UndecryptableReason;
  /** The data key version its header names (null when it names none). */
  version: number | null;
}

export function describeReason(reason: UndecryptableReason, version: number | null, detail?: string): string {
  switch (reason) {
    case 'authentication':
      return `failed authentication under data key v${version}`;
    case 'malformed':
      return `is not a valid envelope (${detail ?? 'its header cannot be read'})`;
    case 'unknown-key':
      return `names data key v${version}, which the keyring does not have`;
    case 'destroyed-key':
      return `names data key v${version}, which the keyring does not have (destroyed)`;
    case 'plaintext':
      return 'is not a valid envelope (plaintext: it does not start like one)';
  }
}

/** Thrown by a transform's `read` for a value it cannot open; the pass stops or records it. */
export class UndecryptableValue extends Error {
  constructor(
    readonly reason: UndecryptableReason,
    readonly version: number | null,
    detail?: string,
  ) {
    super(describeReason(reason, version, detail));
  }
}

/** The data keys a reader opens values with: the usable ones by version, and the destroyed versions. */
export interface DataKeys {
  usable: ReadonlyMap<number, Buffer>;
  destroyed: ReadonlySet<number>;
}

/** The binary envelope of a stored value and the DEK version it names; throws plaintext or malformed. */
export function readStoredEnvelope(raw: Buffer, storage: Storage): { envelope: Buffer; version: number } {
  if (!isStoredEnvelopeBytes(raw, storage)) throw new UndecryptableValue('plaintext', null);
  try {
    const envelope = envelopeOfStoredBytes(raw, storage);
    return { envelope, version: envelopeVersion(envelope) };
  } catch (err) {
    if (err instanceof EnvelopeFormatError) throw new UndecryptableValue('malformed', null, err.message);
    throw err;
  }
}

/** The plaintext of an envelope under the DEK it names; throws unknown-key, destroyed-key or authentication. */
export function openWithDataKeys(keys: DataKeys, envelope: Buffer, version: number, context: string): Buffer {
  const dek = keys.usable.get(version);
  if (!dek) throw new UndecryptableValue(keys.destroyed.has(version) ? 'destroyed-key' : 'unknown-key', version);
  try {
    return openEnvelope(dek, envelope, context);
  } catch (err) {
    if (err instanceof EnvelopeAuthError) throw new UndecryptableValue('authentication', version);
    throw err;
  }
}

const STOPPED: Record<string, string> = { rotate: 'rotation', encrypt: 'encryption', decrypt: 'decryption' };

/** A pass that does not skip: the IntegrityError naming the row, before its chunk is written. */
export function stoppedAt(p: ColumnPlan, keys: string[], failure: UndecryptableValue, kind: string): IntegrityError {
  const key: Record<string, string> = {};
  p.keyColumns.forEach((k, i) => (key[k] = keys[i]));
  return new IntegrityError(
    `value in ${p.name} at ${describeKey(p, keys)} ${failure.message}; the ${STOPPED[kind] ?? kind} stopped before writing its chunk`,
    { schema: p.col.table_schema, table: p.col.table_name, column: p.col.column_name, key, version: failure.version ?? undefined },
    {
      hint:
        `restore that value from a backup (or set it NULL if it is expendable), then run \`alation-keys ${kind}\` again to resume; ` +
        `\`alation-keys verify\` lists every such value, and \`alation-keys ${kind} --skip-undecryptable\` leaves them untouched and does the rest`,
    },
  );
}

/** The rows recorded so far and those a chunk found: one entry per row key (the latest read wins). */
export function mergeRecorded(recorded: readonly UndecryptableRow[] | undefined, found: readonly UndecryptableRow[], column: string): UndecryptableRow[] {
  const byKey = new Map((recorded ?? []).map((r) => [JSON.stringify(r.key), r]));
  for (const r of found) byKey.set(JSON.stringify(r.key), r);
  if (byKey.size > MAX_RECORDED_PER_COLUMN) {
    throw new IntegrityError(
      `more than ${MAX_RECORDED_PER_COLUMN.toLocaleString('en-US')} values of ${column} do not decrypt: not a few damaged values but a wrong key, master key file or context; nothing more was skipped`,
      undefined,
      { hint: 'run `alation-keys verify` to see which data keys and reasons, and check the master key file (or KMS key) and the column\'s context' },
    );
  }
  return [...byKey.values()];
}

/** `unnest` of the recorded rows' keys and xmins as text arrays, and the condition matching row t to one (u). */
function recordedRowsSql(p: ColumnPlan, recorded: readonly UndecryptableRow[], withXmin: boolean): { from: string; match: string; params: string[][] } {
  const params: string[][] = p.keyColumns.map((_, i) => recorded.map((r) => r.key[i]));
  params.push(recorded.map((r) => r.xmin));
  const cols = [...p.keyColumns.map((_, i) => `k${i}`), 'row_xmin'];
  const from = `unnest(${params.map((_, i) => `$${i + 1}::text[]`).join(', ')}) AS u(${cols.join(', ')})`;
  const keys = p.keyColumns.map((k, i) => `t.${quoteIdent(k)} = u.k${i}::${p.keyTypes[i]}`);
  return { from, match: [...keys, ...(withXmin ? ['t.xmin = u.row_xmin::xid'] : [])].join(' AND '), params };
}

/**
 * Values of the column for which `pending` (a predicate on alias t) holds, leaving out the
 * recorded rows that are unchanged since they were read (same key, same xmin).
 */
export async function countPendingExceptRecorded(db: Queryable, p: ColumnPlan, pending: string, recorded: readonly UndecryptableRow[]): Promise<number> {
  const v = 't.' + quoteIdent(p.col.column_name);
  const u = recordedRowsSql(p, recorded, true);
  const r = await db.query<{ n: string }>(
    `SELECT count(*) AS n FROM ${p.table} AS t
      WHERE ${v} IS NOT NULL AND ${pending} AND NOT EXISTS (SELECT 1 FROM ${u.from} WHERE ${u.match})`,
    u.params,
  );
  return Number(r.rows[0].n);
}

/** The recorded rows whose value `pending` still holds for (the others were rewritten or changed since). */
export async function stillPending(db: Queryable, p: ColumnPlan, pending: string, recorded: readonly UndecryptableRow[]): Promise<UndecryptableRow[]> {
  if (recorded.length === 0) return [];
  const u = recordedRowsSql(p, recorded, false);
  const keys = p.keyColumns.map((k) => `t.${quoteIdent(k)}::text`).join(', ');
  const v = 't.' + quoteIdent(p.col.column_name);
  const r = await db.query<{ k: string[] }>(`SELECT ARRAY[${keys}] AS k FROM ${p.table} AS t JOIN ${u.from} ON ${u.match} WHERE ${v} IS NOT NULL AND ${pending}`, u.params);
  const left = new Set(r.rows.map((x) => JSON.stringify(x.k)));
  return recorded.filter((x) => left.has(JSON.stringify(x.key)));
}
