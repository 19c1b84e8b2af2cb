import { Pool, PoolClient } from 'pg';
import { PreconditionError } from '../errors';

export type Queryable = Pick<PoolClient, 'query'>;

/** Runs fn in BEGIN … COMMIT on one pooled connection; rolls back on any error. */
export async function withTransaction<T>(pool: Pool, fn: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  try {
    await client.query('BEGIN');
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (err) {
    try {
      await client.query('ROLLBACK');
    } catch {
      broken = true;
    }
    throw err;
  } finally {
    client.release(broken);
  }
}

/** The advisory lock that lets one maintenance job (rotate, backup, onboard) run at a time. */
export const MAINTENANCE_LOCK: readonly [number, number] = [0x414b4559, 1];

/**
 * The backend holding an advisory lock in THIS database (advisory locks are per database;
 * other databases on the same server may hold the same key), or undefined.
 */
/**
 * The pg_locks condition "the two-key advisory lock ($first, $second) is granted in this
 * database", with the keys as SQL expressions (parameters such as '$1').
 */
export function heldAdvisoryLockWhere(first: string, second: string): string {
  return `locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        AND classid = ${first}::int::oid AND objid = ${second}::int::oid AND objsubid = 2 AND granted`;
}

export async function advisoryLockHolder(db: Queryable, key: readonly [number, number] = MAINTENANCE_LOCK): Promise<number | undefined> {
  const r = await db.query<{ pid: number }>(
    `SELECT pid FROM pg_locks WHERE ${heldAdvisoryLockWhere('$1', '$2')} LIMIT 1`,
    [key[0], key[1]],
  );
  return r.rows[0]?.pid;
}

export interface HeldLock {
  release(): Promise<void>;
}

/**
 * Takes a session-level advisory lock on a dedicated connection and keeps it until released
 * (or the process dies: the server then frees it). Fails fast with exit 3, naming the holder.
 */
export async function acquireAdvisoryLock(
  pool: Pool,
  describeHolder: (pid: number | undefined) => Promise<string>,
  key: readonly [number, number] = MAINTENANCE_LOCK,
): Promise<HeldLock> {
  const client = await pool.connect();
  let ok = false;
  try {
    const r = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, $2) AS ok', [key[0], key[1]]);
    ok = r.rows[0].ok;
    if (!ok) {
      const who = await describeHolder(await advisoryLockHolder(client, key));
      throw new PreconditionError(`another alation-keys job holds the maintenance lock: ${who}`, {
        hint: 'wait for it to finish (see `alation-keys jobs`), then run this again',
      });
    }
  } finally {
    if (!ok) client.release();
  }
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      try {
        await client.query('SELECT pg_advisory_unlock($1, $2)', [key[0], key[1]]);
        client.release();
      } catch {
        client.release(true);
      }
    },
  };
}

export function quoteIdent(name: string): string {
  return '"' + name.replace(/"/g, '""') + '"';
}

export function qualifiedName(schema: string, table: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(table)}`;
}
