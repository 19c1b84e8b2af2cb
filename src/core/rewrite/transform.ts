/**
 * What the rewrite engine does to each value of a column. A transform is described by plain
 * data (a `Transform`): the engine hands it to the reader thread as is, inside the pass
 * description, and the reader opens it there into a `ValueRewriter` (functions cannot cross
 * threads; data can). Each kind also says in SQL which values it has still to do, for the
 * later passes and the convergence counts.
 */
import { ColumnPlan } from './plan';
import { openRotation, RotateTransform, rotationPendingSql } from './rotate-transform';
import { ValueRewriter } from './value-rewriter';
import { openVerification, VerifyTransform } from './verify-transform';

export type { ValueRewriter } from './value-rewriter';

export type Transform = RotateTransform | VerifyTransform;

export function openTransform(t: Transform, p: ColumnPlan): ValueRewriter {
  switch (t.kind) {
    case 'rotate':
      return openRotation(t, p);
    case 'verify':
      return openVerification(t, p);
  }
}

/** SQL predicate on the column (qualified by `alias`): the value has still to be rewritten. */
export function pendingSql(t: Transform, p: ColumnPlan, alias = ''): string {
  switch (t.kind) {
    case 'rotate':
      return rotationPendingSql(t, p, alias);
    case 'verify':
      // Every value is read once; verify has no later passes.
      return 'true';
  }
}
