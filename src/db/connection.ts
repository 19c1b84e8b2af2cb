/**
 * Connection settings. Precedence: --database-url, then $ALATION_KEYS_DATABASE_URL,
 * then libpq's PG* variables as pg reads them, with database `rosemeta` when none is named.
 */
import { ClientConfig, Pool, PoolConfig } from 'pg';
import { UsageError } from '../errors';

export interface ConnectionOptions {
  databaseUrl?: string;
  /** The command, shown to DBAs as application_name `alation-keys/<command>`. */
  command?: string;
  env?: NodeJS.ProcessEnv;
}

export const DEFAULT_DATABASE = 'rosemeta';

/**
 * Every session runs with ISO dates: node-postgres reads timestamps only in that style (a
 * database set to `DateStyle = 'SQL, DMY'` made every timestamp null), and keys checkpointed
 * in their text form must read back the same in any later session. Appended to $PGOPTIONS.
 */
function sessionOptions(env: NodeJS.ProcessEnv): string {
  return [env.PGOPTIONS, '-c DateStyle=ISO,MDY'].filter(Boolean).join(' ');
}

export function resolveConnectionConfig(opts: ConnectionOptions = {}): ClientConfig {
  const env = opts.env ?? process.env;
  const applicationName = `alation-keys/${opts.command ?? 'library'}`;
  const options = sessionOptions(env);
  const url = opts.databaseUrl ?? env.ALATION_KEYS_DATABASE_URL;
  if (url) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new UsageError('the database URL is not a valid URL', {
        hint: 'use postgresql://USER@HOST:PORT/DATABASE (put the password in PGPASSWORD or ~/.pgpass, not the URL)',
      });
    }
    if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
      throw new UsageError(`the database URL must start with postgresql:// (got ${parsed.protocol}//)`);
    }
    const config: ClientConfig = { connectionString: url, application_name: applicationName, options };
    if (parsed.pathname === '' || parsed.pathname === '/') config.database = env.PGDATABASE || DEFAULT_DATABASE;
    return config;
  }
  return { database: env.PGDATABASE || DEFAULT_DATABASE, application_name: applicationName, options };
}

export function createPool(opts: ConnectionOptions & { max?: number } = {}): Pool {
  const config: PoolConfig = { ...resolveConnectionConfig(opts), max: opts.max ?? 4, idleTimeoutMillis: 10_000 };
  const pool = new Pool(config);
  // An idle client losing its connection (database restart) must not crash the process.
  pool.on('error', () => undefined);
  return pool;
}

const PLAIN_CONFIG_KEYS = ['connectionString', 'host', 'port', 'user', 'password', 'database', 'application_name', 'ssl', 'options', 'keepAlive'] as const;

/**
 * The connection settings of a pool as plain data, for a worker thread to open its own
 * connection to the same database (the worker reads the same environment for PG* variables
 * and ~/.pgpass). Functions (a password callback) cannot cross a thread and are left out.
 */
export function connectionConfigOf(pool: Pool): ClientConfig {
  const options = (pool as unknown as { options: Record<string, unknown> }).options ?? {};
  const out: Record<string, unknown> = {};
  for (const k of PLAIN_CONFIG_KEYS) {
    const v = options[k];
    if (v === undefined || typeof v === 'function') continue;
    if (typeof v === 'object' && v !== null && Object.getPrototypeOf(v) !== Object.prototype) continue;
    out[k] = v;
  }
  return out as ClientConfig;
}
