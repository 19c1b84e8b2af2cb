/**
 * One pass over one column: read pages in key order with binary COPY, re-encrypt in a
 * stream with backpressure, write each chunk through a staging table in one transaction
 * that also checkpoints the job.
 *
 *   COPY (SELECT keys, value … LIMIT page) TO STDOUT  →  CopyBinaryParser  →  re-encrypt
 *     →  chunks (rows ≤ batch size, bytes ≤ chunk bytes)  →  BEGIN; COPY stage FROM STDIN;
 *        UPDATE t … FROM stage WHERE prefix unchanged; checkpoint; COMMIT
 *
 * Reading runs ahead of writing by at most one chunk (Readable.from with highWaterMark 1),
 * so memory stays bounded by a few chunks whatever the size of the table.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Pool, PoolClient } from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
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
import { CopyBinaryParser, CopyRow, encodeCopyBinaryPieces } from './copy-binary';
import { ColumnPlan, copyIntoStageSql, createStageSql, readPageSql, stageStorageSql, storedPrefixLength, updateFromStageSql } from './plan';
import { sleep, testPause } from './util';

/** Per-column checkpoint, kept in jobs.detail.columns[<column>]. */
export interface ColumnState {
  watermark: string[] | null;
  pass: number;
  done: boolean;
  /** Values to rewrite when the job started. */
  rows: number;
  bytes: number;
  rowsDone: number;
  bytesDone: number;
  skipped: number;
  /** Values read per DEK version in the first pass: the "before" of the summary. */
  before?: Record<string, number>;
}

export interface ColumnProgress {
  column: string;
  pass: number;
  rowsTotal: number;
  rowsDone: number;
  bytesDone: number;
  skipped: number;
  rowsPerSecond: number;
  bytesPerSecond: number;
  etaSeconds: number | null;
}

export interface RotateEvents {
  /** A line worth logging (resume, preflight, passes). */
  info?(message: string): void;
  warn?(message: string): void;
  columnStart?(p: ColumnProgress): void;
  progress?(p: ColumnProgress): void;
  columnDone?(p: ColumnProgress): void;
}

/** Throttle shared by all workers (--max-rate ROWS/S). */
export class RateLimiter {
  private granted = 0;
  private readonly start = Date.now();
  constructor(private readonly rowsPerSecond: number | undefined) {}
  async take(rows: number, signal: AbortSignal): Promise<void> {
    if (!this.rowsPerSecond) return;
    this.granted += rows;
    const due = this.start + (this.granted / this.rowsPerSecond) * 1000;
    await sleep(due - Date.now(), signal);
  }
}

/**
 * Runs plain VACUUM on a table after every `everyBytes` rewritten in it, on its own
 * connection and outside any transaction, so later chunks reuse the space of the dead row
 * versions the earlier chunks left (an in-place rewrite otherwise doubles the table).
 */
export class Vacuumer {
  private since = new Map<string, number>();
  private running = new Map<string, Promise<void>>();
  vacuums = 0;
  constructor(
    private readonly pool: Pool,
    private readonly everyBytes: (table: string) => number,
    private readonly events: RotateEvents,
  ) {}

  wrote(table: string, bytes: number): void {
    const n = (this.since.get(table) ?? 0) + bytes;
    this.since.set(table, n);
    if (n < this.everyBytes(table) || this.running.has(table)) return;
    this.since.set(table, 0);
    const p = this.pool
      .query(`VACUUM ${table}`)
      .then(() => {
        this.vacuums++;
      })
      .catch((err) => this.events.warn?.(`VACUUM ${table} failed: ${(err as Error).message}`))
      .finally(() => this.running.delete(table));
    this.running.set(table, p);
  }

  async idle(): Promise<void> {
    await Promise.all([...this.running.values()]);
  }
}

export interface PassContext {
  pool: Pool;
  jobId: number;
  toVersion: number;
  newDek: Buffer;
  deks: Map<number, Buffer>;
  batchSize: number;
  chunkBytes: number;
  /** Stop after the current chunk (signal, or another worker failed). */
  stop: AbortSignal;
  limiter: RateLimiter;
  vacuumer: Vacuumer;
  events: RotateEvents;
}

interface Chunk {
  rows: CopyRow[];
  lo: string[];
  hi: string[];
  count: number;
  bytes: number;
  /** Values read per DEK version (including ones already under the new key). */
  versions: Record<string, number>;
}

const RETRYABLE = new Set(['55P03', '57014', '40P01', '40001']);
const MAX_ATTEMPTS = 6;

function keyDescription(p: ColumnPlan, keys: string[]): string {
  return p.keyColumns.map((k, i) => `${k}=${keys[i]}`).join(', ');
}

function integrity(p: ColumnPlan, keys: string[], why: string, version?: number): IntegrityError {
  const key: Record<string, string> = {};
  p.keyColumns.forEach((k, i) => (key[k] = keys[i]));
  return new IntegrityError(
    `value in ${p.name} at ${keyDescription(p, keys)} ${why}; the rotation stopped before writing its chunk`,
    { schema: p.col.table_schema, table: p.col.table_name, column: p.col.column_name, key, version },
    { hint: 'restore that value from a backup (or set it NULL if it is expendable), then run `alation-keys rotate` again to resume' },
  );
}

const NONCE_BATCH = 4096;
let nonces = Buffer.alloc(0);
let nonceOffset = 0;
/**
 * Random 96-bit nonces drawn from the CSPRNG 4096 at a time: one randomBytes call per value
 * is a measurable share of the rotation's CPU. Each nonce is used once.
 */
function nextNonce(): Buffer {
  if (nonceOffset >= nonces.length) {
    nonces = randomBytes(NONCE_LENGTH * NONCE_BATCH);
    nonceOffset = 0;
  }
  const n = nonces.subarray(nonceOffset, nonceOffset + NONCE_LENGTH);
  nonceOffset += NONCE_LENGTH;
  return n;
}

const TEXT_PREFIX_BYTES = Buffer.from(TEXT_PREFIX, 'latin1');

/**
 * The binary envelope of a text-storage value (`ak1:` + canonical base64), as strict as
 * envelopeFromText: a body that does not re-encode to exactly itself (bad characters, missing
 * padding, non-canonical bits, non-ASCII bytes) is refused. Works on the raw bytes COPY gave.
 */
function textEnvelope(raw: Buffer): Buffer {
  if (raw.length < TEXT_PREFIX_BYTES.length || raw.compare(TEXT_PREFIX_BYTES, 0, TEXT_PREFIX_BYTES.length, 0, TEXT_PREFIX_BYTES.length) !== 0) {
    throw new EnvelopeFormatError('not an envelope (text value without the ak1: prefix)');
  }
  const body = raw.toString('latin1', TEXT_PREFIX_BYTES.length);
  const bytes = Buffer.from(body, 'base64');
  if (bytes.toString('base64') !== body) throw new EnvelopeFormatError('not an envelope (malformed or non-canonical base64)');
  return bytes;
}

/** Decrypts one value under its own DEK and seals it under the new one: a staging row. */
function reencrypt(ctx: PassContext, p: ColumnPlan, fields: CopyRow): { row: CopyRow | null; keys: string[]; bytes: number; version: number } {
  const nk = p.keyColumns.length;
  const keys: string[] = [];
  const out: CopyRow = [];
  for (let i = 0; i < nk; i++) {
    const k = fields[i];
    keys.push(k ? k.toString('utf8') : '');
    out.push(k ? Buffer.from(k) : null);
  }
  const xmin = fields[nk]!;
  const raw = fields[nk + 1]!;
  let envelope: Buffer;
  let version: number;
  try {
    envelope = p.col.storage === 'text' ? textEnvelope(raw) : raw;
    version = envelopeVersion(envelope);
  } catch (err) {
    throw integrity(p, keys, `is not a valid envelope (${(err as Error).message})`);
  }
  // Already under the new key (written by an up-to-date application instance): leave it.
  if (version === ctx.toVersion) return { row: null, keys, bytes: 0, version };
  const dek = ctx.deks.get(version);
  if (!dek) throw integrity(p, keys, `names data key v${version}, which the keyring does not have (destroyed?)`, version);
  let plain: Buffer;
  try {
    plain = openEnvelope(dek, envelope, p.col.context);
  } catch (err) {
    if (err instanceof EnvelopeAuthError) throw integrity(p, keys, `failed authentication under data key v${version}`, version);
    throw err;
  }
  const sealed = sealEnvelope(ctx.newDek, ctx.toVersion, plain, p.col.context, nextNonce());
  plain.fill(0);
  let oldPrefix: Buffer;
  let newValue: Buffer;
  if (p.col.storage === 'text') {
    oldPrefix = Buffer.from(raw.subarray(0, storedPrefixLength(p)));
    newValue = Buffer.from('ak1:' + sealed.toString('base64'), 'latin1');
  } else {
    oldPrefix = Buffer.from(envelope.subarray(0, ENVELOPE_PREFIX_LENGTH));
    newValue = sealed;
  }
  out.push(Buffer.from(xmin), oldPrefix, newValue);
  return { row: out, keys, bytes: newValue.length, version };
}

/** Reads pages after the watermark and yields re-encrypted chunks. Owns the reader connection. */
async function* produceChunks(ctx: PassContext, p: ColumnPlan, startWatermark: string[] | null, filter: boolean): AsyncGenerator<Chunk> {
  const pageRows = Math.max(ctx.batchSize * 4, 1000);
  const client = await ctx.pool.connect();
  let broken = false;
  try {
    let watermark = startWatermark;
    let chunk: Chunk | null = null;
    for (;;) {
      const sql = readPageSql(p, ctx.toVersion, watermark, pageRows, (s) => client.escapeLiteral(s), filter);
      const src = client.query(copyTo(sql));
      const parser = new CopyBinaryParser();
      src.on('error', (err) => parser.destroy(err));
      src.pipe(parser);
      broken = true; // until the page is read to its end
      let n = 0;
      for await (const fields of parser as AsyncIterable<CopyRow>) {
        n++;
        const r = reencrypt(ctx, p, fields);
        watermark = r.keys;
        if (!chunk) chunk = { rows: [], lo: r.keys, hi: r.keys, count: 0, bytes: 0, versions: {} };
        chunk.hi = r.keys;
        chunk.versions[r.version] = (chunk.versions[r.version] ?? 0) + 1;
        if (!r.row) continue;
        chunk.rows.push(r.row);
        chunk.count++;
        chunk.bytes += r.bytes;
        if (chunk.count >= ctx.batchSize || chunk.bytes >= ctx.chunkBytes) {
          const full: Chunk = chunk;
          chunk = null;
          yield full;
        }
      }
      broken = false;
      if (n < pageRows) break;
    }
    if (chunk) yield chunk;
  } finally {
    client.release(broken);
  }
}

function checkpointSql(): string {
  return `UPDATE alation_keys.jobs
             SET rows_done = rows_done + $2, bytes_done = bytes_done + $3, updated_at = now(),
                 detail = jsonb_set(detail, ARRAY['columns', $4::text], coalesce(detail->'columns'->$4::text, '{}'::jsonb) || $5::jsonb)
           WHERE id = $1`;
}

/** Writes the column's state alone (pass start / pass done). */
export async function saveColumnState(db: Pick<PoolClient, 'query'>, jobId: number, column: string, state: ColumnState): Promise<void> {
  await db.query(checkpointSql(), [jobId, 0, 0, column, JSON.stringify(state)]);
}

/** One transaction: stage the chunk, update rows whose value is unchanged, checkpoint. Returns rows updated. */
async function writeChunk(client: PoolClient, ctx: PassContext, p: ColumnPlan, chunk: Chunk, state: ColumnState): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    try {
      await client.query('BEGIN');
      await client.query(`SET LOCAL lock_timeout = '10s'`);
      await client.query(`SET LOCAL statement_timeout = '5min'`);
      await pipeline(Readable.from(encodeCopyBinaryPieces(chunk.rows)), client.query(copyFrom(copyIntoStageSql(p))));
      const upd = await client.query(updateFromStageSql(p), [...chunk.lo, ...chunk.hi]);
      const updated = upd.rowCount ?? 0;
      const next: ColumnState = {
        ...state,
        watermark: chunk.hi,
        rowsDone: state.rowsDone + updated,
        bytesDone: state.bytesDone + chunk.bytes,
        skipped: state.skipped + (chunk.count - updated),
      };
      if (state.pass === 1) {
        const before = { ...(state.before ?? {}) };
        for (const [v, n] of Object.entries(chunk.versions)) before[v] = (before[v] ?? 0) + n;
        next.before = before;
      }
      await client.query(checkpointSql(), [ctx.jobId, updated, chunk.bytes, p.name, JSON.stringify(next)]);
      await client.query('COMMIT');
      Object.assign(state, next);
      return updated;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      const code = (err as { code?: string }).code;
      if (code && RETRYABLE.has(code) && attempt < MAX_ATTEMPTS) {
        ctx.events.warn?.(`${p.name}: chunk up to ${keyDescription(p, chunk.hi)} hit ${(err as Error).message}; retrying (${attempt}/${MAX_ATTEMPTS - 1})`);
        await sleep(500 * 2 ** (attempt - 1));
        continue;
      }
      throw err;
    }
  }
}

function progressOf(p: ColumnPlan, state: ColumnState, startedAt: number, rowsAtStart: number, bytesAtStart: number): ColumnProgress {
  const secs = Math.max((Date.now() - startedAt) / 1000, 0.001);
  const rowsPerSecond = (state.rowsDone + state.skipped - rowsAtStart) / secs;
  const bytesPerSecond = (state.bytesDone - bytesAtStart) / secs;
  const left = Math.max(state.rows - state.rowsDone - state.skipped, 0);
  return {
    column: p.name,
    pass: state.pass,
    rowsTotal: state.rows,
    rowsDone: state.rowsDone,
    bytesDone: state.bytesDone,
    skipped: state.skipped,
    rowsPerSecond,
    bytesPerSecond,
    etaSeconds: rowsPerSecond > 0 ? left / rowsPerSecond : null,
  };
}

/** Rewrites every value of the column not yet under the new DEK, from the state's watermark. */
export async function rotateColumnPass(ctx: PassContext, p: ColumnPlan, state: ColumnState): Promise<{ stopped: boolean }> {
  const startedAt = Date.now();
  const rowsAtStart = state.rowsDone + state.skipped;
  const bytesAtStart = state.bytesDone;
  ctx.events.columnStart?.(progressOf(p, state, startedAt, rowsAtStart, bytesAtStart));
  if (ctx.stop.aborted) return { stopped: true };
  const writer = await ctx.pool.connect();
  let writerBroken = false;
  try {
    await writer.query(createStageSql(p));
    await writer.query(stageStorageSql(p));
  } catch (err) {
    writer.release(true);
    throw err;
  }
  const chunks = Readable.from(produceChunks(ctx, p, state.watermark, state.pass > 1), { objectMode: true, highWaterMark: 1 });
  let stopped = false;
  try {
    for await (const chunk of chunks as AsyncIterable<Chunk>) {
      await ctx.limiter.take(chunk.count, ctx.stop);
      try {
        await writeChunk(writer, ctx, p, chunk, state);
      } catch (err) {
        writerBroken = true;
        throw err;
      }
      ctx.vacuumer.wrote(p.table, chunk.bytes);
      ctx.events.progress?.(progressOf(p, state, startedAt, rowsAtStart, bytesAtStart));
      await testPause('mid-column', ctx.stop);
      if (ctx.stop.aborted) {
        stopped = true;
        break;
      }
    }
  } finally {
    chunks.destroy();
    writer.release(writerBroken);
  }
  if (!stopped) {
    state.done = true;
    await saveColumnState(ctx.pool, ctx.jobId, p.name, state);
    ctx.events.columnDone?.(progressOf(p, state, startedAt, rowsAtStart, bytesAtStart));
  }
  return { stopped };
}
