/**
 * The envelope as SQL sees it: expressions over a stored value that read its header in the
 * database, without decrypting. Generated from the constants of envelope.ts, so the format is
 * spelled in one place (SPEC sections 3 and 4.2).
 */
import { ENVELOPE_FORMAT_V1, ENVELOPE_MAGIC, ENVELOPE_PREFIX_LENGTH, HEADER_LENGTH, Storage, TEXT_PREFIX } from './envelope';

/** magic + format byte: the first bytes of every v1 envelope. */
const ENVELOPE_START = Buffer.concat([ENVELOPE_MAGIC, Buffer.from([ENVELOPE_FORMAT_V1])]);
/** Base64 characters that decode to the header (rounded up to whole 3-byte groups). */
const HEADER_BASE64_CHARS = Math.ceil(HEADER_LENGTH / 3) * 4;

function byteaLiteral(bytes: Buffer): string {
  return `'\\x${bytes.toString('hex')}'::bytea`;
}

/**
 * "The value is an envelope" in the sense of SPEC 4.2: a text value starting with `ak1:`, a
 * bytea value whose first three bytes are magic and format. NULL for a NULL value.
 */
export function isEnvelopeSql(storage: Storage, value: string): string {
  if (storage === 'bytea') return `(substring(${value} FROM 1 FOR ${ENVELOPE_START.length}) = ${byteaLiteral(ENVELOPE_START)})`;
  return `(substring(${value} FROM 1 FOR ${TEXT_PREFIX.length}) = '${TEXT_PREFIX}')`;
}

/**
 * The leading part of a value that isEnvelopeSql and headerSql read: the header's bytes (bytea)
 * or `ak1:` and the base64 characters that decode to it (text). A scan takes it once per row
 * (one TOAST slice fetch for a large value) and evaluates both on it, instead of fetching a
 * slice for every substring (measured: the census and the per-version counts take half the time).
 */
export function headerPrefixSql(storage: Storage, value: string): string {
  const n = storage === 'bytea' ? HEADER_LENGTH : TEXT_PREFIX.length + HEADER_BASE64_CHARS;
  return `substring(${value} FROM 1 FOR ${n})`;
}

/** The 7-byte envelope header of a value as bytea (NULL when a text value cannot hold one). */
export function headerSql(storage: Storage, value: string): string {
  if (storage === 'bytea') return `substring(${value} FROM 1 FOR ${HEADER_LENGTH})`;
  const n = TEXT_PREFIX.length + HEADER_BASE64_CHARS;
  return `(CASE WHEN substring(${value} FROM 1 FOR ${n}) ~ '^${TEXT_PREFIX}[A-Za-z0-9+/]{${HEADER_BASE64_CHARS}}$' THEN substring(decode(substring(${value} FROM ${TEXT_PREFIX.length + 1} FOR ${HEADER_BASE64_CHARS}), 'base64') FROM 1 FOR ${HEADER_LENGTH}) END)`;
}

/** The header of DEK `version` as a bytea literal, to compare with headerSql. */
export function headerLiteralSql(version: number): string {
  const v = Number(version);
  if (!Number.isInteger(v) || v < 1 || v > 0xffffffff) throw new RangeError(`bad DEK version ${version}`);
  const h = Buffer.alloc(HEADER_LENGTH);
  ENVELOPE_START.copy(h, 0);
  h.writeUInt32BE(v, ENVELOPE_START.length);
  return byteaLiteral(h);
}

/** The DEK version (bigint) of a value; NULL for values that do not hold a v1 header. */
export function versionSql(storage: Storage, value: string): string {
  const h = headerSql(storage, value);
  const at = ENVELOPE_START.length;
  return `(CASE WHEN length(${h}) = ${HEADER_LENGTH} AND substring(${h} FROM 1 FOR ${at}) = ${byteaLiteral(ENVELOPE_START)} THEN (get_byte(${h}, ${at})::bigint << 24) | (get_byte(${h}, ${at + 1}) << 16) | (get_byte(${h}, ${at + 2}) << 8) | get_byte(${h}, ${at + 3}) END)`;
}

/** The DEK version a header read by headerSql names, or null when it is not a v1 header. */
export function versionOfHeader(h: Buffer | null | undefined): number | null {
  if (!h || h.length !== HEADER_LENGTH || h.compare(ENVELOPE_START, 0, ENVELOPE_START.length, 0, ENVELOPE_START.length) !== 0) return null;
  return h.readUInt32BE(ENVELOPE_START.length);
}

/**
 * Length of the stored prefix that identifies one encryption of one value (header + nonce):
 * 19 bytes of a bytea envelope; in text storage the prefix and the base64 characters that
 * encode those 19 bytes (rounded up to whole 3-byte groups).
 */
export function storedPrefixLength(storage: Storage): number {
  return storage === 'bytea' ? ENVELOPE_PREFIX_LENGTH : TEXT_PREFIX.length + Math.ceil(ENVELOPE_PREFIX_LENGTH / 3) * 4;
}
