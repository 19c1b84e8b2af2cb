/**
 * One pass over one column: read pages in key order with binary COPY, re-encrypt in a
 * stream with backpressure, write each chunk through a staging table in one transaction
 * that also checkpoints the job.
 *
 *   reader thread:  COPY (SELECT keys, value … LIMIT page) TO STDOUT  →  CopyBinaryParser
 *                   →  re-encrypt  →  chunks (rows ≤ batch size, bytes ≤ chunk bytes), each
 *                      already a binary COPY payload
 *   main thread:    BEGIN; COPY stage FROM STDIN; UPDATE t … FROM stage WHERE prefix
 *                   unchanged; checkpoint; COMMIT
 *
 * The reader runs ahead of the writer by at most two chunks, so memory stays bounded by a
 * few chunks whatever the size of the table, and the cryptography overlaps with the writes.
 */
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Worker } from 'node:worker_threads';
import { Pool, PoolClient } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { connectionConfigOf } from '../../db/connection';
import { ColumnPlan, copyIntoStageSql, createStageSql, stageStorageSql, updateFromStageSql } from './plan';
import { describeKey, EncodedChunk, ReaderJob } from './chunk-encoder';
import { sleep, testPause } from './util';
import { reviveWorkerError, serialiseWorkerError, WorkerErrorData } from './worker-messages';

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
    /** Tables this user may not VACUUM (PostgreSQL would skip them with only a warning). */
    private readonly skip: ReadonlySet<string> = new Set(),
  ) {}

  wrote(table: string, bytes: number): void {
    if (this.skip.has(table)) return;
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

/**
 * The tables (as given) the current user may not VACUUM: not a superuser, not the owner of
 * the table or of the database, and (PostgreSQL 17+) without the MAINTAIN privilege.
 */
export async function tablesWithoutVacuumRight(db: Pick<PoolClient, 'query'>, tables: string[]): Promise<string[]> {
  if (tables.length === 0) return [];
  const version = Number((await db.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`)).rows[0].v);
  const maintain = version >= 170000 ? `AND NOT has_table_privilege(c.oid, 'MAINTAIN')` : '';
  const r = await db.query<{ name: string }>(
    `SELECT u.name
       FROM unnest($1::text[]) WITH ORDINALITY AS u(name, n)
       JOIN pg_class c ON c.oid = u.name::regclass
      WHERE NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
        AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
        AND NOT pg_has_role(current_user, (SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
        ${maintain}
      ORDER BY u.n`,
    [tables],
  );
  return r.rows.map((x) => x.name);
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

const RETRYABLE = new Set(['55P03', '57014', '40P01', '40001']);
const MAX_ATTEMPTS = 6;

const READER_WORKER = path.join(__dirname, 'reader-worker.js');

/**
 * The chunks of one pass, produced by a reader thread (reader-worker.ts) on its own
 * connection. Each chunk taken acknowledges one, letting the reader run a little ahead.
 */
async function* chunksFromReader(ctx: PassContext, p: ColumnPlan, watermark: string[] | null, filter: boolean): AsyncGenerator<EncodedChunk> {
  const job: ReaderJob = {
    plan: p,
    toVersion: ctx.toVersion,
    newDek: ctx.newDek,
    deks: [...ctx.deks.entries()],
    batchSize: ctx.batchSize,
    chunkBytes: ctx.chunkBytes,
    watermark,
    filter,
  };
  const worker = new Worker(READER_WORKER, { workerData: { config: connectionConfigOf(ctx.pool), job } });
  type Message =
    | { type: 'chunk'; chunk: Omit<EncodedChunk, 'pieces'> & { pieces: Array<{ buffer: ArrayBuffer; offset: number; length: number }> } }
    | { type: 'done' }
    | { type: 'error'; error: WorkerErrorData }
    | { type: 'exit'; code: number };
  const queue: Message[] = [];
  let wake: (() => void) | null = null;
  const push = (m: Message) => {
    queue.push(m);
    const w = wake;
    wake = null;
    w?.();
  };
  worker.on('message', push);
  worker.on('error', (err) => push({ type: 'error', error: serialiseWorkerError(err) }));
  worker.on('exit', (code) => push({ type: 'exit', code }));
  try {
    for (;;) {
      while (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
      const m = queue.shift()!;
      if (m.type === 'chunk') {
        const pieces = m.chunk.pieces.map((x) => Buffer.from(x.buffer, x.offset, x.length));
        yield { ...m.chunk, pieces };
        worker.postMessage('ack');
      } else if (m.type === 'done') {
        return;
      } else if (m.type === 'error') {
        throw reviveWorkerError(m.error);
      } else {
        throw new Error(`the rotation's reader thread for ${p.name} exited unexpectedly (code ${m.code})`);
      }
    }
  } finally {
    await worker.terminate();
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
async function writeChunk(client: PoolClient, ctx: PassContext, p: ColumnPlan, chunk: EncodedChunk, state: ColumnState): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    try {
      // One round trip for the three statements (each one waited for its own reply before).
      await client.query(`BEGIN; SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '5min'`);
      let updated = 0;
      if (chunk.count > 0) {
        await pipeline(Readable.from(chunk.pieces), client.query(copyFrom(copyIntoStageSql(p))));
        const upd = await client.query(updateFromStageSql(p), [...chunk.lo, ...chunk.hi]);
        updated = upd.rowCount ?? 0;
      }
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
        ctx.events.warn?.(`${p.name}: chunk up to ${describeKey(p, chunk.hi)} hit ${(err as Error).message}; retrying (${attempt}/${MAX_ATTEMPTS - 1})`);
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
  const chunks = chunksFromReader(ctx, p, state.watermark, state.pass > 1);
  let stopped = false;
  try {
    for await (const chunk of chunks) {
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
    await chunks.return(undefined);
    writer.release(writerBroken);
  }
  if (!stopped) {
    state.done = true;
    await saveColumnState(ctx.pool, ctx.jobId, p.name, state);
    ctx.events.columnDone?.(progressOf(p, state, startedAt, rowsAtStart, bytesAtStart));
  }
  return { stopped };
}
