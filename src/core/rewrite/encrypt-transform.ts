/**
 * Encryption of existing plaintext as a transform: each value that is not an envelope (SPEC 4.2)
 * is sealed under the target data key as it is stored (a text value: its UTF-8 bytes). Envelopes
 * (written meanwhile by the application, or already there) are opened to check them and left
 * alone; one that does not open is an UndecryptableValue (undecryptable.ts): the pass stops
 * there, or with --skip-undecryptable leaves it and records its row.
 */
import { isEnvelopeSql } from '../../crypto/envelope-sql';
import { isStoredEnvelopeBytes, sealEnvelope } from '../../crypto/envelope';
import { quoteIdent } from '../../db/transaction';
import { ColumnPlan } from './plan';
import { nextNonce, SealingRewriter } from './stored-values';
import { openWithDataKeys, readStoredEnvelope } from './undecryptable';
import { ValueRewriter } from './value-rewriter';
import { PLAINTEXT_TALLY } from './verify-transform';

export interface EncryptTransform {
  kind: 'encrypt';
  /** The data key new envelopes are sealed under (the primary one). */
  toVersion: number;
  dek: Uint8Array;
  /** Every data key an envelope already in the column may name, by version. */
  deks: Array<[number, Uint8Array]>;
  /** Versions of destroyed data keys (an envelope naming one is reported as such). */
  destroyed?: number[];
}

/** Tally key of the envelopes an encrypt pass found and left alone (plaintext: PLAINTEXT_TALLY). */
export const ENVELOPE_TALLY = 'envelope';

class EncryptionRewriter extends SealingRewriter {
  constructor(
    private readonly t: EncryptTransform,
    p: ColumnPlan,
  ) {
    super(p, t.dek, t.deks, t.destroyed);
  }

  read(raw: Buffer, _keys: string[], tally: Record<string, number>): boolean {
    if (isStoredEnvelopeBytes(raw, this.p.col.storage)) {
      const { envelope, version } = readStoredEnvelope(raw, this.p.col.storage);
      openWithDataKeys(this.keys, envelope, version, this.p.col.context).fill(0);
      tally[ENVELOPE_TALLY] = (tally[ENVELOPE_TALLY] ?? 0) + 1;
      return false;
    }
    tally[PLAINTEXT_TALLY] = (tally[PLAINTEXT_TALLY] ?? 0) + 1;
    this.sealed = sealEnvelope(this.targetDek, this.t.toVersion, raw, this.p.col.context, nextNonce());
    return true;
  }
}

export function openEncryption(t: EncryptTransform, p: ColumnPlan): ValueRewriter {
  return new EncryptionRewriter(t, p);
}

/** Values still to encrypt: those that are not envelopes. */
export function encryptionPendingSql(p: ColumnPlan, alias: string): string {
  return `NOT ${isEnvelopeSql(p.col.storage, (alias ? alias + '.' : '') + quoteIdent(p.col.column_name))}`;
}
