/**
 * The CPU side of a rotation pass: read one page of binary COPY, re-encrypt each value under
 * the new data key and write the staging rows straight into a binary COPY payload. Runs in a
 * worker thread (reader-worker.ts) so the main thread stays free for the writer.
 */
import { randomBytes } from 'node:crypto';
import {
  ENVELOPE_PREFIX_LENGTH,
  EnvelopeAuthError,
  EnvelopeFormatError,
  NONCE_LENGTH,
  TEXT_PREFIX,
  envelopeVersion,
  openEnvelope,
  sealEnvelope,
} from '../../crypto/envelope';
import { IntegrityError } from '../../errors';
import { COPY_SIGNATURE, CopyRow } from './copy-binary';
import { ColumnPlan, storedPrefixLength } from './plan';

/** What one page reader needs to know; plain data, so it crosses into a worker thread. */
export interface ReaderJob {
  plan: ColumnPlan;
  toVersion: number;
  newDek: Uint8Array;
  deks: Array<[number, Uint8Array]>;
  batchSize: number;
  chunkBytes: number;
  watermark: string[] | null;
  /** Read only values not already under toVersion (convergence passes). */
  filter: boolean;
}

/** One chunk ready for the writer: a whole COPY … FROM STDIN (FORMAT binary) payload. */
export interface EncodedChunk {
  pieces: Buffer[];
  lo: string[];
  hi: string[];
  /** Staging rows (values to rewrite). */
  count: number;
  /** Bytes of the new values. */
  bytes: number;
  /** Values read per DEK version (including ones already under the new key). */
  versions: Record<string, number>;
}

const NONCE_BATCH = 4096;
let nonces = Buffer.alloc(0);
let nonceOffset = 0;
/**
 * Random 96-bit nonces drawn from the CSPRNG 4096 at a time: one randomBytes call per value
 * is a measurable share of the rotation's CPU. Each nonce is used once.
 */
export function nextNonce(): Buffer {
  if (nonceOffset >= nonces.length) {
    nonces = randomBytes(NONCE_LENGTH * NONCE_BATCH);
    nonceOffset = 0;
  }
  const n = nonces.subarray(nonceOffset, nonceOffset + NONCE_LENGTH);
  nonceOffset += NONCE_LENGTH;
  return n;
}

const TEXT_PREFIX_BYTES = Buffer.from(TEXT_PREFIX, 'latin1');
const EQUALS = 0x3d;
/** Value of each base64 alphabet byte, -1 for anything else. */
const BASE64_VALUE = new Int8Array(256).fill(-1);
'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.split('').forEach((c, i) => (BASE64_VALUE[c.charCodeAt(0)] = i));

/**
 * The binary envelope of a text-storage value (`ak1:` + canonical base64), exactly as strict
 * as envelopeFromText (a test checks both accept the same strings) but without re-encoding
 * the value to compare: padding only at the end, the decoded length the body implies (Node's
 * decoder skips bytes outside the alphabet, so any such byte shortens it), no URL-safe
 * characters (which Node's decoder accepts), zero unused bits in the last character.
 */
export function textEnvelope(raw: Buffer): Buffer {
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

/** `id=42` or `tenant=a, n=7`: a row's walk key as messages show it. */
export function describeKey(p: ColumnPlan, keys: string[]): string {
  return p.keyColumns.map((k, i) => `${k}=${keys[i]}`).join(', ');
}

function integrity(p: ColumnPlan, keys: string[], why: string, version?: number): IntegrityError {
  const key: Record<string, string> = {};
  p.keyColumns.forEach((k, i) => (key[k] = keys[i]));
  return new IntegrityError(
    `value in ${p.name} at ${describeKey(p, keys)} ${why}; the rotation stopped before writing its chunk`,
    { schema: p.col.table_schema, table: p.col.table_name, column: p.col.column_name, key, version },
    { hint: 'restore that value from a backup (or set it NULL if it is expendable), then run `alation-keys rotate` again to resume' },
  );
}

const PIECE_BYTES = 256 * 1024;
const HEADER_FIXED = COPY_SIGNATURE.length + 8;

/**
 * Builds a binary COPY payload row by row into pieces of about 256 KiB, each on its own
 * ArrayBuffer (so the pieces can be transferred to another thread without a copy).
 */
export class CopyPayloadBuilder {
  private pieces: Buffer[] = [];
  private cur: Buffer;
  private off = 0;

  constructor() {
    this.cur = Buffer.allocUnsafeSlow(PIECE_BYTES);
    COPY_SIGNATURE.copy(this.cur, 0);
    this.cur.writeInt32BE(0, COPY_SIGNATURE.length);
    this.cur.writeInt32BE(0, COPY_SIGNATURE.length + 4);
    this.off = HEADER_FIXED;
  }

  private room(n: number): void {
    if (this.off + n <= this.cur.length) return;
    this.pieces.push(this.cur.subarray(0, this.off));
    this.cur = Buffer.allocUnsafeSlow(Math.max(PIECE_BYTES, n));
    this.off = 0;
  }

  row(fields: number): void {
    this.room(2);
    this.off = this.cur.writeInt16BE(fields, this.off);
  }

  field(value: Buffer | null): void {
    if (value === null) {
      this.room(4);
      this.off = this.cur.writeInt32BE(-1, this.off);
      return;
    }
    this.room(4 + value.length);
    this.off = this.cur.writeInt32BE(value.length, this.off);
    this.off += value.copy(this.cur, this.off);
  }

  /** A field of `prefix` followed by the latin1 bytes of `text` (`ak1:` + base64). */
  textField(prefix: Buffer, text: string): number {
    const n = prefix.length + text.length;
    this.room(4 + n);
    this.off = this.cur.writeInt32BE(n, this.off);
    this.off += prefix.copy(this.cur, this.off);
    this.off += this.cur.write(text, this.off, 'latin1');
    return n;
  }

  /** The payload with its trailer. The builder is not usable afterwards. */
  finish(): Buffer[] {
    this.room(2);
    this.off = this.cur.writeInt16BE(-1, this.off);
    this.pieces.push(this.cur.subarray(0, this.off));
    const out = this.pieces;
    this.pieces = [];
    return out;
  }
}

/**
 * Re-encrypts the values of one column into chunks. Feed it the rows of each page (keys as
 * text, xmin, value); it returns full chunks as they fill.
 */
export class ChunkEncoder {
  private readonly deks: Map<number, Buffer>;
  private readonly newDek: Buffer;
  private readonly text: boolean;
  private readonly prefixLength: number;
  private builder: CopyPayloadBuilder | null = null;
  private chunk: Omit<EncodedChunk, 'pieces'> | null = null;
  /** Keys of the last row seen: the next page starts after them. */
  watermark: string[] | null;

  constructor(private readonly job: ReaderJob) {
    // Copies, so wipe() never zeroes the caller's keys.
    this.deks = new Map(job.deks.map(([v, k]) => [v, Buffer.from(k)]));
    this.newDek = Buffer.from(job.newDek);
    this.text = job.plan.col.storage === 'text';
    this.prefixLength = storedPrefixLength(job.plan);
    this.watermark = job.watermark;
  }

  /** Adds one row read from the page; returns a chunk when this row filled one. */
  add(fields: CopyRow): EncodedChunk | null {
    const p = this.job.plan;
    const nk = p.keyColumns.length;
    const keys: string[] = new Array(nk);
    for (let i = 0; i < nk; i++) {
      const k = fields[i];
      keys[i] = k ? k.toString('utf8') : '';
    }
    this.watermark = keys;
    const chunk = (this.chunk ??= { lo: keys, hi: keys, count: 0, bytes: 0, versions: {} });
    chunk.hi = keys;
    const xmin = fields[nk]!;
    const raw = fields[nk + 1]!;
    let envelope: Buffer;
    let version: number;
    try {
      envelope = this.text ? textEnvelope(raw) : raw;
      version = envelopeVersion(envelope);
    } catch (err) {
      throw integrity(p, keys, `is not a valid envelope (${(err as Error).message})`);
    }
    chunk.versions[version] = (chunk.versions[version] ?? 0) + 1;
    // Already under the new key (written by an up-to-date application instance): leave it.
    if (version === this.job.toVersion) return null;
    const dek = this.deks.get(version);
    if (!dek) throw integrity(p, keys, `names data key v${version}, which the keyring does not have (destroyed?)`, version);
    let plain: Buffer;
    try {
      plain = openEnvelope(dek, envelope, p.col.context);
    } catch (err) {
      if (err instanceof EnvelopeAuthError) throw integrity(p, keys, `failed authentication under data key v${version}`, version);
      throw err;
    }
    const sealed = sealEnvelope(this.newDek, this.job.toVersion, plain, p.col.context, nextNonce());
    plain.fill(0);
    const b = (this.builder ??= new CopyPayloadBuilder());
    b.row(nk + 3);
    for (let i = 0; i < nk; i++) b.field(fields[i]);
    b.field(xmin);
    if (this.text) {
      b.field(raw.subarray(0, this.prefixLength));
      chunk.bytes += b.textField(TEXT_PREFIX_BYTES, sealed.toString('base64'));
    } else {
      b.field(envelope.subarray(0, ENVELOPE_PREFIX_LENGTH));
      b.field(sealed);
      chunk.bytes += sealed.length;
    }
    chunk.count++;
    if (chunk.count >= this.job.batchSize || chunk.bytes >= this.job.chunkBytes) return this.take();
    return null;
  }

  /** The chunk in progress (possibly with no staging rows), or null when nothing was read since the last one. */
  take(): EncodedChunk | null {
    if (!this.chunk) return null;
    const chunk = this.chunk;
    const pieces = this.builder ? this.builder.finish() : [];
    this.chunk = null;
    this.builder = null;
    return { ...chunk, pieces };
  }

  /** Overwrites this encoder's copies of the data keys. */
  wipe(): void {
    for (const k of this.deks.values()) k.fill(0);
    this.newDek.fill(0);
  }
}
