import { ColumnPlan } from './plan';
import { Transform } from './transform';

/** One pass over one column, as the engine hands it to the reader thread: plain data only. */
export interface PassDescription {
  plan: ColumnPlan;
  transform: Transform;
  /** Values per chunk (one write transaction each). */
  batchSize: number;
  /** Bytes of new values per chunk. */
  chunkBytes: number;
  /** Keys of the last row done: the pass reads after them. */
  watermark: string[] | null;
  /**
   * Read only the values the transform has still to do (later passes). The first pass leaves
   * this to the reader: the predicate costs a TOAST slice fetch per large value.
   */
  pendingOnly: boolean;
  /** Read at most this many rows, in one page (the dry run's sample). */
  limitRows?: number;
  /**
   * Leave values that do not decrypt untouched and list their rows in the chunk (rotate
   * --skip-undecryptable, verify) instead of stopping at the first (undecryptable.ts).
   */
  skipUndecryptable?: boolean;
  /** Also end a chunk after this many rows read (a pass that writes little or nothing, as verify). */
  readRowsPerChunk?: number;
}
