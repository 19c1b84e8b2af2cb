/**
 * PostgreSQL's binary COPY format (https://www.postgresql.org/docs/current/sql-copy.html):
 *
 *   header   "PGCOPY\n\377\r\n\0", int32 flags, int32 extension length, extension bytes
 *   tuple    int16 field count, then per field int32 length (-1 = NULL) and the bytes
 *   trailer  int16 -1
 *
 * `CopyBinaryParser` turns a COPY … TO STDOUT (FORMAT binary) byte stream into arrays of
 * fields (Buffer | null), incrementally and with stream backpressure. `encodeCopyBinary`
 * builds one COPY … FROM STDIN (FORMAT binary) payload (the rotation writes its payloads
 * row by row with CopyPayloadBuilder in reencrypt.ts; this one is the reference). Fields of type text and bytea are
 * their raw bytes in this format, which is all the rotation needs.
 */
import { Transform, TransformCallback } from 'node:stream';

export const COPY_SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');
const HEADER_FIXED = COPY_SIGNATURE.length + 8;

export type CopyField = Buffer | null;
export type CopyRow = CopyField[];

export class CopyFormatError extends Error {}

export class CopyBinaryParser extends Transform {
  private chunks: Buffer[] = [];
  private available = 0;
  private headerDone = false;
  private ended = false;
  private fieldCount = -1;
  private fields: CopyRow = [];
  rows = 0;

  constructor() {
    super({ readableObjectMode: true, readableHighWaterMark: 64 });
  }

  /** Returns n bytes from the front (a view when they lie in one chunk) and consumes them. */
  private takeBytes(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.available -= n;
      return out;
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.available -= n;
    return out;
  }

  /** Consumes n bytes without making a view of them. */
  private skip(n: number): void {
    this.available -= n;
    while (n > 0) {
      const c = this.chunks[0];
      if (c.length <= n) {
        n -= c.length;
        this.chunks.shift();
      } else {
        this.chunks[0] = c.subarray(n);
        n = 0;
      }
    }
  }

  private peekInt16(): number {
    const first = this.chunks[0];
    if (first.length >= 2) return first.readInt16BE(0);
    return (this.chunks[0][0] << 24) >> 16 | this.chunks[1][0];
  }

  private peekInt32(): number {
    const first = this.chunks[0];
    if (first.length >= 4) return first.readInt32BE(0);
    const b = Buffer.allocUnsafe(4);
    let off = 0;
    for (const c of this.chunks) {
      const k = Math.min(c.length, 4 - off);
      c.copy(b, off, 0, k);
      off += k;
      if (off === 4) break;
    }
    return b.readInt32BE(0);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.available += chunk.length;
    }
    try {
      this.parse();
      cb();
    } catch (err) {
      cb(err as Error);
    }
  }

  override _flush(cb: TransformCallback): void {
    if (!this.ended) return cb(new CopyFormatError('binary COPY stream ended without its trailer'));
    cb();
  }

  private parse(): void {
    if (!this.headerDone) {
      if (this.available < HEADER_FIXED) return;
      const head = this.takeBytes(HEADER_FIXED);
      if (!head.subarray(0, COPY_SIGNATURE.length).equals(COPY_SIGNATURE)) throw new CopyFormatError('not a binary COPY stream');
      const ext = head.readInt32BE(COPY_SIGNATURE.length + 4);
      if (ext > 0) {
        // Extension data is skipped by readers that do not know it (none is defined).
        if (this.available < ext) {
          throw new CopyFormatError('binary COPY header extension split across reads is not supported');
        }
        this.takeBytes(ext);
      }
      this.headerDone = true;
    }
    while (!this.ended) {
      if (this.fieldCount < 0) {
        if (this.available < 2) return;
        const n = this.peekInt16();
        this.skip(2);
        if (n === -1) {
          this.ended = true;
          this.chunks = [];
          this.available = 0;
          return;
        }
        this.fieldCount = n;
        this.fields = [];
      }
      while (this.fields.length < this.fieldCount) {
        if (this.available < 4) return;
        const len = this.peekInt32();
        if (len === -1) {
          this.skip(4);
          this.fields.push(null);
          continue;
        }
        if (this.available < 4 + len) return;
        this.skip(4);
        this.fields.push(this.takeBytes(len));
      }
      const row = this.fields;
      this.fieldCount = -1;
      this.fields = [];
      this.rows++;
      this.push(row);
    }
  }
}

function writeRow(out: Buffer, offset: number, row: CopyRow): number {
  let off = out.writeInt16BE(row.length, offset);
  for (const f of row) {
    if (f === null) {
      off = out.writeInt32BE(-1, off);
    } else {
      off = out.writeInt32BE(f.length, off);
      off += f.copy(out, off);
    }
  }
  return off;
}

/** One COPY FROM STDIN (FORMAT binary) payload: header, the rows, trailer. Fields are raw bytes. */
export function encodeCopyBinary(rows: CopyRow[]): Buffer {
  let size = HEADER_FIXED + 2;
  for (const row of rows) {
    size += 2;
    for (const f of row) size += 4 + (f ? f.length : 0);
  }
  const out = Buffer.allocUnsafe(size);
  COPY_SIGNATURE.copy(out, 0);
  let off = COPY_SIGNATURE.length;
  off = out.writeInt32BE(0, off);
  off = out.writeInt32BE(0, off);
  for (const row of rows) off = writeRow(out, off, row);
  out.writeInt16BE(-1, off);
  return out;
}

const PIECE_BYTES = 256 * 1024;

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

  /** A field of `prefix` followed by the latin1 bytes of `text` (a text envelope: its prefix, then base64). */
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
