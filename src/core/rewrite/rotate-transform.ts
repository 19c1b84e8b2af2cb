/**
 * Rotation as a transform: each value not yet under the target data key is opened with the
 * key it names and sealed again under the target key; values already under it are counted and
 * left alone.
 */
import { randomBytes } from 'node:crypto';
import { EnvelopeAuthError, NONCE_LENGTH, TEXT_PREFIX_BYTES, envelopeFromTextBytes, envelopeVersion, openEnvelope, sealEnvelope } from '../../crypto/envelope';
import { IntegrityError } from '../../errors';
import { CopyPayloadBuilder } from './copy-binary';
import { ColumnPlan, describeKey, notUnderSql } from './plan';
import { ValueRewriter } from './value-rewriter';

export interface RotateTransform {
  kind: 'rotate';
  toVersion: number;
  newDek: Uint8Array;
  /** Every data key a value may name, by version. */
  deks: Array<[number, Uint8Array]>;
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

function integrity(p: ColumnPlan, keys: string[], why: string, version?: number): IntegrityError {
  const key: Record<string, string> = {};
  p.keyColumns.forEach((k, i) => (key[k] = keys[i]));
  return new IntegrityError(
    `value in ${p.name} at ${describeKey(p, keys)} ${why}; the rotation stopped before writing its chunk`,
    { schema: p.col.table_schema, table: p.col.table_name, column: p.col.column_name, key, version },
    { hint: 'restore that value from a backup (or set it NULL if it is expendable), then run `alation-keys rotate` again to resume' },
  );
}

class RotationRewriter implements ValueRewriter {
  private readonly deks: Map<number, Buffer>;
  private readonly newDek: Buffer;
  private readonly text: boolean;
  private sealed: Buffer | null = null;

  constructor(
    private readonly t: RotateTransform,
    private readonly p: ColumnPlan,
  ) {
    // Copies, so wipe() never zeroes the caller's keys.
    this.deks = new Map(t.deks.map(([v, k]) => [v, Buffer.from(k)]));
    this.newDek = Buffer.from(t.newDek);
    this.text = p.col.storage === 'text';
  }

  read(raw: Buffer, keys: string[], tally: Record<string, number>): boolean {
    const p = this.p;
    let envelope: Buffer;
    let version: number;
    try {
      envelope = this.text ? envelopeFromTextBytes(raw) : raw;
      version = envelopeVersion(envelope);
    } catch (err) {
      throw integrity(p, keys, `is not a valid envelope (${(err as Error).message})`);
    }
    tally[version] = (tally[version] ?? 0) + 1;
    // Already under the new key (written by an up-to-date application instance): leave it.
    if (version === this.t.toVersion) return false;
    const dek = this.deks.get(version);
    if (!dek) throw integrity(p, keys, `names data key v${version}, which the keyring does not have (destroyed?)`, version);
    let plain: Buffer;
    try {
      plain = openEnvelope(dek, envelope, p.col.context);
    } catch (err) {
      if (err instanceof EnvelopeAuthError) throw integrity(p, keys, `failed authentication under data key v${version}`, version);
      throw err;
    }
    this.sealed = sealEnvelope(this.newDek, this.t.toVersion, plain, p.col.context, nextNonce());
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
    for (const k of this.deks.values()) k.fill(0);
    this.newDek.fill(0);
  }
}

export function openRotation(t: RotateTransform, p: ColumnPlan): ValueRewriter {
  return new RotationRewriter(t, p);
}

export function rotationPendingSql(t: RotateTransform, p: ColumnPlan, alias: string): string {
  return notUnderSql(p, t.toVersion, alias);
}
