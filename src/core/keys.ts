/**
 * `keys destroy VERSION`: deletes a retired DEK's key material on purpose. Refuses while any
 * value in any registered column uses it, or while it is primary or active.
 */
import { Pool } from 'pg';
import { PreconditionError, UsageError } from '../errors';
import { requireInitialised } from '../db/migrations';
import { acquireAdvisoryLock, qualifiedName, Queryable, quoteIdent, withTransaction } from '../db/transaction';
import { BackupListEntry, backupsNeedingKey } from './backup-catalog';
import { EncryptedColumn, listColumns } from './columns';
import { formatColumnName } from './identifiers';
import { createJob, describeLockHolder, finishJob } from './jobs';
import { DekState } from './keyring';
import { versionExpr } from './value-sql';

export interface DestroyPlan {
  version: number;
  state: DekState;
  /** Already destroyed: nothing to do. */
  alreadyDestroyed: boolean;
  destroyedAt: string | null;
  /** Recorded (succeeded) backups whose manifest needs this DEK. */
  backupsNeeding: BackupListEntry[];
}

export interface DestroyResult {
  version: number;
  destroyedAt: string;
  jobId: number;
  backupsNeeding: number[];
}

export function parseVersion(text: string): number {
  if (!/^v?\d{1,9}$/i.test(text.trim())) throw new UsageError(`a data key version is a positive whole number, got "${text}"`);
  const v = Number(text.trim().replace(/^v/i, ''));
  if (v < 1) throw new UsageError(`a data key version is a positive whole number, got "${text}"`);
  return v;
}

/** Values in each registered column that use DEK `version` (only columns with any). */
export async function valuesUsingKey(db: Queryable, version: number, columns?: EncryptedColumn[]): Promise<Array<{ column: string; values: number }>> {
  const cols = columns ?? (await listColumns(db));
  const out: Array<{ column: string; values: number }> = [];
  for (const col of cols) {
    const r = await db.query<{ n: string }>(
      `SELECT count(*) AS n FROM ${qualifiedName(col.table_schema, col.table_name)}
        WHERE ${quoteIdent(col.column_name)} IS NOT NULL AND ${versionExpr(col)} = $1`,
      [version],
    );
    const n = Number(r.rows[0].n);
    if (n > 0) out.push({ column: formatColumnName(col), values: n });
  }
  return out;
}

function refuseUnlessRetired(version: number, state: DekState): void {
  if (state === 'primary') {
    throw new PreconditionError(`data key v${version} is the primary key: new values are encrypted with it`, {
      hint: 'only retired keys can be destroyed: run `alation-keys rotate` first, which re-encrypts every value and retires the old key',
    });
  }
  if (state === 'active') {
    throw new PreconditionError(`data key v${version} is active: values may still be encrypted with it`, {
      hint: 'only retired keys can be destroyed: run `alation-keys rotate` to re-encrypt the values and retire it',
    });
  }
}

function refuseIfUsed(version: number, used: Array<{ column: string; values: number }>): void {
  if (used.length === 0) return;
  const total = used.reduce((s, u) => s + u.values, 0);
  throw new PreconditionError(
    `${total} value(s) still use data key v${version}: ${used.map((u) => `${u.column} ${u.values}`).join(', ')}`,
    { hint: 'run `alation-keys rotate` to re-encrypt them with the primary key, then destroy it' },
  );
}

/** Checks that DEK `version` may be destroyed (throws exit 3 if not) and lists backups that need it. */
export async function planDestroy(pool: Pool, version: number): Promise<DestroyPlan> {
  await requireInitialised(pool);
  const r = await pool.query<{ state: DekState; destroyed_at: Date | null }>(
    'SELECT state, destroyed_at FROM alation_keys.keyring WHERE version = $1',
    [version],
  );
  if (r.rowCount === 0) throw new UsageError(`there is no data key v${version}`, { hint: 'see `alation-keys keys list`' });
  const { state, destroyed_at } = r.rows[0];
  if (state === 'destroyed') {
    return { version, state, alreadyDestroyed: true, destroyedAt: destroyed_at?.toISOString() ?? null, backupsNeeding: [] };
  }
  refuseUnlessRetired(version, state);
  refuseIfUsed(version, await valuesUsingKey(pool, version));
  return { version, state, alreadyDestroyed: false, destroyedAt: null, backupsNeeding: await backupsNeedingKey(pool, version) };
}

/**
 * Destroys DEK `version` under the maintenance lock (no rotation or backup runs meanwhile),
 * re-checking in the same transaction that it is retired and no value uses it. Recorded as
 * a job of kind `keys-destroy`.
 */
export async function destroyDataKey(pool: Pool, version: number): Promise<DestroyResult> {
  await requireInitialised(pool);
  const lock = await acquireAdvisoryLock(pool, (pid) => describeLockHolder(pool, pid));
  try {
    const backups = (await backupsNeedingKey(pool, version)).map((b) => b.jobId);
    const job = await createJob(pool, { kind: 'keys-destroy', fromVersion: version, detail: { version, backups_needing: backups } });
    try {
      const destroyedAt = await withTransaction(pool, async (client) => {
        // Writers of a registered column that re-read the keyring wait; rows keep their values.
        const row = await client.query<{ state: DekState }>('SELECT state FROM alation_keys.keyring WHERE version = $1 FOR UPDATE', [version]);
        if (row.rowCount === 0) throw new UsageError(`there is no data key v${version}`);
        const state = row.rows[0].state;
        if (state === 'destroyed') throw new PreconditionError(`data key v${version} is already destroyed`);
        refuseUnlessRetired(version, state);
        refuseIfUsed(version, await valuesUsingKey(client, version));
        const u = await client.query<{ destroyed_at: Date }>(
          `UPDATE alation_keys.keyring SET state = 'destroyed', wrapped_key = NULL, destroyed_at = now()
            WHERE version = $1 AND state = 'retired' RETURNING destroyed_at`,
          [version],
        );
        return u.rows[0].destroyed_at;
      });
      await finishJob(pool, job.id, 'succeeded');
      return { version, destroyedAt: destroyedAt.toISOString(), jobId: job.id, backupsNeeding: backups };
    } catch (err) {
      await finishJob(pool, job.id, 'failed', (err as Error).message).catch(() => undefined);
      throw err;
    }
  } finally {
    await lock.release();
  }
}
