/**
 * Our own schema, alation_keys, created and migrated by versioned migrations, each in a
 * transaction under an advisory lock. A database migrated by a newer binary is refused.
 */
import { Pool } from 'pg';
import { PreconditionError } from '../errors';
import { Queryable, withTransaction } from './transaction';
import { requireSchemaOwnership } from './privileges';

export const SCHEMA = 'alation_keys';

interface Migration {
  version: number;
  name: string;
  /** Refuses (throws) before the SQL runs when the existing data cannot be migrated. */
  precheck?: (db: Queryable) => Promise<void>;
  sql: string;
}

/** Version 2 cannot add the unique context index while two rows share a context, or a row has none. */
async function refuseAmbiguousContexts(db: Queryable): Promise<void> {
  const dup = await db.query<{ context: string; columns: string[] }>(
    `SELECT context, array_agg(quote_ident(table_schema) || '.' || quote_ident(table_name) || '.' || quote_ident(column_name)
                             ORDER BY table_schema, table_name, column_name) AS columns
       FROM alation_keys.encrypted_columns GROUP BY context HAVING count(*) > 1 OR context = '' ORDER BY context`,
  );
  if (dup.rowCount === 0) return;
  const list = dup.rows.map((r) => (r.context === '' ? `empty context: ${r.columns.join(', ')}` : `context "${r.context}": ${r.columns.join(', ')}`));
  throw new PreconditionError(`cannot migrate: registered columns share a context or have none (${list.join('; ')})`, {
    hint: 'a value encrypted in one of them verifies in the other; re-encrypt one column under a context of its own before migrating',
  });
}

export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: 'initial schema',
    sql: `
CREATE TABLE alation_keys.keyring (
  version integer PRIMARY KEY CHECK (version > 0),
  state text NOT NULL CHECK (state IN ('primary', 'active', 'retired', 'destroyed')),
  wrapped_key bytea,
  kek_provider text NOT NULL CHECK (kek_provider IN ('local', 'aws-kms')),
  kek_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  retired_at timestamptz,
  destroyed_at timestamptz,
  CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
CREATE UNIQUE INDEX keyring_one_primary ON alation_keys.keyring ((true)) WHERE state = 'primary';

CREATE TABLE alation_keys.encrypted_columns (
  table_schema text NOT NULL,
  table_name text NOT NULL,
  column_name text NOT NULL,
  key_columns text[] NOT NULL CHECK (cardinality(key_columns) > 0),
  storage text NOT NULL CHECK (storage IN ('bytea', 'text')),
  context text NOT NULL,
  added_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (table_schema, table_name, column_name)
);

CREATE TABLE alation_keys.jobs (
  id bigserial PRIMARY KEY,
  kind text NOT NULL,
  state text NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted')),
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  actor text NOT NULL,
  from_version integer,
  to_version integer,
  rows_total bigint,
  rows_done bigint NOT NULL DEFAULT 0,
  bytes_done bigint NOT NULL DEFAULT 0,
  detail jsonb NOT NULL DEFAULT '{}'::jsonb,
  error text,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_kind_started ON alation_keys.jobs (kind, started_at DESC);

CREATE TABLE alation_keys.settings (
  key text PRIMARY KEY,
  value jsonb NOT NULL
);
`,
  },
  {
    version: 2,
    name: 'column states, unique non-empty contexts',
    precheck: refuseAmbiguousContexts,
    sql: `
ALTER TABLE alation_keys.encrypted_columns
  ADD COLUMN state text NOT NULL DEFAULT 'encrypted'
    CONSTRAINT encrypted_columns_state_check CHECK (state IN ('encrypted', 'encrypting', 'decrypting', 'removed')),
  ADD CONSTRAINT encrypted_columns_context_not_empty CHECK (context <> '');
CREATE UNIQUE INDEX encrypted_columns_context_unique ON alation_keys.encrypted_columns (context);
`,
  },
];

export const LATEST_SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1].version;

const MIGRATION_LOCK = [0x414b4559, 2];

/** The schema version of the database: 0 when our schema does not exist. */
export async function schemaVersion(pool: Pool): Promise<number> {
  const r = await pool.query<{ exists: boolean }>(
    `SELECT to_regclass('alation_keys.schema_migrations') IS NOT NULL AS exists`,
  );
  if (!r.rows[0].exists) return 0;
  const v = await pool.query<{ v: number | null }>('SELECT max(version) AS v FROM alation_keys.schema_migrations');
  return v.rows[0].v ?? 0;
}

export function refuseNewerSchema(version: number): void {
  if (version > LATEST_SCHEMA_VERSION) {
    throw new PreconditionError(
      `the alation_keys schema is at version ${version}, newer than this binary knows (${LATEST_SCHEMA_VERSION})`,
      { hint: 'upgrade alation-keys to the version that migrated this database' },
    );
  }
}

/** Applies pending migrations; returns the versions applied (empty when up to date). */
export async function migrate(pool: Pool): Promise<number[]> {
  return withTransaction(pool, async (client) => {
    await client.query('SELECT pg_advisory_xact_lock($1, $2)', MIGRATION_LOCK);
    // CREATE SCHEMA IF NOT EXISTS would need CREATE on the database even when the schema exists.
    if (!(await requireSchemaOwnership(client, 'alation_keys'))) await client.query('CREATE SCHEMA alation_keys');
    await client.query(`CREATE TABLE IF NOT EXISTS alation_keys.schema_migrations (
      version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
    const r = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM alation_keys.schema_migrations');
    const current = r.rows[0].v ?? 0;
    refuseNewerSchema(current);
    const applied: number[] = [];
    for (const m of MIGRATIONS) {
      if (m.version <= current) continue;
      if (m.precheck) await m.precheck(client);
      await client.query(m.sql);
      await client.query('INSERT INTO alation_keys.schema_migrations (version, name) VALUES ($1, $2)', [m.version, m.name]);
      applied.push(m.version);
    }
    return applied;
  });
}

/** Throws exit 3 unless the schema exists and is exactly what this binary knows. */
export async function requireInitialised(pool: Pool): Promise<void> {
  const v = await schemaVersion(pool);
  if (v === 0) {
    throw new PreconditionError('this database is not initialised for alation-keys', { hint: 'run `alation-keys init` first' });
  }
  refuseNewerSchema(v);
  if (v < LATEST_SCHEMA_VERSION) {
    throw new PreconditionError(`the alation_keys schema is at version ${v}; this binary needs ${LATEST_SCHEMA_VERSION}`, {
      hint: 'run `alation-keys init` to migrate it',
    });
  }
}
