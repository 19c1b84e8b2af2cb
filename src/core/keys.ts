/**
 * `keys destroy VERSION`: deletes a retired DEK's key material on purpose. Refuses while any
 * value in any column the registry ever held uses it, while it is primary or active, or while
 * a recorded backup younger than the retention needs it (unless forced). With the local
 * provider it also starts a new master key and re-wraps the remaining DEKs under it, so that
 * `keys prune-master-keys` can then delete every master key that ever wrapped it.
 */
import { Pool } from 'pg';
import { PreconditionError, UsageError } from '../errors';
import { requireInitialised } from '../db/migrations';
import { acquireAdvisoryLock, qualifiedName, Queryable, quoteIdent, withTransaction } from '../db/transaction';
import { createKeyProvider, ProviderOptions } from '../kms';
import { masterKeyFileExists, readMasterKeyFile, removeMasterKeys, resolveMasterKeyPath } from '../kms/master-key-file';
import { BackupHoldingKey, backupsHoldingKey, kekIdsOfBackups } from './backup-catalog';
import { columnTypeProblem, EncryptedColumn, listColumnsEverRegistered } from './columns';
import { formatColumnName } from './identifiers';
import { createJob, describeLockHolder, finishJob, JobActorOption, masterKeyIdsInJobs } from './jobs';
import { dataKeyState, DekState, liveKekIds, markDataKeyDestroyed, readKeyring, rewrapKeyring } from './keyring';
import { readSettings } from './settings';
import { noPause, TestPause } from './test-hooks';
import { versionExpr } from './value-sql';
import { count, verb } from '../plural';

export const DEFAULT_BACKUP_RETENTION_MS = 30 * 86_400_000;

export interface DestroyOptions extends JobActorOption {
  /** Backups finished within this many ms are kept: one that needs the DEK blocks the destroy. */
  backupRetentionMs?: number;
  /** Destroy even though a retained backup needs the DEK. */
  force?: boolean;
  providerOptions?: ProviderOptions;
  /** TEST ONLY: holds the destroy at `destroy-planned` (src/core/test-hooks.ts). */
  pause?: TestPause;
}

export interface DestroyPlan {
  version: number;
  state: DekState;
  /** Already destroyed: nothing to do. */
  alreadyDestroyed: boolean;
  destroyedAt: string | null;
  /** Recorded (succeeded) backups whose dump holds this DEK wrapped; `needs` when its values may use it. */
  backupsHolding: BackupHoldingKey[];
  /** Of those, the ones within the retention that need it (they block unless forced). */
  retainedNeeding: BackupHoldingKey[];
}

export interface DestroyResult {
  version: number;
  destroyedAt: string;
  jobId: number;
  backupsHolding: number[];
  /** The master key the remaining DEKs were re-wrapped under (local provider), or null. */
  newMasterKey: string | null;
}

export function parseVersion(text: string): number {
  if (!/^v?\d{1,9}$/i.test(text.trim())) throw new UsageError(`a data key version is a positive whole number, got "${text}"`);
  const v = Number(text.trim().replace(/^v/i, ''));
  if (v < 1) throw new UsageError(`a data key version is a positive whole number, got "${text}"`);
  return v;
}

/**
 * Values that use DEK `version` in each column the registry ever held, `removed` ones
 * included (only columns with any). A removed column that was since dropped holds nothing.
 */
export async function valuesUsingKey(db: Queryable, version: number, columns?: EncryptedColumn[]): Promise<Array<{ column: string; values: number }>> {
  const cols = columns ?? (await listColumnsEverRegistered(db));
  const out: Array<{ column: string; values: number }> = [];
  for (const col of cols) {
    const problem = await columnTypeProblem(db, col);
    if (problem && col.state === 'removed') continue;
    if (problem) throw problem.error;
    const r = await db.query<{ n: string }>(
      `SELECT count(*) AS n FROM ${qualifiedName(col.table_schema, col.table_name)}
        WHERE ${quoteIdent(col.column_name)} IS NOT NULL AND ${versionExpr(col)} = $1`,
      [version],
    );
    const n = Number(r.rows[0].n);
    if (n > 0) out.push({ column: formatColumnName(col) + (col.state === 'removed' ? ' (removed)' : ''), values: n });
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
    `${count(total, 'value')} still ${verb(total, 'uses', 'use')} data key v${version}: ${used.map((u) => `${u.column} ${u.values}`).join(', ')}`,
    {
      hint: used.some((u) => u.column.endsWith('(removed)'))
        ? 're-add the removed column (`alation-keys columns add`) and run `alation-keys rotate` to re-encrypt its values, or clear them; then destroy it'
        : 'run `alation-keys rotate` to re-encrypt them with the primary key, then destroy it',
    },
  );
}

function refuseIfRetainedBackupNeeds(version: number, retained: BackupHoldingKey[], opts: DestroyOptions): void {
  if (retained.length === 0 || opts.force) return;
  throw new PreconditionError(
    `${count(retained.length, 'recorded backup')} younger than the retention ${verb(retained.length, 'needs', 'need')} data key v${version}: ${retained
      .map((b) => `job ${b.jobId} (${b.finishedAt ?? '?'}${b.path ? `, ${b.path}` : ''})`)
      .join(', ')}`,
    { hint: 'destroying it makes them unrestorable: wait until they are older than --backup-retention, or pass --force' },
  );
}

async function retainedNeeding(holding: BackupHoldingKey[], opts: DestroyOptions): Promise<BackupHoldingKey[]> {
  const since = Date.now() - (opts.backupRetentionMs ?? DEFAULT_BACKUP_RETENTION_MS);
  return holding.filter((b) => b.needs && b.finishedAt !== null && Date.parse(b.finishedAt) >= since);
}

/** Checks that DEK `version` may be destroyed (throws exit 3 if not) and lists the backups that hold it. */
export async function planDestroy(pool: Pool, version: number, opts: DestroyOptions = {}): Promise<DestroyPlan> {
  await requireInitialised(pool);
  const key = await dataKeyState(pool, version);
  if (!key) throw new UsageError(`there is no data key v${version}`, { hint: 'see `alation-keys keys list`' });
  const { state, destroyed_at } = key;
  if (state === 'destroyed') {
    return { version, state, alreadyDestroyed: true, destroyedAt: destroyed_at?.toISOString() ?? null, backupsHolding: [], retainedNeeding: [] };
  }
  refuseUnlessRetired(version, state);
  refuseIfUsed(version, await valuesUsingKey(pool, version));
  const backupsHolding = await backupsHoldingKey(pool, version);
  const retained = await retainedNeeding(backupsHolding, opts);
  refuseIfRetainedBackupNeeds(version, retained, opts);
  return { version, state, alreadyDestroyed: false, destroyedAt: null, backupsHolding, retainedNeeding: retained };
}

/**
 * Destroys DEK `version` under the maintenance lock (no rotation or backup runs meanwhile),
 * re-checking in the same transaction that it is retired and no value uses it. Recorded as
 * a job of kind `keys-destroy`.
 */
export async function destroyDataKey(pool: Pool, version: number, opts: DestroyOptions = {}): Promise<DestroyResult> {
  await requireInitialised(pool);
  const lock = await acquireAdvisoryLock(pool, (pid) => describeLockHolder(pool, pid));
  try {
    const holding = await backupsHoldingKey(pool, version);
    refuseIfRetainedBackupNeeds(version, await retainedNeeding(holding, opts), opts);
    const backups = holding.map((b) => b.jobId);
    const provider = createKeyProvider(await readSettings(pool), opts.providerOptions);
    const job = await createJob(pool, { actor: opts.actor, kind: 'keys-destroy', fromVersion: version, detail: { version, backups_holding: backups } });
    try {
      // Local provider: a new master key first (in the file, read back and checked); the
      // transaction below re-wraps every remaining DEK under it, so no master key that ever
      // wrapped this DEK is needed by the keyring any more.
      const newMasterKey = await provider.addKekVersion();
      let rewrappedFrom: string[] = [];
      await (opts.pause ?? noPause)('destroy-planned');
      const destroyedAt = await withTransaction(pool, async (client) => {
        // Writers of a registered column that re-read the keyring wait; rows keep their values.
        const key = await dataKeyState(client, version, { forUpdate: true });
        if (!key) throw new UsageError(`there is no data key v${version}`);
        const state = key.state;
        if (state === 'destroyed') throw new PreconditionError(`data key v${version} is already destroyed`);
        refuseUnlessRetired(version, state);
        refuseIfUsed(version, await valuesUsingKey(client, version));
        const destroyedAt = await markDataKeyDestroyed(client, version);
        if (newMasterKey) {
          rewrappedFrom = await liveKekIds(client);
          await rewrapKeyring(client, provider, provider);
        }
        return destroyedAt!;
      });
      await finishJob(pool, job.id, 'succeeded', undefined, { version, backups_holding: backups, masterKeyAdded: newMasterKey, rewrappedFrom });
      return { version, destroyedAt: destroyedAt.toISOString(), jobId: job.id, backupsHolding: backups, newMasterKey };
    } catch (err) {
      await finishJob(pool, job.id, 'failed', (err as Error).message).catch(() => undefined);
      throw err;
    } finally {
      provider.dispose();
    }
  } finally {
    await lock.release();
  }
}

export interface PruneOptions extends JobActorOption {
  /** Backups finished within this many ms are kept: the master keys they need stay. */
  backupRetentionMs?: number;
  masterKeyFile?: string;
  /** Only report what would be removed. */
  dryRun?: boolean;
}

export interface PrunePlan {
  masterKeyFile: string;
  /** Master keys that wrap no DEK of the keyring and that no retained backup needs. */
  removable: string[];
  /** Kept: they wrap a DEK of the keyring. */
  inUse: string[];
  /** Kept: a backup within the retention needs them. */
  neededByBackups: string[];
  /** Kept: this database never recorded them (another database may share the file). */
  foreign: string[];
  /** The current master key: never removed. */
  current: string | null;
}

/** Which master keys of the local file can go. */
export async function planPruneMasterKeys(pool: Pool, opts: PruneOptions = {}): Promise<PrunePlan> {
  await requireInitialised(pool);
  const masterKeyFile = resolveMasterKeyPath(opts.masterKeyFile);
  const plan: PrunePlan = { masterKeyFile, removable: [], inUse: [], neededByBackups: [], foreign: [], current: null };
  if (!masterKeyFileExists(masterKeyFile)) return plan;
  const file = readMasterKeyFile(masterKeyFile);
  const ids = file.keys.map((k) => k.id);
  file.keys.forEach((k) => k.material.fill(0));
  const rows = await readKeyring(pool);
  const live = new Set(rows.filter((r) => r.state !== 'destroyed' && r.kek_provider === 'local').map((r) => r.kek_id));
  const since = new Date(Date.now() - (opts.backupRetentionMs ?? DEFAULT_BACKUP_RETENTION_MS));
  const backups = await kekIdsOfBackups(pool, since);
  // Master keys this database added or re-wrapped its DEKs away from (rotate, keys destroy).
  const recorded = new Set([...rows.map((r) => r.kek_id), ...backups.recorded, ...(await masterKeyIdsInJobs(pool))]);
  plan.current = ids[ids.length - 1] ?? null;
  for (const id of ids) {
    if (id === plan.current) continue;
    if (live.has(id)) plan.inUse.push(id);
    else if (backups.needed.has(id)) plan.neededByBackups.push(id);
    else if (!recorded.has(id)) plan.foreign.push(id);
    else plan.removable.push(id);
  }
  return plan;
}

/** Removes the removable master keys from the file (under its lock and the maintenance lock). */
export async function pruneMasterKeys(pool: Pool, opts: PruneOptions = {}): Promise<PrunePlan & { removed: string[]; jobId: number | null }> {
  await requireInitialised(pool);
  const lock = await acquireAdvisoryLock(pool, (pid) => describeLockHolder(pool, pid));
  try {
    const plan = await planPruneMasterKeys(pool, opts);
    if (opts.dryRun || plan.removable.length === 0) return { ...plan, removed: [], jobId: null };
    const job = await createJob(pool, { actor: opts.actor, kind: 'keys-prune', detail: { masterKeyFile: plan.masterKeyFile, removable: plan.removable } });
    try {
      const removed = await removeMasterKeys(plan.masterKeyFile, new Set(plan.removable));
      await finishJob(pool, job.id, 'succeeded', undefined, { masterKeyFile: plan.masterKeyFile, removed });
      return { ...plan, removed, jobId: job.id };
    } catch (err) {
      await finishJob(pool, job.id, 'failed', (err as Error).message).catch(() => undefined);
      throw err;
    }
  } finally {
    await lock.release();
  }
}
