/**
 * `verify` as a transform of the rewrite engine that writes nothing: in the reader thread each
 * value is opened with the data key it names and counted per version; a value that does not
 * open is recorded with its row (the pass runs with skipUndecryptable), plaintext is counted
 * where the column's state allows it and recorded as a failure where it does not.
 */
import { CopyPayloadBuilder } from './copy-binary';
import { ColumnPlan } from './plan';
import { DataKeys, openWithDataKeys, readStoredEnvelope, UndecryptableValue } from './undecryptable';
import { ValueRewriter } from './value-rewriter';

/** The tally key of plaintext values in a column whose state allows them. */
export const PLAINTEXT_TALLY = 'plaintext';

export interface VerifyTransform {
  kind: 'verify';
  /** Every data key the keyring can unwrap, by version. */
  deks: Array<[number, Uint8Array]>;
  /** Versions of destroyed data keys. */
  destroyed: number[];
  /** The column's state allows values that are not envelopes (`encrypting`, `decrypting`, `removed`). */
  plaintextAllowed: boolean;
}

class VerifyReader implements ValueRewriter {
  private readonly keys: DataKeys;

  constructor(
    private readonly t: VerifyTransform,
    private readonly p: ColumnPlan,
  ) {
    this.keys = { usable: new Map(t.deks.map(([v, k]) => [v, Buffer.from(k)])), destroyed: new Set(t.destroyed) };
  }

  read(raw: Buffer, _keys: string[], tally: Record<string, number>): boolean {
    let opened: { envelope: Buffer; version: number };
    try {
      opened = readStoredEnvelope(raw, this.p.col.storage);
    } catch (err) {
      if (!(err instanceof UndecryptableValue && err.reason === 'plaintext' && this.t.plaintextAllowed)) throw err;
      tally[PLAINTEXT_TALLY] = (tally[PLAINTEXT_TALLY] ?? 0) + 1;
      return false;
    }
    openWithDataKeys(this.keys, opened.envelope, opened.version, this.p.col.context).fill(0);
    tally[opened.version] = (tally[opened.version] ?? 0) + 1;
    return false;
  }

  writeNew(_b: CopyPayloadBuilder): number {
    throw new Error('verify writes nothing');
  }

  wipe(): void {
    for (const k of this.keys.usable.values()) k.fill(0);
  }
}

export function openVerification(t: VerifyTransform, p: ColumnPlan): ValueRewriter {
  return new VerifyReader(t, p);
}
