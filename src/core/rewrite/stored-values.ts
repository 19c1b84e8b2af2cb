/**
 * What the sealing transforms (rotate, encrypt) share in the reader thread: fresh nonces, their
 * own copies of the data keys, and writing a sealed envelope as one COPY field in the column's
 * storage. Opening stored values (and what a value that does not open means) is
 * undecryptable.ts.
 */
import { randomBytes } from 'node:crypto';
import { NONCE_LENGTH, TEXT_PREFIX_BYTES } from '../../crypto/envelope';
import { CopyPayloadBuilder } from './copy-binary';
import { ColumnPlan } from './plan';
import { DataKeys } from './undecryptable';
import { ValueRewriter } from './value-rewriter';

const NONCE_BATCH = 4096;
let nonces = Buffer.alloc(0);
let nonceOffset = 0;
/**
 * Random 96-bit nonces drawn from the CSPRNG 4096 at a time: one randomBytes call per value
 * is a measurable share of a rewrite's CPU. Each nonce is used once.
 */
export function nextNonce(): Buffer {
  if (nonceOffset >= nonces.length) {
    nonces = randomBytes(NONCE_LENGTH * NONCE_BATCH);
    nonceOffset = 0;
  }
  const n = nonces.subarray(nonceOffset, nonceOffset + NONCE_LENGTH);
  nonceOffset += NONCE_LENGTH;
  return n;
}

/** Private copies of the data keys (so wipe() never zeroes the caller's), and the destroyed versions. */
export function copyDataKeys(deks: Array<[number, Uint8Array]>, destroyed: number[] = []): DataKeys & { usable: Map<number, Buffer> } {
  return { usable: new Map(deks.map(([v, k]) => [v, Buffer.from(k)])), destroyed: new Set(destroyed) };
}

/**
 * A rewriter whose new values are envelopes sealed under one target key (rotate, encrypt):
 * holds its own copies of the keys, writes the value its read() sealed, wipes the copies.
 */
export abstract class SealingRewriter implements ValueRewriter {
  protected readonly keys: DataKeys & { usable: Map<number, Buffer> };
  protected readonly targetDek: Buffer;
  protected readonly text: boolean;
  protected sealed: Buffer | null = null;

  constructor(
    protected readonly p: ColumnPlan,
    targetDek: Uint8Array,
    deks: Array<[number, Uint8Array]>,
    destroyed?: number[],
  ) {
    this.keys = copyDataKeys(deks, destroyed);
    this.targetDek = Buffer.from(targetDek);
    this.text = p.col.storage === 'text';
  }

  abstract read(raw: Buffer, keys: string[], tally: Record<string, number>): boolean;

  /** Writes the sealed envelope as one COPY field (text storage: the text prefix and base64); returns its stored length. */
  writeNew(b: CopyPayloadBuilder): number {
    const sealed = this.sealed!;
    this.sealed = null;
    if (this.text) return b.textField(TEXT_PREFIX_BYTES, sealed.toString('base64'));
    b.field(sealed);
    return sealed.length;
  }

  wipe(): void {
    for (const k of this.keys.usable.values()) k.fill(0);
    this.targetDek.fill(0);
  }
}
