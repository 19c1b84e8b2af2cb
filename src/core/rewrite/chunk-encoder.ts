/**
 * The CPU side of a rotation pass: read one page of binary COPY, re-encrypt each value under
 * the new data key and write the staging rows straight into a binary COPY payload. Runs in a
 * worker thread (reader-worker.ts) so the main thread stays free for the writer.
 */
import { randomBytes } from 'node:crypto';
import {
  ENVELOPE_PREFIX_LENGTH,
  EnvelopeAuthError,
  NONCE_LENGTH,
  TEXT_PREFIX_BYTES,
  envelopeFromTextBytes,
  envelopeVersion,
  openEnvelope,
  sealEnvelope,
} from '../../crypto/envelope';
import { IntegrityError } from '../../errors';
import { CopyPayloadBuilder, CopyRow } from './copy-binary';
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
      envelope = this.text ? envelopeFromTextBytes(raw) : raw;
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
