/**
 * What the rewrite engine does to each value of a column. A transform is described by plain
 * data (a `Transform`): the engine hands it to the reader thread as is, inside the pass
 * description, and the reader opens it there into a `ValueRewriter` (functions cannot cross
 * threads; data can). Each kind also says in SQL which values it has still to do, for the
 * later passes and the convergence counts, and how the compare-and-swap recognises the value
 * it read.
 */
import { Queryable, quoteIdent } from '../../db/transaction';
import { DecryptTransform, decryptionPendingSql, openDecryption } from './decrypt-transform';
import { EncryptTransform, encryptionPendingSql, openEncryption } from './encrypt-transform';
import { ColumnPlan, ValueMatch } from './plan';
import { openRotation, RotateTransform, rotationPendingSql } from './rotate-transform';
import { ValueRewriter } from './value-rewriter';
import { openVerification, VerifyTransform } from './verify-transform';

export type { ValueRewriter } from './value-rewriter';

export type Transform = RotateTransform | EncryptTransform | DecryptTransform | VerifyTransform;

export function openTransform(t: Transform, p: ColumnPlan): ValueRewriter {
  switch (t.kind) {
    case 'rotate':
      return openRotation(t, p);
    case 'encrypt':
      return openEncryption(t, p);
    case 'decrypt':
      return openDecryption(t, p);
    case 'verify':
      return openVerification(t, p);
  }
}

/** SQL predicate on the column (qualified by `alias`): the value has still to be rewritten. */
export function pendingSql(t: Transform, p: ColumnPlan, alias = ''): string {
  switch (t.kind) {
    case 'rotate':
      return rotationPendingSql(t, p, alias);
    case 'encrypt':
      return encryptionPendingSql(p, alias);
    case 'decrypt':
      return decryptionPendingSql(p, alias);
    case 'verify':
      // Every value is read once; verify has no later passes.
      return 'true';
  }
}

/**
 * How a staged row recognises the value it was made from: an envelope by its stored prefix
 * (header and random nonce, unique per encryption); plaintext, which has no such prefix, by a
 * digest of the whole value.
 */
export function valueMatch(t: Transform): ValueMatch {
  return t.kind === 'encrypt' ? 'digest' : 'prefix';
}

/** Predicate on a row of the column's table (alias `t`): it holds a value the transform has still to do. */
export function pendingRowSql(t: Transform, p: ColumnPlan): string {
  return `t.${quoteIdent(p.col.column_name)} IS NOT NULL AND ${pendingSql(t, p, 't')}`;
}

/** Values of the column the transform has still to do, counted in SQL (no value is read out). */
export async function countPending(db: Queryable, t: Transform, p: ColumnPlan): Promise<number> {
  const r = await db.query<{ n: string }>(`SELECT count(*) AS n FROM ${p.table} AS t WHERE ${pendingRowSql(t, p)}`);
  return Number(r.rows[0].n);
}

/** Values each column has still to do, leaving out columns with none: a convergence count. */
export async function countPendingColumns(db: Queryable, t: Transform, plans: ColumnPlan[]): Promise<Map<ColumnPlan, number>> {
  const remaining = new Map<ColumnPlan, number>();
  for (const p of plans) {
    const n = await countPending(db, t, p);
    if (n > 0) remaining.set(p, n);
  }
  return remaining;
}
