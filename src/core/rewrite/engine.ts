/**
 * The rewrite engine: streams the values of registered columns through a transform, online,
 * crash-safe and resumable. One pass over one column:
 *
 *   reader thread:  COPY (SELECT keys, xmin, value … after the watermark, LIMIT page) TO STDOUT
 *                   → CopyBinaryParser → the transform, value by value → chunks (rows ≤ batch
 *                   size, bytes ≤ chunk bytes), each already a binary COPY payload
 *   main thread:    BEGIN; COPY stage FROM STDIN; UPDATE t … FROM stage WHERE the row is
 *                   unchanged since it was read (compare-and-swap); checkpoint; COMMIT
 *
 * The reader runs ahead of the writer by at most two chunks (credit flow control), so memory
 * stays bounded whatever the size of the table and the cryptography overlaps with the writes.
 *
 * The wing, module by module: transform.ts (what is done to each value), pass.ts (the one
 * description of a pass the reader thread gets as is), reader-thread.ts / reader-worker.ts /
 * chunk-reader.ts / chunk-encoder.ts (the reader), plan.ts (the SQL), checkpoint.ts (a
 * column's progress), convergence.ts (passes until nothing is left), preflight.ts, dry-run.ts,
 * job-run.ts (what every job does around its transform: lock, preflight, passes, convergence,
 * job states), and the jobs: rotate.ts, encrypt.ts, decrypt.ts (verify.ts reads only).
 *
 * Adding a transform (as encrypt-transform.ts and decrypt-transform.ts were added):
 *  1. In a file of its own (as rotate-transform.ts), describe it as plain data
 *     (`{ kind: 'encrypt', …keys as Uint8Array }`: it is structured-cloned into the reader
 *     thread), implement a ValueRewriter for it (`read` decides per value and tallies,
 *     `writeNew` writes the new value as one COPY field, `wipe` zeroes its key copies), and a
 *     SQL predicate for the values it has still to do.
 *  2. Add it to the `Transform` union and to the switches of transform.ts (valueMatch too).
 *  3. Use it: create the job row with each column's initialState() in detail.columns
 *     (checkpoint.ts), then hand runRewriteJob() (job-run.ts) the job, the transform, what
 *     still counts as to do, and what to do once nothing is left.
 * A value the transform cannot open: `read` throws an UndecryptableValue (undecryptable.ts:
 * readStoredEnvelope, openWithDataKeys); the pass stops there with an IntegrityError naming
 * the row, or, with RewriteContext.skipUndecryptable, leaves it untouched and records its row
 * in the column's checkpoint (ColumnState.undecryptable); count what is left to do with
 * countPendingExceptRecorded and report what stayed with stillPending (rotate.ts does both).
 * Keep `read` lean: it runs once per value on the hot path. The compare-and-swap compares the
 * row's xmin and then what was read (plan.ts, updateFromStageSql): an envelope's stored prefix,
 * or for plaintext input (encrypt) a SHA-256 of the whole value (transform.ts, valueMatch).
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Pool, PoolClient } from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { afterChunk, ColumnState, passDone, saveState } from './checkpoint';
import { EncodedChunk } from './chunk-encoder';
import { ColumnPlan, copyIntoStageSql, createStageSql, describeKey, stageStorageSql, updateFromStageSql } from './plan';
import { chunksFromReader } from './reader-thread';
import { ChunkPacer } from './throttle';
import { Transform, valueMatch } from './transform';
import { sleep } from './util';
import type { TestPause } from '../test-hooks';
import { Vacuumer } from './vacuum';

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

export interface RewriteEvents {
  /** A line worth logging (resume, preflight, passes). */
  info?(message: string): void;
  warn?(message: string): void;
  columnStart?(p: ColumnProgress): void;
  progress?(p: ColumnProgress): void;
  columnDone?(p: ColumnProgress): void;
  /**
   * Every value is done and the settle wait before the last count begins (application
   * instances load the new key meanwhile): it lasts `waitMs` and ends at `untilMs` (epoch ms).
   */
  settleWait?(w: { waitMs: number; untilMs: number }): void;
}

/** What every pass of one job shares (main thread only; the reader gets a PassDescription). */
export interface RewriteContext {
  pool: Pool;
  jobId: number;
  transform: Transform;
  batchSize: number;
  chunkBytes: number;
  /** Aborted to stop after the current chunk (the operator's signal, or another column failed). */
  stopper: AbortController;
  /** Waited on before each chunk: --max-rate, standby lag, WAL rate. */
  limiter: ChunkPacer;
  vacuumer: Vacuumer;
  events: RewriteEvents;
  /** Leave values that do not decrypt untouched and record their rows (undecryptable.ts) instead of stopping. */
  skipUndecryptable?: boolean;
  /** TEST ONLY: holds the pass at a named point (src/core/test-hooks.ts); noPause otherwise. */
  pause: TestPause;
}

const RETRYABLE = new Set(['55P03', '57014', '40P01', '40001']);
const MAX_ATTEMPTS = 6;

/**
 * One pass over each column of `todo`, `workers` columns at a time, each from its state in
 * `states`. Returns the columns' new states. The first failure stops the other columns after
 * their current chunk and is thrown once all have stopped.
 */
export async function rewriteColumns(
  ctx: RewriteContext,
  todo: ColumnPlan[],
  states: ReadonlyMap<string, ColumnState>,
  workers: number,
): Promise<Map<string, ColumnState>> {
  const queue = [...todo];
  const out = new Map<string, ColumnState>();
  const stop = ctx.stopper;
  let failure: unknown;
  let finishedColumns = 0;
  const worker = async () => {
    for (;;) {
      if (stop.signal.aborted) return;
      const p = queue.shift();
      if (!p) return;
      try {
        out.set(p.name, await rewriteColumnPass(ctx, p, states.get(p.name)!));
      } catch (err) {
        if (!failure) failure = err;
        stop.abort();
        return;
      }
      finishedColumns++;
      if (queue.length > 0 && finishedColumns === 1) await ctx.pause('between-columns', stop.signal);
    }
  };
  await Promise.all(Array.from({ length: Math.min(workers, Math.max(todo.length, 1)) }, worker));
  await ctx.vacuumer.idle();
  if (failure) throw failure;
  return out;
}

/** One transaction: stage the chunk, update rows whose value is unchanged, checkpoint. Returns the new state. */
async function writeChunk(client: PoolClient, ctx: RewriteContext, p: ColumnPlan, chunk: EncodedChunk, state: ColumnState): Promise<ColumnState> {
  for (let attempt = 1; ; attempt++) {
    try {
      // One round trip for the three statements (each one waited for its own reply before).
      await client.query(`BEGIN; SET LOCAL lock_timeout = '10s'; SET LOCAL statement_timeout = '5min'`);
      let updated = 0;
      if (chunk.count > 0) {
        const match = valueMatch(ctx.transform);
        await pipeline(Readable.from(chunk.pieces), client.query(copyFrom(copyIntoStageSql(p, match))));
        const upd = await client.query(updateFromStageSql(p, match), [...chunk.lo, ...chunk.hi]);
        updated = upd.rowCount ?? 0;
      }
      const next = afterChunk(state, chunk, updated, p.name);
      await saveState(client, ctx.jobId, p.name, next, updated, chunk.bytes);
      await client.query('COMMIT');
      return next;
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

function progressOf(p: ColumnPlan, state: ColumnState, startedAt: number, start: ColumnState): ColumnProgress {
  const secs = Math.max((Date.now() - startedAt) / 1000, 0.001);
  const rowsPerSecond = (state.rowsDone + state.skipped - (start.rowsDone + start.skipped)) / secs;
  const bytesPerSecond = (state.bytesDone - start.bytesDone) / secs;
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

/**
 * Rewrites every value of the column the transform has still to do, from the state's
 * watermark. Returns the column's state after the pass (done unless it was stopped).
 */
export async function rewriteColumnPass(ctx: RewriteContext, p: ColumnPlan, start: ColumnState): Promise<ColumnState> {
  const startedAt = Date.now();
  const stop = ctx.stopper.signal;
  let state = start;
  ctx.events.columnStart?.(progressOf(p, state, startedAt, start));
  if (stop.aborted) return state;
  const writer = await ctx.pool.connect();
  let writerBroken = false;
  try {
    await writer.query(createStageSql(p, valueMatch(ctx.transform)));
    await writer.query(stageStorageSql(p, valueMatch(ctx.transform)));
  } catch (err) {
    writer.release(true);
    throw err;
  }
  const chunks = chunksFromReader(ctx.pool, {
    plan: p,
    transform: ctx.transform,
    batchSize: ctx.batchSize,
    chunkBytes: ctx.chunkBytes,
    watermark: state.watermark,
    pendingOnly: state.pass > 1,
    skipUndecryptable: ctx.skipUndecryptable,
  });
  let stopped = false;
  try {
    for await (const chunk of chunks) {
      if (chunk.count > 0) await ctx.pause('chunk-read', stop, `${p.name} ${JSON.stringify(chunk.lo)} ${JSON.stringify(chunk.hi)}`);
      if (stop.aborted) {
        stopped = true;
        break;
      }
      await ctx.limiter.take(chunk.count, stop);
      try {
        state = await writeChunk(writer, ctx, p, chunk, state);
      } catch (err) {
        writerBroken = true;
        throw err;
      }
      ctx.vacuumer.wrote(p.table, chunk.bytes);
      ctx.events.progress?.(progressOf(p, state, startedAt, start));
      await ctx.pause('mid-column', stop);
      if (stop.aborted) {
        stopped = true;
        break;
      }
    }
  } finally {
    await chunks.return(undefined);
    writer.release(writerBroken);
  }
  if (!stopped) {
    state = passDone(state);
    await saveState(ctx.pool, ctx.jobId, p.name, state);
    ctx.events.columnDone?.(progressOf(p, state, startedAt, start));
  }
  return state;
}
