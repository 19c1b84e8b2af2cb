/**
 * A column's progress in a rewrite job, kept in jobs.detail.columns[<column>]: the single owner
 * of that state. Every change returns a new state (states are never mutated) and is saved by
 * the caller, in the same transaction as the write it records.
 */
import { Queryable } from '../../db/transaction';
import { recordColumnCheckpoint } from '../jobs';
import type { EncodedChunk } from './chunk-encoder';
import { mergeRecorded, UndecryptableRow } from './undecryptable';

export interface ColumnState {
  readonly watermark: string[] | null;
  readonly pass: number;
  readonly done: boolean;
  /** Values to rewrite when the job started (plus those found by later passes). */
  readonly rows: number;
  readonly bytes: number;
  readonly rowsDone: number;
  readonly bytesDone: number;
  readonly skipped: number;
  /** Values read per tally key (rotate: DEK version) in the first pass: the "before" of the summary. */
  readonly before?: Readonly<Record<string, number>>;
  /** Values left untouched because they do not decrypt (--skip-undecryptable), one per row. */
  readonly undecryptable?: readonly UndecryptableRow[];
}

/** The state of a column a job has not started: `rows` values of `bytes` bytes to rewrite. */
export function initialState(rows: number, bytes: number): ColumnState {
  return { watermark: null, pass: 1, done: false, rows, bytes, rowsDone: 0, bytesDone: 0, skipped: 0, before: {} };
}

/** The state saved in a job's detail (absent fields: a column not started). */
export function savedState(detail: Record<string, unknown> | null | undefined, column: string): ColumnState {
  const saved = ((detail?.columns as Record<string, Partial<ColumnState>> | undefined)?.[column] ?? {}) as Partial<ColumnState>;
  return {
    watermark: saved.watermark ?? null,
    pass: saved.pass ?? 1,
    done: saved.done ?? false,
    rows: saved.rows ?? 0,
    bytes: saved.bytes ?? 0,
    rowsDone: saved.rowsDone ?? 0,
    bytesDone: saved.bytesDone ?? 0,
    skipped: saved.skipped ?? 0,
    before: saved.before ?? {},
    undecryptable: saved.undecryptable ?? [],
  };
}

/** After a chunk was written: `updated` of its rows changed, the others were changed meanwhile by the application. */
export function afterChunk(
  state: ColumnState,
  chunk: Pick<EncodedChunk, 'hi' | 'count' | 'bytes' | 'versions'> & Partial<Pick<EncodedChunk, 'undecryptable'>>,
  updated: number,
  column = '',
): ColumnState {
  const next: { -readonly [K in keyof ColumnState]: ColumnState[K] } = {
    ...state,
    watermark: chunk.hi,
    rowsDone: state.rowsDone + updated,
    bytesDone: state.bytesDone + chunk.bytes,
    skipped: state.skipped + (chunk.count - updated),
  };
  if (chunk.undecryptable?.length) next.undecryptable = mergeRecorded(state.undecryptable, chunk.undecryptable, column);
  if (state.pass === 1) {
    const before = { ...(state.before ?? {}) };
    for (const [v, n] of Object.entries(chunk.versions)) before[v] = (before[v] ?? 0) + n;
    next.before = before;
  }
  return next;
}

/** A further pass from the start of the column, for `moreRows` values found still to do. */
export function nextPass(state: ColumnState, pass: number, moreRows: number): ColumnState {
  return { ...state, watermark: null, pass, done: false, rows: state.rows + moreRows };
}

export function passDone(state: ColumnState): ColumnState {
  return { ...state, done: true };
}

/** Saves the column's state, adding `rows` and `bytes` written to the job's totals. */
export async function saveState(db: Queryable, jobId: number, column: string, state: ColumnState, rows = 0, bytes = 0): Promise<void> {
  await recordColumnCheckpoint(db, jobId, column, state, rows, bytes);
}

/** Values per tally key when the job started, as the first pass of each column read them. */
export function valuesBefore(states: Iterable<ColumnState>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of states) for (const [v, n] of Object.entries(s.before ?? {})) out[v] = (out[v] ?? 0) + n;
  return out;
}
