/**
 * What the rewrite engine does to each value of a column. A transform is described by plain
 * data (a `Transform`): the engine hands it to the reader thread as is, inside the pass
 * description, and the reader opens it there into a `ValueRewriter` (functions cannot cross
 * threads; data can). Each kind also says in SQL which values it has still to do, for the
 * later passes and the convergence counts.
 */
import { CopyPayloadBuilder } from './copy-binary';
import { ColumnPlan } from './plan';
import { openRotation, RotateTransform, rotationPendingSql } from './rotate-transform';

export type Transform = RotateTransform;

/** A transform opened in the reader thread: called once per value read, so keep it lean. */
export interface ValueRewriter {
  /**
   * Looks at one stored value (its raw bytes as binary COPY gives them) of the row at `keys`.
   * Counts what it found in `tally` (e.g. values per DEK version) and returns whether the row
   * is rewritten; when it is, writeNew() is called next. Throws an IntegrityError on a value it
   * cannot rewrite: the pass stops before writing the chunk.
   */
  read(raw: Buffer, keys: string[], tally: Record<string, number>): boolean;
  /** Writes the new value of the row last read as one COPY field; returns its length in bytes. */
  writeNew(b: CopyPayloadBuilder): number;
  /** Overwrites the key material this rewriter holds (its own copies). */
  wipe(): void;
}

export function openTransform(t: Transform, p: ColumnPlan): ValueRewriter {
  switch (t.kind) {
    case 'rotate':
      return openRotation(t, p);
  }
}

/** SQL predicate on the column (qualified by `alias`): the value has still to be rewritten. */
export function pendingSql(t: Transform, p: ColumnPlan, alias = ''): string {
  switch (t.kind) {
    case 'rotate':
      return rotationPendingSql(t, p, alias);
  }
}
