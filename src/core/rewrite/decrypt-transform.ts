/**
 * Decryption back to plaintext as a transform: each envelope is opened with the data key it
 * names and its plaintext written as the stored value (a text column: the UTF-8 string).
 * Values that are not envelopes (written meanwhile by instances that know the column is
 * `decrypting`) are counted and left alone. An envelope that does not open stops the pass
 * (undecryptable.ts).
 */
import { isEnvelopeSql } from '../../crypto/envelope-sql';
import { isStoredEnvelopeBytes } from '../../crypto/envelope';
import { quoteIdent } from '../../db/transaction';
import { CopyPayloadBuilder } from './copy-binary';
import { ColumnPlan } from './plan';
import { copyDataKeys } from './stored-values';
import { DataKeys, openWithDataKeys, readStoredEnvelope } from './undecryptable';
import { ValueRewriter } from './value-rewriter';
import { PLAINTEXT_TALLY } from './verify-transform';

export interface DecryptTransform {
  kind: 'decrypt';
  /** Every data key a value may name, by version. */
  deks: Array<[number, Uint8Array]>;
  /** Versions of destroyed data keys (a value naming one is reported as such). */
  destroyed?: number[];
}

class DecryptionRewriter implements ValueRewriter {
  private readonly keys: DataKeys & { usable: Map<number, Buffer> };
  private plain: Buffer | null = null;

  constructor(
    private readonly p: ColumnPlan,
    t: DecryptTransform,
  ) {
    this.keys = copyDataKeys(t.deks, t.destroyed);
  }

  read(raw: Buffer, _keys: string[], tally: Record<string, number>): boolean {
    if (!isStoredEnvelopeBytes(raw, this.p.col.storage)) {
      tally[PLAINTEXT_TALLY] = (tally[PLAINTEXT_TALLY] ?? 0) + 1;
      return false;
    }
    const { envelope, version } = readStoredEnvelope(raw, this.p.col.storage);
    this.plain = openWithDataKeys(this.keys, envelope, version, this.p.col.context);
    tally[version] = (tally[version] ?? 0) + 1;
    return true;
  }

  writeNew(b: CopyPayloadBuilder): number {
    const plain = this.plain!;
    this.plain = null;
    b.field(plain);
    plain.fill(0);
    return plain.length;
  }

  wipe(): void {
    for (const k of this.keys.usable.values()) k.fill(0);
  }
}

export function openDecryption(t: DecryptTransform, p: ColumnPlan): ValueRewriter {
  return new DecryptionRewriter(p, t);
}

/** Values still to decrypt: the envelopes. */
export function decryptionPendingSql(p: ColumnPlan, alias: string): string {
  return isEnvelopeSql(p.col.storage, (alias ? alias + '.' : '') + quoteIdent(p.col.column_name));
}
