/** The key-encryption-key provider interface: a local master key file or AWS KMS. */
export type KekProviderKind = 'local' | 'aws-kms';

export interface WrappedDataKey {
  wrappedKey: Buffer;
  kekId: string;
}

export interface GeneratedDataKey extends WrappedDataKey {
  dek: Buffer;
}

export interface KeyProvider {
  readonly kind: KekProviderKind;
  /** The KEK that new DEKs are wrapped under (master key id, or KMS key ARN). */
  currentKekId(): string;
  /** A new random DEK and its wrapped form, for DEK `version`. */
  generateDataKey(version: number): Promise<GeneratedDataKey>;
  wrapDataKey(version: number, dek: Buffer): Promise<WrappedDataKey>;
  /** Throws ProviderError when the KEK cannot be reached, IntegrityError when the wrapped key is bad. */
  unwrapDataKey(version: number, wrappedKey: Buffer, kekId: string): Promise<Buffer>;
  /** Proves the provider answers now (cheap). Throws ProviderError otherwise. */
  checkReachable(): Promise<void>;
  /**
   * Starts a new KEK version that DEKs are re-wrapped under during a rotation and returns its
   * id, or null when the provider rotates its key material itself (KMS).
   */
  addKekVersion(hooks?: { beforeLock?: () => Promise<void>; inRewriteWindow?: () => Promise<void> }): Promise<string | null>;
  /** Zeroes key material held in memory, where the provider holds any. */
  dispose(): void;
}
