import { CopyPayloadBuilder } from './copy-binary';

/** A transform opened in the reader thread: called once per value read, so keep it lean. */
export interface ValueRewriter {
  /**
   * Looks at one stored value (its raw bytes as binary COPY gives them) of the row at `keys`.
   * Counts what it found in `tally` (e.g. values per DEK version) and returns whether the row
   * is rewritten; when it is, writeNew() is called next. Throws an UndecryptableValue
   * (undecryptable.ts) on a value it cannot open: the pass stops before writing the chunk, or
   * with skipUndecryptable leaves the value untouched and records its row.
   */
  read(raw: Buffer, keys: string[], tally: Record<string, number>): boolean;
  /** Writes the new value of the row last read as one COPY field; returns its length in bytes. */
  writeNew(b: CopyPayloadBuilder): number;
  /** Overwrites the key material this rewriter holds (its own copies). */
  wipe(): void;
}
