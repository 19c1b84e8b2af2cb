/**
 * Checks before a rewrite job touches anything: a resumable job, the key provider, disk
 * headroom, a recent backup, the columns' walk keys. Each throws a typed error naming the fix.
 */
import { Pool } from 'pg';
import { IntegrityError, InterruptedError, PreconditionError, ProviderError } from '../../errors';
import { createKeyProvider, ProviderOptions } from '../../kms';
import { KeyProvider } from '../../kms/provider';
import { censusColumn, ColumnCensus } from '../census';
import { mapWithConcurrency } from '../concurrency';
import { EncryptedColumn, requireColumnType } from '../columns';
import { describeFreeSpace, describeRequired, Headroom, HeadroomOptions, measureHeadroom } from '../headroom';
import { JobRecord, lastSucceededJob, listJobs } from '../jobs';
import { KeyringRow, unwrapKeyring } from '../keyring';
import { readSettings } from '../settings';
import { ColumnPlan, planColumn } from './plan';
import { formatDuration } from './util';

export const DEFAULT_MAX_BACKUP_AGE_MS = 24 * 3_600_000;

export interface HeadroomCheckOptions extends HeadroomOptions {
  skipDiskCheck?: boolean;
  /** TEST ONLY: the free space to see instead of the data directory's (test-hooks.ts). */
  testFreeBytes?: number;
}

/** The latest unfinished rotate job whose target DEK is still the primary one. */
export async function findResumable(pool: Pool, primary: KeyringRow): Promise<JobRecord | undefined> {
  const [latest] = await listJobs(pool, { kind: 'rotate', limit: 1 });
  if (!latest || latest.state === 'succeeded') return undefined;
  return latest.to_version === primary.version ? latest : undefined;
}

export async function checkHeadroom(pool: Pool, opts: HeadroomCheckOptions, events: { warn?(message: string): void }): Promise<Headroom> {
  const h = await measureHeadroom(pool, opts);
  const fake = opts.testFreeBytes;
  if (fake !== undefined) {
    h.freeBytes = fake;
    h.freeBytesSource = 'data-directory';
    h.ok = h.freeBytes >= h.requiredBytes;
    h.reason = undefined;
  }
  if (opts.skipDiskCheck) {
    if (!h.ok) events.warn?.(`disk headroom check skipped (--skip-disk-check): ${describeHeadroom(h)}`);
    return h;
  }
  if (h.ok === null) {
    throw new PreconditionError(`disk headroom is unknown: ${h.reason}; a rotation needs ${describeRequired(h)} free`, {
      hint: "pass --free-space BYTES with the free space on the server's volume, or --data-dir with the server's data directory as mounted here",
    });
  }
  if (!h.ok) {
    throw new PreconditionError(
      `not enough disk headroom: ${describeFreeSpace(h)}, a rotation needs ${describeRequired(h)}`,
      { hint: 'free some space on the database volume, or pass --skip-disk-check to override knowingly' },
    );
  }
  return h;
}

export function describeHeadroom(h: Headroom): string {
  return h.freeBytes === null
    ? `unknown (${h.reason}), needs ${describeRequired(h)}`
    : `${describeFreeSpace(h)}, needs ${describeRequired(h)}`;
}

export async function checkBackup(pool: Pool, maxAgeMs: number): Promise<JobRecord> {
  const b = await lastSucceededJob(pool, 'backup');
  const age = b?.finished_at ? Date.now() - b.finished_at.getTime() : Infinity;
  if (!b || age > maxAgeMs) {
    throw new PreconditionError(
      b
        ? `the last successful backup (job ${b.id}, ${b.finished_at!.toISOString()}) is ${formatDuration(age)} old, older than --max-backup-age ${formatDuration(maxAgeMs)}`
        : 'no successful backup is recorded',
      { hint: 'run `alation-keys backup` first, or pass --backup to take one now, or --skip-backup-check to rotate without one' },
    );
  }
  return b;
}

/** The key provider, checked reachable, and every data key of the keyring unwrapped. */
export async function openProvider(pool: Pool, providerOptions: ProviderOptions, rows: KeyringRow[]): Promise<{ provider: KeyProvider; deks: Map<number, Buffer> }> {
  const settings = await readSettings(pool);
  const provider = createKeyProvider(settings, providerOptions);
  try {
    await provider.checkReachable();
  } catch (err) {
    if (err instanceof ProviderError || err instanceof IntegrityError) throw err;
    throw new ProviderError(`the key provider (${provider.kind}) cannot be reached: ${(err as Error).message}`, { cause: err });
  }
  const deks = await unwrapKeyring(rows, provider);
  return { provider, deks };
}

/** Full scans run side by side at most this many at a time (each on its own connection). */
export const SCAN_CONNECTIONS = 2;

/** The census of each column (types checked first), SCAN_CONNECTIONS columns at a time. */
export async function censusColumns(pool: Pool, cols: EncryptedColumn[]): Promise<ColumnCensus[]> {
  for (const c of cols) await requireColumnType(pool, c);
  return mapWithConcurrency(cols, SCAN_CONNECTIONS, (c) => censusColumn(pool, c));
}

export async function planColumns(pool: Pool, cols: EncryptedColumn[]): Promise<ColumnPlan[]> {
  const plans: ColumnPlan[] = [];
  for (const [i, c] of cols.entries()) plans.push(await planColumn(pool, c, i));
  return plans;
}

export function throwIfStopped(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new InterruptedError(`interrupted ${what}; nothing was changed`);
}
