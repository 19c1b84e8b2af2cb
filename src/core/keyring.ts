/** The DEK table: reading it, unwrapping it, and adding a new primary version. */
import { Pool } from 'pg';
import { IntegrityError } from '../errors';
import { DEK_LENGTH } from '../crypto/envelope';
import { Queryable, withTransaction } from '../db/transaction';
import { KekProviderKind, KeyProvider } from '../kms/provider';

export type DekState = 'primary' | 'active' | 'retired' | 'destroyed';

export interface KeyringRow {
  version: number;
  state: DekState;
  wrapped_key: Buffer | null;
  kek_provider: KekProviderKind;
  kek_id: string;
  created_at: Date;
  retired_at: Date | null;
  destroyed_at: Date | null;
}

export async function readKeyring(db: Queryable): Promise<KeyringRow[]> {
  const r = await db.query<KeyringRow>(
    `SELECT version, state, wrapped_key, kek_provider, kek_id, created_at, retired_at, destroyed_at
       FROM alation_keys.keyring ORDER BY version`,
  );
  return r.rows;
}

/** The state of DEK `version` (undefined when there is none); `forUpdate` locks its row in the caller's transaction. */
export async function dataKeyState(
  db: Queryable,
  version: number,
  opts: { forUpdate?: boolean } = {},
): Promise<Pick<KeyringRow, 'state' | 'destroyed_at'> | undefined> {
  const r = await db.query<Pick<KeyringRow, 'state' | 'destroyed_at'>>(
    `SELECT state, destroyed_at FROM alation_keys.keyring WHERE version = $1${opts.forUpdate ? ' FOR UPDATE' : ''}`,
    [version],
  );
  return r.rows[0];
}

/** Destroys retired DEK `version`: its wrapped key is gone for good. Returns when, or undefined if it was not retired. */
export async function markDataKeyDestroyed(db: Queryable, version: number): Promise<Date | undefined> {
  const u = await db.query<{ destroyed_at: Date }>(
    `UPDATE alation_keys.keyring SET state = 'destroyed', wrapped_key = NULL, destroyed_at = now()
      WHERE version = $1 AND state = 'retired' RETURNING destroyed_at`,
    [version],
  );
  return u.rows[0]?.destroyed_at;
}

/** Holds off every other writer of the keyring until the caller's transaction ends. */
export async function lockKeyring(db: Queryable): Promise<void> {
  await db.query('LOCK TABLE alation_keys.keyring IN SHARE ROW EXCLUSIVE MODE');
}

export function primaryOf(rows: KeyringRow[]): KeyringRow | undefined {
  return rows.find((r) => r.state === 'primary');
}

/** Unwraps every usable DEK not already in `cache`. */
export async function unwrapKeyring(
  rows: KeyringRow[],
  provider: KeyProvider,
  cache: Map<number, Buffer> = new Map(),
): Promise<Map<number, Buffer>> {
  for (const row of rows) {
    if (row.state === 'destroyed' || !row.wrapped_key || cache.has(row.version)) continue;
    const dek = await provider.unwrapDataKey(row.version, row.wrapped_key, row.kek_id);
    if (dek.length !== DEK_LENGTH) {
      throw new IntegrityError(`data key v${row.version} unwrapped to ${dek.length} bytes, not 32`, { version: row.version });
    }
    cache.set(row.version, dek);
  }
  return cache;
}

/**
 * Adds DEK version max+1 as primary (the previous primary becomes active) inside the
 * caller's transaction. Returns the new version and its plaintext key.
 */
export async function addPrimaryDataKey(
  db: Queryable,
  provider: KeyProvider,
): Promise<{ version: number; dek: Buffer; previousPrimary: number | null }> {
  await db.query('LOCK TABLE alation_keys.keyring IN SHARE ROW EXCLUSIVE MODE');
  const r = await db.query<{ next: number; primary: number | null }>(
    `SELECT coalesce(max(version), 0) + 1 AS next,
            max(version) FILTER (WHERE state = 'primary') AS primary
       FROM alation_keys.keyring`,
  );
  const version = r.rows[0].next;
  const previousPrimary = r.rows[0].primary;
  const generated = await provider.generateDataKey(version);
  await db.query(`UPDATE alation_keys.keyring SET state = 'active' WHERE state = 'primary'`);
  await db.query(
    `INSERT INTO alation_keys.keyring (version, state, wrapped_key, kek_provider, kek_id)
     VALUES ($1, 'primary', $2, $3, $4)`,
    [version, generated.wrappedKey, provider.kind, generated.kekId],
  );
  return { version, dek: generated.dek, previousPrimary };
}

/**
 * Re-wraps every non-destroyed DEK under `to` (in the caller's transaction). `from`
 * unwraps the current wrapping. Nothing is written if any DEK fails.
 */
/** The KEK ids that wrap the keyring's DEKs now (destroyed ones excluded). */
export async function liveKekIds(db: Queryable): Promise<string[]> {
  const r = await db.query<{ kek_id: string }>(`SELECT DISTINCT kek_id FROM alation_keys.keyring WHERE state <> 'destroyed' ORDER BY kek_id`);
  return r.rows.map((x) => x.kek_id);
}

export async function rewrapKeyring(db: Queryable, from: KeyProvider, to: KeyProvider): Promise<number> {
  await db.query('LOCK TABLE alation_keys.keyring IN SHARE ROW EXCLUSIVE MODE');
  const rows = (await readKeyring(db)).filter((r) => r.state !== 'destroyed' && r.wrapped_key);
  const rewrapped: Array<{ version: number; wrappedKey: Buffer; kekId: string }> = [];
  for (const row of rows) {
    const dek = await from.unwrapDataKey(row.version, row.wrapped_key!, row.kek_id);
    const w = await to.wrapDataKey(row.version, dek);
    rewrapped.push({ version: row.version, ...w });
  }
  for (const w of rewrapped) {
    await db.query(
      `UPDATE alation_keys.keyring SET wrapped_key = $2, kek_provider = $3, kek_id = $4 WHERE version = $1`,
      [w.version, w.wrappedKey, to.kind, w.kekId],
    );
  }
  return rewrapped.length;
}

export async function addPrimaryDataKeyInTransaction(pool: Pool, provider: KeyProvider) {
  return withTransaction(pool, (client) => addPrimaryDataKey(client, provider));
}

/** Marks active data keys no value uses (versions not in `inUse`) retired; returns their versions. Never destroys. */
export async function retireUnusedDataKeys(db: Queryable, inUse: number[]): Promise<number[]> {
  const r = await db.query<{ version: number }>(
    `UPDATE alation_keys.keyring SET state = 'retired', retired_at = now()
      WHERE state = 'active' AND NOT (version = ANY($1::int[])) RETURNING version`,
    [inUse],
  );
  return r.rows.map((x) => x.version).sort((a, b) => a - b);
}
