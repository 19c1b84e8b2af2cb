/**
 * The application's view of the keyring: `openKeyring()` returns encrypt/decrypt for
 * registered columns. DEKs are unwrapped once and cached, so a short key-provider outage
 * does not stop the application; the keyring is re-read every `refreshSeconds`, and once
 * more on meeting an unknown DEK version.
 *
 * Each column is handled as its state says (SPEC 4.2), learnt on the same refresh:
 *   encrypted   writes envelopes; reads envelopes only (anything else is an IntegrityError)
 *   encrypting  writes envelopes; reads envelopes, and returns a value that is not one as it is
 *   decrypting  writes plaintext; reads both, as in `encrypting`
 *   removed     as `decrypting` (the column is plaintext again; an instance may not know yet)
 */
import { Pool } from 'pg';
import { IntegrityError, PreconditionError, UsageError } from '../errors';
import {
  EnvelopeAuthError,
  EnvelopeFormatError,
  envelopeFromText,
  envelopeToText,
  envelopeVersion,
  isStoredEnvelope,
  openEnvelope,
  sealEnvelope,
} from '../crypto/envelope';
import { createPool } from '../db/connection';
import { requireInitialised } from '../db/migrations';
import { createKeyProvider } from '../kms';
import { KeyProvider } from '../kms/provider';
import { EncryptedColumn, listColumnsEverRegistered } from './columns';
import { parseQualifiedName } from './identifiers';
import { primaryOf, readKeyring, unwrapKeyring } from './keyring';
import { readSettings } from './settings';

export interface OpenKeyringOptions {
  connectionString?: string;
  pool?: Pool;
  masterKeyFile?: string;
  /** Seconds between keyring re-reads (default 30). */
  refreshSeconds?: number;
  /** Use this provider instead of the one the settings name (tests, custom KMS set-ups). */
  keyProvider?: KeyProvider;
  awsProfile?: string;
}

export type PlainValue = string | Buffer;

export interface Keyring {
  /** Encrypts with the primary DEK. NULL/undefined stays NULL. `column` is `schema.table.column`. */
  encrypt(value: string, column: string): Promise<string>;
  encrypt(value: Buffer, column: string): Promise<Buffer>;
  encrypt(value: null | undefined, column: string): Promise<null>;
  encrypt(value: PlainValue | null | undefined, column: string): Promise<PlainValue | null>;
  /** Decrypts a stored value (text storage gives a string, bytea a Buffer). */
  decrypt(value: string, column: string): Promise<string>;
  decrypt(value: Buffer, column: string): Promise<Buffer>;
  decrypt(value: null | undefined, column: string): Promise<null>;
  decrypt(value: PlainValue | null | undefined, column: string): Promise<PlainValue | null>;
  /** The DEK version new values are encrypted with. */
  primaryVersion(): number;
  /** Re-reads the keyring and the column registry now. */
  refresh(): Promise<void>;
  close(): Promise<void>;
}

const columnKey = (parts: string[]) => parts.join('\u0000');

/** New values of a column in this state are written as plaintext. */
const writesPlaintext = (col: EncryptedColumn) => col.state === 'decrypting' || col.state === 'removed';

class KeyringClient implements Keyring {
  private deks = new Map<number, Buffer>();
  private primary = 0;
  private columns = new Map<string, EncryptedColumn>();
  private readonly parsedNames = new Map<string, string>();
  private lastRefresh = 0;
  private refreshing: Promise<void> | undefined;
  private readonly refreshMs: number;

  constructor(
    private readonly pool: Pool,
    private readonly ownsPool: boolean,
    private provider: KeyProvider | undefined,
    private readonly opts: OpenKeyringOptions,
  ) {
    this.refreshMs = (opts.refreshSeconds ?? 30) * 1000;
  }

  async load(): Promise<void> {
    await requireInitialised(this.pool);
    await this.reload();
  }

  private async reload(): Promise<void> {
    const [settings, rows, cols] = await Promise.all([readSettings(this.pool), readKeyring(this.pool), listColumnsEverRegistered(this.pool)]);
    if (!this.provider || (!this.opts.keyProvider && this.provider.kind !== (settings.kek_provider ?? 'local'))) {
      this.provider = this.opts.keyProvider ?? createKeyProvider(settings, this.opts);
    }
    // Destroyed keys are forgotten; new ones unwrapped; cached ones kept.
    const live = new Set(rows.filter((r) => r.state !== 'destroyed').map((r) => r.version));
    for (const [v, k] of [...this.deks.entries()]) {
      if (live.has(v)) continue;
      k.fill(0);
      this.deks.delete(v);
    }
    await unwrapKeyring(rows, this.provider, this.deks);
    const primary = primaryOf(rows);
    if (!primary) throw new PreconditionError('the keyring has no primary data key', { hint: 'run `alation-keys init`' });
    this.primary = primary.version;
    this.columns = new Map(cols.map((c) => [columnKey([c.table_schema, c.table_name, c.column_name]), c]));
    this.lastRefresh = Date.now();
  }

  /** Refreshes at most once at a time; on failure keeps the cached keys. */
  private refreshNow(): Promise<void> {
    if (!this.refreshing) {
      this.refreshing = this.reload().finally(() => {
        this.refreshing = undefined;
      });
    }
    return this.refreshing;
  }

  private async maybeRefresh(): Promise<void> {
    if (Date.now() - this.lastRefresh < this.refreshMs) return;
    try {
      await this.refreshNow();
    } catch {
      // Key provider or database briefly unavailable: keep working from the cache.
      this.lastRefresh = Date.now();
    }
  }

  async refresh(): Promise<void> {
    await this.refreshNow();
  }

  primaryVersion(): number {
    return this.primary;
  }

  private async column(name: string): Promise<EncryptedColumn> {
    // The application passes the same few names millions of times: parse each once.
    let key = this.parsedNames.get(name);
    if (key === undefined) {
      key = columnKey(parseQualifiedName(name, 3));
      if (this.parsedNames.size < 10_000) this.parsedNames.set(name, key);
    }
    const find = () => this.columns.get(key);
    let col = find();
    if (!col) {
      await this.refreshNow();
      col = find();
    }
    if (!col) throw new UsageError(`column ${name} is not registered for encryption`, { hint: 'run `alation-keys columns add`' });
    return col;
  }

  async encrypt(value: PlainValue | null | undefined, column: string): Promise<any> {
    if (value === null || value === undefined) return null;
    await this.maybeRefresh();
    const col = await this.column(column);
    if (col.storage === 'text' && typeof value !== 'string') throw new UsageError(`column ${column} stores text: pass a string`);
    if (col.storage === 'bytea' && !Buffer.isBuffer(value)) throw new UsageError(`column ${column} stores bytea: pass a Buffer`);
    if (writesPlaintext(col)) return value;
    const dek = this.deks.get(this.primary)!;
    if (col.storage === 'text') return envelopeToText(sealEnvelope(dek, this.primary, Buffer.from(value as string, 'utf8'), col.context));
    return sealEnvelope(dek, this.primary, value as Buffer, col.context);
  }

  async decrypt(value: PlainValue | null | undefined, column: string): Promise<any> {
    if (value === null || value === undefined) return null;
    await this.maybeRefresh();
    const col = await this.column(column);
    const where = { schema: col.table_schema, table: col.table_name, column: col.column_name };
    // Plaintext is a legal value while a column is converted (either way) and once it is removed.
    if (col.state !== 'encrypted' && (typeof value === 'string' || Buffer.isBuffer(value)) && !isStoredEnvelope(value)) {
      return col.storage === 'text' ? String(value) : value;
    }
    let envelope: Buffer;
    let version: number;
    try {
      envelope = col.storage === 'text' ? envelopeFromText(String(value)) : (value as Buffer);
      if (!Buffer.isBuffer(envelope)) throw new EnvelopeFormatError('bytea column value is not a Buffer');
      version = envelopeVersion(envelope);
    } catch (err) {
      throw new IntegrityError(`value in ${column} is not a valid envelope: ${(err as Error).message}`, where);
    }
    let dek = this.deks.get(version);
    if (!dek) {
      try {
        await this.refreshNow();
      } catch {
        /* reported below */
      }
      dek = this.deks.get(version);
    }
    if (!dek) throw new IntegrityError(`value in ${column} names data key v${version}, which the keyring does not have`, { ...where, version });
    try {
      const plain = openEnvelope(dek, envelope, col.context);
      return col.storage === 'text' ? plain.toString('utf8') : plain;
    } catch (err) {
      if (err instanceof EnvelopeAuthError) throw new IntegrityError(`value in ${column} failed authentication`, { ...where, version });
      throw err;
    }
  }

  async close(): Promise<void> {
    for (const k of this.deks.values()) k.fill(0);
    this.deks.clear();
    if (!this.opts.keyProvider) this.provider?.dispose();
    if (this.ownsPool) await this.pool.end();
  }
}

export async function openKeyring(opts: OpenKeyringOptions = {}): Promise<Keyring> {
  const ownsPool = !opts.pool;
  const pool = opts.pool ?? createPool({ databaseUrl: opts.connectionString, command: 'library' });
  const client = new KeyringClient(pool, ownsPool, opts.keyProvider, opts);
  try {
    await client.load();
  } catch (err) {
    if (ownsPool) await pool.end();
    throw err;
  }
  return client;
}
