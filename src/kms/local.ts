import { IntegrityError, ProviderError } from '../errors';
import { generateDataKey, unwrapDataKey, wrapDataKey, WrappedKeyError } from '../crypto/wrap';
import {
  appendMasterKey,
  currentMasterKey,
  findMasterKey,
  forgetMasterKeys,
  MasterKeyFile,
  newMasterKey,
  readMasterKeyFile,
  RewriteHooks,
} from './master-key-file';
import { GeneratedDataKey, KeyProvider, WrappedDataKey } from './provider';

/** Wraps DEKs under the current key of the local master key file. */
export class LocalKeyProvider implements KeyProvider {
  readonly kind = 'local' as const;
  private file: MasterKeyFile;

  constructor(private readonly filePath: string, file?: MasterKeyFile) {
    this.file = file ?? readMasterKeyFile(filePath);
  }

  get masterKeyFile(): MasterKeyFile {
    return this.file;
  }

  /** Re-reads the file (another process may have added a master key version). */
  reload(): void {
    const old = this.file;
    this.file = readMasterKeyFile(this.filePath);
    forgetMasterKeys(old);
  }

  /**
   * A new master key, appended to the file under its lock and read back (SPEC 2.1); DEKs
   * wrapped from now on use it. Returns its id.
   */
  async addKekVersion(hooks: RewriteHooks = {}): Promise<string> {
    const mk = newMasterKey();
    const old = this.file;
    this.file = await appendMasterKey(this.filePath, mk, hooks);
    forgetMasterKeys(old);
    return currentMasterKey(this.file).id;
  }

  /** Zeroes the master keys held in memory; the provider is unusable afterwards. */
  dispose(): void {
    forgetMasterKeys(this.file);
    this.file = { path: this.filePath, keys: [] };
  }

  currentKekId(): string {
    return currentMasterKey(this.file).id;
  }

  async generateDataKey(version: number): Promise<GeneratedDataKey> {
    const dek = generateDataKey();
    return { dek, ...(await this.wrapDataKey(version, dek)) };
  }

  async wrapDataKey(version: number, dek: Buffer): Promise<WrappedDataKey> {
    const mk = currentMasterKey(this.file);
    return { wrappedKey: wrapDataKey(mk.material, version, dek), kekId: mk.id };
  }

  async unwrapDataKey(version: number, wrappedKey: Buffer, kekId: string): Promise<Buffer> {
    let mk = findMasterKey(this.file, kekId);
    if (!mk) {
      this.reload();
      mk = findMasterKey(this.file, kekId);
    }
    if (!mk) {
      throw new ProviderError(`master key ${kekId} (wrapping data key v${version}) is not in ${this.filePath}`, {
        hint: 'use the master key file that belongs to this database (pass --master-key-file)',
      });
    }
    try {
      return unwrapDataKey(mk.material, version, wrappedKey);
    } catch (err) {
      if (err instanceof WrappedKeyError) {
        throw new IntegrityError(`data key v${version} in alation_keys.keyring failed to verify: ${err.message}`, { version });
      }
      throw err;
    }
  }

  async checkReachable(): Promise<void> {
    this.reload();
  }
}
