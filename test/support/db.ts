/**
 * One fresh database per test file on the server the global setup started (or
 * TEST_DATABASE_URL). Databases are named after the file so leftovers are easy to spot.
 */
import { randomBytes } from 'node:crypto';
import { Client, Pool } from 'pg';

export interface TestDatabase {
  url: string;
  name: string;
  pool: Pool;
  query: Pool['query'];
  drop(): Promise<void>;
}

export function serverUrl(): string {
  const url = process.env.ALATION_KEYS_TEST_SERVER ?? process.env.TEST_DATABASE_URL;
  if (!url) throw new Error('no test PostgreSQL: run tests through jest (global setup) or set TEST_DATABASE_URL');
  return url;
}

export function urlFor(database: string, server = serverUrl()): string {
  const u = new URL(server);
  u.pathname = '/' + database;
  return u.toString();
}

async function adminQuery(sql: string, server = serverUrl()): Promise<void> {
  const u = new URL(server);
  u.pathname = '/postgres';
  const c = new Client({ connectionString: u.toString() });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

/** A fresh database on the test server (or on `server`, an admin URL of another one). */
export async function createTestDatabase(label = 'test', server = serverUrl()): Promise<TestDatabase> {
  const name = `ak_${label.replace(/[^a-z0-9]+/gi, '_').toLowerCase().slice(0, 30)}_${randomBytes(4).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name}`, server);
  const url = urlFor(name, server);
  const pool = new Pool({ connectionString: url, max: 4 });
  pool.on('error', () => undefined);
  return {
    url,
    name,
    pool,
    query: pool.query.bind(pool) as Pool['query'],
    async drop() {
      await pool.end();
      await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`, server);
    },
  };
}
