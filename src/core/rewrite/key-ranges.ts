/**
 * One table, many workers: with --workers N, a column that holds much more than its share of
 * the job (more than 1/N of its bytes) is cut into key ranges for the first pass, each
 * rewritten by its own worker (reader thread, connection, staging table) with its own
 * checkpoint in the job (`detail.columns["<column> [i/k]"]`). The boundaries are sampled once
 * and kept in the job (`detail.ranges`), so a resumed job picks up each range where it stopped
 * whatever --workers says then. When every range is done, their states are added into the
 * column's own state in one checkpoint and the later passes (convergence) run on the whole
 * column as before.
 */
import { Queryable } from '../../db/transaction';
import { recordJobDetail } from '../jobs';
import { ColumnState, initialState, saveState } from './checkpoint';
import { ColumnPlan, sampleKeyBoundaries } from './plan';
import { mergeRecorded } from './undecryptable';

/** Rows below which a column is never split (a range must be worth a reader thread). */
const MIN_ROWS_TO_SPLIT = 20_000;

/** The boundaries of each split column, as kept in the job's detail. */
export type RangeBoundaries = Record<string, string[][]>;

export interface RangePlan {
  /** The whole column. */
  column: ColumnPlan;
  /** Its ranges, in key order. */
  ranges: ColumnPlan[];
}

function rangeName(column: string, i: number, k: number): string {
  return `${column} [${i}/${k}]`;
}

/** The range plans of a column cut at `boundaries` (each the last key of its range). */
function rangesOf(p: ColumnPlan, boundaries: string[][], firstIndex: number): ColumnPlan[] {
  const k = boundaries.length + 1;
  return Array.from({ length: k }, (_, i) => ({
    ...p,
    name: rangeName(p.name, i + 1, k),
    index: firstIndex + i,
    upTo: i < boundaries.length ? boundaries[i] : null,
  }));
}

/** The state a range starts from: after the previous range's last key. */
function rangeStart(boundaries: string[][], i: number, column: ColumnState): ColumnState {
  const k = boundaries.length + 1;
  return { ...initialState(Math.round(column.rows / k), Math.round(column.bytes / k)), watermark: i === 0 ? null : boundaries[i - 1] };
}

/**
 * Which columns of a job's first pass run as ranges. Reuses the boundaries a job already
 * recorded (a resumed job); otherwise, with more than one worker, samples new ones for the
 * columns not started that hold more than their share, and records them in the job.
 */
export async function planKeyRanges(
  db: Queryable,
  jobId: number,
  plans: ColumnPlan[],
  states: ReadonlyMap<string, ColumnState>,
  recorded: RangeBoundaries,
  workers: number,
): Promise<RangePlan[]> {
  const out: RangePlan[] = [];
  let nextIndex = Math.max(0, ...plans.map((p) => p.index)) + 1;
  const fresh: RangeBoundaries = {};
  const totalBytes = plans.reduce((a, p) => a + (states.get(p.name)?.bytes ?? 0), 0);
  for (const p of plans) {
    const s = states.get(p.name)!;
    if (s.done) continue;
    let boundaries = recorded[p.name];
    const pristine = s.pass === 1 && s.watermark === null && s.rowsDone === 0 && s.skipped === 0;
    if (!boundaries && workers > 1 && pristine && s.rows >= MIN_ROWS_TO_SPLIT && s.bytes > totalBytes / workers) {
      const parts = Math.min(workers, Math.max(2, Math.ceil(s.bytes / (totalBytes / workers))));
      boundaries = await sampleKeyBoundaries(db, p, s.rows, parts);
      if (boundaries.length > 0) fresh[p.name] = boundaries;
    }
    if (!boundaries?.length) continue;
    const ranges = rangesOf(p, boundaries, nextIndex);
    nextIndex += ranges.length;
    out.push({ column: p, ranges });
  }
  if (Object.keys(fresh).length > 0) await recordJobDetail(db, jobId, { ranges: { ...recorded, ...fresh } });
  return out;
}

/** Each range's state: its checkpoint in the job, else where it starts. */
export function rangeStates(split: RangePlan[], detailColumns: (name: string) => ColumnState | undefined, states: ReadonlyMap<string, ColumnState>): Map<string, ColumnState> {
  const out = new Map<string, ColumnState>();
  for (const { column, ranges } of split) {
    const boundaries = ranges.slice(0, -1).map((r) => r.upTo!);
    ranges.forEach((r, i) => out.set(r.name, detailColumns(r.name) ?? rangeStart(boundaries, i, states.get(column.name)!)));
  }
  return out;
}

/**
 * Once every range of a column is done: the column's state with the ranges' work added, first
 * pass done, saved in one checkpoint (the rows were added to the job's totals by the ranges'
 * own checkpoints). Returns undefined while a range is not done.
 */
export async function mergeRanges(db: Queryable, jobId: number, r: RangePlan, column: ColumnState, ranges: ReadonlyMap<string, ColumnState>): Promise<ColumnState | undefined> {
  const parts = r.ranges.map((x) => ranges.get(x.name)!);
  if (parts.some((s) => !s.done)) return undefined;
  const before: Record<string, number> = { ...(column.before ?? {}) };
  let undecryptable = column.undecryptable ?? [];
  for (const s of parts) {
    for (const [v, n] of Object.entries(s.before ?? {})) before[v] = (before[v] ?? 0) + n;
    if (s.undecryptable?.length) undecryptable = mergeRecorded(undecryptable, s.undecryptable, r.column.name);
  }
  const merged: ColumnState = {
    ...column,
    watermark: null,
    done: true,
    rowsDone: column.rowsDone + parts.reduce((a, s) => a + s.rowsDone, 0),
    bytesDone: column.bytesDone + parts.reduce((a, s) => a + s.bytesDone, 0),
    skipped: column.skipped + parts.reduce((a, s) => a + s.skipped, 0),
    before,
    undecryptable,
  };
  await saveState(db, jobId, r.column.name, merged);
  return merged;
}
