/**
 * The value envelope, format v1 (docs/format.md section 4). Pure functions: no I/O.
 *
 *   0  2  magic "AK"
 *   2  1  format version 0x01
 *   3  4  DEK version, uint32 big-endian
 *   7  12 nonce
 *  19  n  AES-256-GCM ciphertext
 * 19+n 16 GCM tag
 *
 * AAD = the 7-byte header followed by the UTF-8 bytes of the column context.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

export const ENVELOPE_MAGIC = Buffer.from('AK', 'latin1');
export const ENVELOPE_FORMAT_V1 = 0x01;
export const HEADER_LENGTH = 7;
export const NONCE_LENGTH = 12;
export const TAG_LENGTH = 16;
/** Header plus nonce: the prefix that identifies one encryption of one value. */
export const ENVELOPE_PREFIX_LENGTH = HEADER_LENGTH + NONCE_LENGTH;
export const ENVELOPE_OVERHEAD = ENVELOPE_PREFIX_LENGTH + TAG_LENGTH;
export const TEXT_PREFIX = 'ak1:';
export const DEK_LENGTH = 32;
const MAGIC_0 = ENVELOPE_MAGIC[0];
const MAGIC_1 = ENVELOPE_MAGIC[1];
/** Offset of the DEK version: after the magic and the format byte. */
const VERSION_OFFSET = ENVELOPE_MAGIC.length + 1;

export type Storage = 'bytea' | 'text';

/** Why a byte string is not a usable envelope. */
export class EnvelopeFormatError extends Error {}
/** The envelope is well formed but did not authenticate under the key and context. */
export class EnvelopeAuthError extends Error {}

export function envelopeHeader(dekVersion: number): Buffer {
  if (!Number.isInteger(dekVersion) || dekVersion < 1 || dekVersion > 0xffffffff) {
    throw new RangeError(`DEK version must be an integer from 1 to 4294967295, got ${dekVersion}`);
  }
  const header = Buffer.allocUnsafe(HEADER_LENGTH);
  ENVELOPE_MAGIC.copy(header, 0);
  header[ENVELOPE_MAGIC.length] = ENVELOPE_FORMAT_V1;
  header.writeUInt32BE(dekVersion, VERSION_OFFSET);
  return header;
}

function additionalData(header: Buffer, context: string): Buffer {
  return context.length === 0 ? header : Buffer.concat([header, Buffer.from(context, 'utf8')]);
}

/** Encrypts plaintext bytes into a binary envelope. `nonce` is for test vectors only. */
export function sealEnvelope(dek: Buffer, dekVersion: number, plaintext: Buffer, context: string, nonce?: Buffer): Buffer {
  if (dek.length !== DEK_LENGTH) throw new RangeError('a data key is 32 bytes');
  const iv = nonce ?? randomBytes(NONCE_LENGTH);
  if (iv.length !== NONCE_LENGTH) throw new RangeError('a nonce is 12 bytes');
  const header = envelopeHeader(dekVersion);
  const cipher = createCipheriv('aes-256-gcm', dek, iv, { authTagLength: TAG_LENGTH });
  cipher.setAAD(additionalData(header, context));
  const out = Buffer.allocUnsafe(ENVELOPE_OVERHEAD + plaintext.length);
  header.copy(out, 0);
  iv.copy(out, HEADER_LENGTH);
  let offset = ENVELOPE_PREFIX_LENGTH;
  const body = cipher.update(plaintext);
  body.copy(out, offset);
  offset += body.length;
  const rest = cipher.final();
  rest.copy(out, offset);
  offset += rest.length;
  cipher.getAuthTag().copy(out, offset);
  return out;
}

/** Reads the DEK version from a binary envelope, checking magic, format and length. */
export function envelopeVersion(envelope: Buffer): number {
  if (envelope.length < ENVELOPE_OVERHEAD) {
    throw new EnvelopeFormatError(`envelope too short (${envelope.length} bytes, at least ${ENVELOPE_OVERHEAD})`);
  }
  if (envelope[0] !== MAGIC_0 || envelope[1] !== MAGIC_1) throw new EnvelopeFormatError('not an envelope (bad magic)');
  if (envelope[2] !== ENVELOPE_FORMAT_V1) throw new EnvelopeFormatError(`unknown envelope format version ${envelope[2]}`);
  return envelope.readUInt32BE(VERSION_OFFSET);
}

/** Decrypts a binary envelope with the DEK it names; always checks the full 16-byte tag. */
export function openEnvelope(dek: Buffer, envelope: Buffer, context: string): Buffer {
  envelopeVersion(envelope);
  const header = envelope.subarray(0, HEADER_LENGTH);
  const iv = envelope.subarray(HEADER_LENGTH, ENVELOPE_PREFIX_LENGTH);
  const tag = envelope.subarray(envelope.length - TAG_LENGTH);
  const decipher = createDecipheriv('aes-256-gcm', dek, iv, { authTagLength: TAG_LENGTH });
  decipher.setAAD(additionalData(header, context));
  decipher.setAuthTag(tag);
  const body = decipher.update(envelope.subarray(ENVELOPE_PREFIX_LENGTH, envelope.length - TAG_LENGTH));
  try {
    const rest = decipher.final();
    return rest.length === 0 ? body : Buffer.concat([body, rest]);
  } catch {
    throw new EnvelopeAuthError('authentication failed (wrong key, wrong context or modified value)');
  }
}

/** `ak1:` + standard base64 with padding, as stored in a text column. */
export function envelopeToText(envelope: Buffer): string {
  return TEXT_PREFIX + envelope.toString('base64');
}

const BASE64_STRICT = /^[A-Za-z0-9+/]*={0,2}$/;

export function envelopeFromText(value: string): Buffer {
  if (!value.startsWith(TEXT_PREFIX)) throw new EnvelopeFormatError('not an envelope (text value without the ak1: prefix)');
  const body = value.slice(TEXT_PREFIX.length);
  if (body.length % 4 !== 0 || !BASE64_STRICT.test(body)) throw new EnvelopeFormatError('not an envelope (malformed base64)');
  const bytes = Buffer.from(body, 'base64');
  if (bytes.toString('base64') !== body) throw new EnvelopeFormatError('not an envelope (non-canonical base64)');
  return bytes;
}

export const TEXT_PREFIX_BYTES = Buffer.from(TEXT_PREFIX, 'latin1');
const EQUALS = 0x3d;
/** Value of each base64 alphabet byte, -1 for anything else. */
const BASE64_VALUE = new Int8Array(256).fill(-1);
'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.split('').forEach((c, i) => (BASE64_VALUE[c.charCodeAt(0)] = i));

/**
 * envelopeFromText for the raw bytes of a stored value (as binary COPY gives them), exactly as
 * strict (a test checks both accept the same values) but without re-encoding the value to
 * compare: padding only at the end, the decoded length the body implies (Node's decoder skips
 * bytes outside the alphabet, so any such byte shortens it), no URL-safe characters (which
 * Node's decoder accepts), zero unused bits in the last character.
 */
export function envelopeFromTextBytes(raw: Buffer): Buffer {
  const start = TEXT_PREFIX_BYTES.length;
  if (raw.length < start || raw.compare(TEXT_PREFIX_BYTES, 0, start, 0, start) !== 0) {
    throw new EnvelopeFormatError('not an envelope (text value without the ak1: prefix)');
  }
  const bodyLength = raw.length - start;
  const end = raw.length;
  const pad = bodyLength > 0 && raw[end - 1] === EQUALS ? (raw[end - 2] === EQUALS && bodyLength > 1 ? 2 : 1) : 0;
  const firstEquals = raw.indexOf(EQUALS, start);
  const bytes = bodyLength % 4 === 0 ? Buffer.from(raw.toString('latin1', start), 'base64') : null;
  if (
    bytes === null ||
    (firstEquals !== -1 && firstEquals !== end - pad) ||
    bytes.length !== (bodyLength / 4) * 3 - pad ||
    raw.indexOf(0x2d, start) !== -1 || // '-'
    raw.indexOf(0x5f, start) !== -1 || // '_'
    (pad === 1 && (BASE64_VALUE[raw[end - 2]] & 0x03) !== 0) ||
    (pad === 2 && (BASE64_VALUE[raw[end - 3]] & 0x0f) !== 0)
  ) {
    throw new EnvelopeFormatError('not an envelope (malformed or non-canonical base64)');
  }
  return bytes;
}

/** The binary envelope of a stored value's raw bytes: text storage is decoded strictly, bytea is as is. */
export function envelopeOfStoredBytes(raw: Buffer, storage: Storage): Buffer {
  return storage === 'text' ? envelopeFromTextBytes(raw) : raw;
}

/** The DEK version of a stored value (bytea or text storage) without decrypting it. */
export function storedValueVersion(value: Buffer | string): number {
  return envelopeVersion(typeof value === 'string' ? envelopeFromText(value) : value);
}

/**
 * Whether a stored value is an envelope in the sense of SPEC 4.2 (what a column in state
 * `encrypting` or `decrypting` tells apart from plaintext): a text value starting with `ak1:`,
 * a bytea value whose first three bytes are magic and format. Nothing about the rest is checked.
 */
export function isStoredEnvelope(value: Buffer | string): boolean {
  if (typeof value === 'string') return value.startsWith(TEXT_PREFIX);
  return value.length >= 3 && value[0] === MAGIC_0 && value[1] === MAGIC_1 && value[2] === ENVELOPE_FORMAT_V1;
}

/** isStoredEnvelope for the raw bytes of a stored value as binary COPY gives them. */
export function isStoredEnvelopeBytes(raw: Buffer, storage: Storage): boolean {
  if (storage === 'bytea') return isStoredEnvelope(raw);
  return raw.length >= TEXT_PREFIX_BYTES.length && raw.compare(TEXT_PREFIX_BYTES, 0, TEXT_PREFIX_BYTES.length, 0, TEXT_PREFIX_BYTES.length) === 0;
}
