/**
 * The CPU side of a rewrite pass: take the rows of one page of binary COPY, apply the pass's
 * transform to each value and write the staging rows straight into a binary COPY payload.
 * Runs in the reader thread (reader-worker.ts) so the main thread stays free for the writer.
 */
import { createHash } from 'node:crypto';
import { CopyPayloadBuilder, CopyRow } from './copy-binary';
import { PassDescription } from './pass';
import { storedPrefixLength } from './plan';
import { openTransform, valueMatch, ValueRewriter } from './transform';
import { stoppedAt, UndecryptableRow, UndecryptableValue } from './undecryptable';

/** One chunk ready for the writer: a whole COPY … FROM STDIN (FORMAT binary) payload. */
export interface EncodedChunk {
  pieces: Buffer[];
  lo: string[];
  hi: string[];
  /** Staging rows (values to rewrite). */
  count: number;
  /** Bytes of the new values. */
  bytes: number;
  /** Values read per tally key of the transform (rotate: per DEK version, including ones already under the new key). */
  versions: Record<string, number>;
  /** Values read, and their stored bytes. */
  rows: number;
  bytesRead: number;
  /** Values left untouched because they do not decrypt (only with skipUndecryptable). */
  undecryptable: UndecryptableRow[];
}

/**
 * Rewrites the values of one column into chunks. Feed it the rows of each page (keys as
 * text, xmin, value); it returns full chunks as they fill.
 */
export class ChunkEncoder {
  private readonly prefixLength: number;
  private readonly byDigest: boolean;
  private readonly keyCount: number;
  private builder: CopyPayloadBuilder | null = null;
  private chunk: Omit<EncodedChunk, 'pieces'> | null = null;
  /** Keys of the last row seen: the next page starts after them. */
  watermark: string[] | null;

  constructor(
    private readonly pass: PassDescription,
    private readonly rewriter: ValueRewriter = openTransform(pass.transform, pass.plan),
  ) {
    this.prefixLength = storedPrefixLength(pass.plan);
    this.byDigest = valueMatch(pass.transform) === 'digest';
    this.keyCount = pass.plan.keyColumns.length;
    this.watermark = pass.watermark;
  }

  /** Adds one row read from the page; returns a chunk when this row filled one. */
  add(fields: CopyRow): EncodedChunk | null {
    const nk = this.keyCount;
    const keys: string[] = new Array(nk);
    for (let i = 0; i < nk; i++) {
      const k = fields[i];
      keys[i] = k ? k.toString('utf8') : '';
    }
    this.watermark = keys;
    const chunk = (this.chunk ??= { lo: keys, hi: keys, count: 0, bytes: 0, versions: {}, rows: 0, bytesRead: 0, undecryptable: [] });
    chunk.hi = keys;
    const raw = fields[nk + 1]!;
    chunk.rows++;
    chunk.bytesRead += raw.length;
    if (!this.read(raw, keys, fields[nk]!, chunk)) {
      return this.pass.readRowsPerChunk !== undefined && chunk.rows >= this.pass.readRowsPerChunk ? this.take() : null;
    }
    const b = (this.builder ??= new CopyPayloadBuilder());
    b.row(nk + 3);
    for (let i = 0; i < nk; i++) b.field(fields[i]);
    b.field(fields[nk]!); // xmin
    // What the UPDATE compares (plan.ts, updateFromStageSql): prefix, or digest of the value read.
    b.field(this.byDigest ? createHash('sha256').update(raw).digest() : raw.subarray(0, this.prefixLength));
    chunk.bytes += this.rewriter.writeNew(b);
    chunk.count++;
    if (chunk.count >= this.pass.batchSize || chunk.bytes >= this.pass.chunkBytes) return this.take();
    return null;
  }

  /** The transform's decision for one value; a value that does not decrypt stops the pass or is recorded. */
  private read(raw: Buffer, keys: string[], xmin: Buffer, chunk: Omit<EncodedChunk, 'pieces'>): boolean {
    try {
      return this.rewriter.read(raw, keys, chunk.versions);
    } catch (err) {
      if (!(err instanceof UndecryptableValue)) throw err;
      if (!this.pass.skipUndecryptable) throw stoppedAt(this.pass.plan, keys, err, this.pass.transform.kind);
      chunk.undecryptable.push({ key: keys, xmin: xmin.toString('latin1'), reason: err.reason, version: err.version });
      return false;
    }
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

  /** Overwrites the rewriter's copies of the keys. */
  wipe(): void {
    this.rewriter.wipe();
  }
}
