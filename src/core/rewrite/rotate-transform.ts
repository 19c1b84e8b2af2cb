/**
 * Rotation as a transform: each value not yet under the target data key is opened with the
 * key it names and sealed again under the target key; values already under it are counted and
 * left alone.
 */
import { randomBytes } from 'node:crypto';
import { NONCE_LENGTH, TEXT_PREFIX_BYTES, sealEnvelope } from '../../crypto/envelope';
import { CopyPayloadBuilder } from './copy-binary';
import { ColumnPlan, notUnderSql } from './plan';
import { DataKeys, openWithDataKeys, readStoredEnvelope } from './undecryptable';
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

class RotationRewriter implements ValueRewriter {
  private readonly keys: DataKeys;
  private readonly newDek: Buffer;
  private readonly text: boolean;
  private sealed: Buffer | null = null;

  constructor(
    private readonly t: RotateTransform,
    private readonly p: ColumnPlan,
  ) {
    // Copies, so wipe() never zeroes the caller's keys.
    this.keys = { usable: new Map(t.deks.map(([v, k]) => [v, Buffer.from(k)])), destroyed: new Set(t.destroyed ?? []) };
    this.newDek = Buffer.from(t.newDek);
    this.text = p.col.storage === 'text';
  }

  read(raw: Buffer, _keys: string[], tally: Record<string, number>): boolean {
    const { envelope, version } = readStoredEnvelope(raw, this.p.col.storage);
    tally[version] = (tally[version] ?? 0) + 1;
    // Already under the new key (written by an up-to-date application instance): leave it.
    if (version === this.t.toVersion) return false;
    const plain = openWithDataKeys(this.keys, envelope, version, this.p.col.context);
    this.sealed = sealEnvelope(this.newDek, this.t.toVersion, plain, this.p.col.context, nextNonce());
    plain.fill(0);
    return true;
  }

  writeNew(b: CopyPayloadBuilder): number {
    const sealed = this.sealed!;
    this.sealed = null;
    if (this.text) return b.textField(TEXT_PREFIX_BYTES, sealed.toString('base64'));
    b.field(sealed);
    return sealed.length;
  }

  wipe(): void {
    for (const k of this.keys.usable.values()) k.fill(0);
    this.newDek.fill(0);
  }
}

export function openRotation(t: RotateTransform, p: ColumnPlan): ValueRewriter {
  return new RotationRewriter(t, p);
}

export function rotationPendingSql(t: RotateTransform, p: ColumnPlan, alias: string): string {
  return notUnderSql(p, t.toVersion, alias);
}
