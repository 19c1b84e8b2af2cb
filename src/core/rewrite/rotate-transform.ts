/**
 * Rotation as a transform: each value not yet under the target data key is opened with the
 * key it names and sealed again under the target key; values already under it are counted and
 * left alone.
 */
import { sealEnvelope } from '../../crypto/envelope';
import { ColumnPlan, notUnderSql } from './plan';
import { nextNonce, SealingRewriter } from './stored-values';
import { openWithDataKeys, readStoredEnvelope } from './undecryptable';
import { ValueRewriter } from './value-rewriter';

export interface RotateTransform {
  kind: 'rotate';
  toVersion: number;
  newDek: Uint8Array;
  /** Every data key a value may name, by version. */
  deks: Array<[number, Uint8Array]>;
  /** Versions of destroyed data keys (a value naming one is reported as such). */
  destroyed?: number[];
}

class RotationRewriter extends SealingRewriter {
  constructor(
    private readonly t: RotateTransform,
    p: ColumnPlan,
  ) {
    super(p, t.newDek, t.deks, t.destroyed);
  }

  read(raw: Buffer, _keys: string[], tally: Record<string, number>): boolean {
    const { envelope, version } = readStoredEnvelope(raw, this.p.col.storage);
    tally[version] = (tally[version] ?? 0) + 1;
    // Already under the new key (written by an up-to-date application instance): leave it.
    if (version === this.t.toVersion) return false;
    const plain = openWithDataKeys(this.keys, envelope, version, this.p.col.context);
    this.sealed = sealEnvelope(this.targetDek, this.t.toVersion, plain, this.p.col.context, nextNonce());
    plain.fill(0);
    return true;
  }
}

export function openRotation(t: RotateTransform, p: ColumnPlan): ValueRewriter {
  return new RotationRewriter(t, p);
}

export function rotationPendingSql(t: RotateTransform, p: ColumnPlan, alias: string): string {
  return notUnderSql(p, t.toVersion, alias);
}
