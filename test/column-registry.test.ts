/**
 * The registry of encrypted columns (SPEC 4.2): schema version 2 (column states, unique
 * non-empty contexts), unambiguous default contexts, refused contexts, `removed` rows.
 */
import * as path from 'node:path';
import { initialise } from '../src/core/init';
import { openKeyring } from '../src/core/keyring-client';
import { MIGRATIONS } from '../src/db/migrations';
import { IntegrityError } from '../src/errors';
import { runCli, runCliJson } from './support/cli';
import { createTestDatabase, TestDatabase } from './support/db';
import { tempDir } from './support/fixtures';
import * as fs from 'node:fs';

/** A fresh database with a master key file path beside it, and the environment for the CLI. */
async function freshDatabase(label: string): Promise<{ db: TestDatabase; dir: string; env: NodeJS.ProcessEnv }> {
  const db = await createTestDatabase(label);
  const dir = tempDir(label);
  return { db, dir, env: { ALATION_KEYS_DATABASE_URL: db.url, ALATION_KEYS_MASTER_KEY_FILE: path.join(dir, 'master.key') } };
}

/** Leaves `db` as an older binary did: the alation_keys schema at version 1. */
async function schemaVersion1(db: TestDatabase): Promise<void> {
  await db.query('CREATE SCHEMA alation_keys');
  await db.query(`CREATE TABLE alation_keys.schema_migrations (
    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
  await db.query(MIGRATIONS[0].sql);
  await db.query(`INSERT INTO alation_keys.schema_migrations (version, name) VALUES (1, 'initial schema')`);
}

describe('migration to schema version 2', () => {
  let db: TestDatabase;
  let env: NodeJS.ProcessEnv;
  let dir: string;
  beforeAll(async () => {
    ({ db, dir, env } = await freshDatabase('registry_migrate'));
    await schemaVersion1(db);
    await db.query(`INSERT INTO alation_keys.encrypted_columns (table_schema, table_name, column_name, key_columns, storage, context) VALUES
      ('a.b', 'c', 'd', '{id}', 'text', 'a.b.c.d'),
      ('a', 'b.c', 'd', '{id}', 'text', 'a.b.c.d'),
      ('public', 't', 'x', '{id}', 'bytea', 'public.t.x')`);
  });
  afterAll(async () => {
    await db.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a database whose columns share a context is refused (exit 3) with one line naming them; nothing is migrated', async () => {
    const r = await runCli(['init'], { env });
    expect(r.code).toBe(3);
    const errorLines = r.stderr.split('\n').filter((l) => l.startsWith('error:'));
    expect(errorLines).toHaveLength(1);
    expect(errorLines[0]).toContain('context "a.b.c.d": a."b.c".d, "a.b".c.d');
    expect(r.stderr).not.toMatch(/\n\s+at /);
    const v = await db.query('SELECT max(version)::int AS v FROM alation_keys.schema_migrations');
    expect(v.rows[0].v).toBe(1);
  });

  test('once the duplicate is resolved, existing rows keep their contexts and become `encrypted`', async () => {
    await db.query(`UPDATE alation_keys.encrypted_columns SET context = 'a.b.c.d#2' WHERE table_schema = 'a'`);
    const r = await runCli(['init'], { env });
    expect(r.code).toBe(0);
    const rows = await db.query('SELECT table_schema, context, state FROM alation_keys.encrypted_columns ORDER BY table_schema');
    expect(rows.rows).toEqual([
      { table_schema: 'a', context: 'a.b.c.d#2', state: 'encrypted' },
      { table_schema: 'a.b', context: 'a.b.c.d', state: 'encrypted' },
      { table_schema: 'public', context: 'public.t.x', state: 'encrypted' },
    ]);
    // The database now enforces what the tool checks.
    await expect(db.query(`UPDATE alation_keys.encrypted_columns SET context = 'public.t.x' WHERE table_schema = 'a'`)).rejects.toThrow(/unique/);
    await expect(db.query(`UPDATE alation_keys.encrypted_columns SET context = '' WHERE table_schema = 'a'`)).rejects.toThrow(/context_not_empty/);
    await expect(db.query(`UPDATE alation_keys.encrypted_columns SET state = 'gone' WHERE table_schema = 'a'`)).rejects.toThrow(/state_check/);
    for (const state of ['encrypting', 'decrypting', 'removed', 'encrypted']) {
      await db.query(`UPDATE alation_keys.encrypted_columns SET state = $1 WHERE table_schema = 'a'`, [state]);
    }
  });

  test('an empty context in an old database is refused by the migration too', async () => {
    const other = await createTestDatabase('registry_empty');
    try {
      await schemaVersion1(other);
      await other.query(`INSERT INTO alation_keys.encrypted_columns (table_schema, table_name, column_name, key_columns, storage, context)
        VALUES ('public', 't', 'x', '{id}', 'bytea', '')`);
      const r = await runCli(['init'], { env: { ...env, ALATION_KEYS_DATABASE_URL: other.url } });
      expect(r.code).toBe(3);
      expect(r.stderr).toContain('empty context: public.t.x');
    } finally {
      await other.drop();
    }
  });
});

describe('contexts and removed columns', () => {
  let db: TestDatabase;
  let env: NodeJS.ProcessEnv;
  let dir: string;
  beforeAll(async () => {
    ({ db, dir, env } = await freshDatabase('registry'));
    await initialise(db.pool, { masterKeyFile: env.ALATION_KEYS_MASTER_KEY_FILE });
    await db.query(`CREATE SCHEMA "a.b"; CREATE TABLE "a.b".c (id int PRIMARY KEY, d text)`);
    await db.query(`CREATE SCHEMA a; CREATE TABLE a."b.c" (id int PRIMARY KEY, d text)`);
    await db.query(`CREATE TABLE public.t (id int PRIMARY KEY, "select" bytea, "Mixed Case" text, other text, spare text)`);
  });
  afterAll(async () => {
    await db.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('default contexts are the quoted names (as quote_ident quotes them), so "a.b".c.d and a."b.c".d differ', async () => {
    const one = await runCliJson(['columns', 'add', '"a.b".c.d'], { env });
    const two = await runCliJson(['columns', 'add', 'a."b.c".d'], { env });
    const kw = await runCliJson(['columns', 'add', 'public.t."select"'], { env });
    const mixed = await runCliJson(['columns', 'add', 'public.t."Mixed Case"'], { env });
    expect([one.code, two.code, kw.code, mixed.code]).toEqual([0, 0, 0, 0]);
    expect(one.json.column.context).toBe('"a.b".c.d');
    expect(two.json.column.context).toBe('a."b.c".d');
    expect(kw.json.column.context).toBe('public.t."select"');
    expect(mixed.json.column.context).toBe('public.t."Mixed Case"');
    expect(one.json.column.state).toBe('encrypted');
  });

  test('a value copied from "a.b".c.d to a."b.c".d fails to decrypt (integrity, exit 5)', async () => {
    const k = await openKeyring({ pool: db.pool, masterKeyFile: env.ALATION_KEYS_MASTER_KEY_FILE });
    try {
      const v = await k.encrypt('secret', '"a.b".c.d');
      await db.query(`INSERT INTO "a.b".c (id, d) VALUES (1, $1)`, [v]);
      await db.query(`INSERT INTO a."b.c" (id, d) SELECT id, d FROM "a.b".c`);
      const copied = (await db.query(`SELECT d FROM a."b.c" WHERE id = 1`)).rows[0].d;
      expect(await k.decrypt(copied, '"a.b".c.d')).toBe('secret');
      const err = await k.decrypt(copied, 'a."b.c".d').catch((e) => e);
      expect(err).toBeInstanceOf(IntegrityError);
      expect(err.exitCode).toBe(5);
    } finally {
      await k.close();
    }
  });

  test('an empty, foreign or colliding context is refused and nothing is registered', async () => {
    const empty = await runCli(['columns', 'add', 'public.t.other', '--context', ''], { env });
    expect(empty.code).toBe(2);
    expect(empty.stderr).toContain('--context must not be empty');
    const foreign = await runCli(['columns', 'add', 'public.t.other', '--context', '"a.b".c.d'], { env });
    expect(foreign.code).toBe(2);
    expect(foreign.stderr).toContain('context ""a.b".c.d" belongs to "a.b".c.d');
    // A column registered under another column's default name: that column's default collides.
    const taken = await runCli(['columns', 'add', 'public.t.other', '--context', 'public.t.spare'], { env });
    expect(taken.code).toBe(0);
    const colliding = await runCli(['columns', 'add', 'public.t.spare'], { env });
    expect(colliding.code).toBe(3);
    expect(colliding.stderr).toContain('context "public.t.spare" belongs to public.t.other');
    expect(colliding.stderr).toContain('--context');
    const list = await runCliJson(['columns', 'list'], { env });
    expect(list.json.columns.map((c: any) => c.column)).not.toContain('public.t.spare');
  });

  test('columns remove keeps the row as `removed`: not listed, written as plaintext by the library, its context not reusable; re-adding gets it back', async () => {
    const removed = await runCli(['columns', 'remove', 'public.t.other'], { env });
    expect(removed.code).toBe(0);
    const row = await db.query(`SELECT context, state FROM alation_keys.encrypted_columns WHERE column_name = 'other'`);
    expect(row.rows).toEqual([{ context: 'public.t.spare', state: 'removed' }]);
    const list = await runCliJson(['columns', 'list'], { env });
    expect(list.json.columns.map((c: any) => c.column)).not.toContain('public.t.other');
    const status = await runCliJson(['status', '--no-provider-check'], { env });
    expect(status.json.columns.map((c: any) => c.column)).not.toContain('public.t.other');
    const k = await openKeyring({ pool: db.pool, masterKeyFile: env.ALATION_KEYS_MASTER_KEY_FILE });
    try {
      // No longer encrypted by anyone (SPEC 4.2): an instance still calling the library keeps working.
      expect(await k.encrypt('x', 'public.t.other')).toBe('x');
      expect(await k.decrypt('x', 'public.t.other')).toBe('x');
    } finally {
      await k.close();
    }
    const reuse = await runCli(['columns', 'add', 'public.t.spare', '--context', 'public.t.spare'], { env });
    expect(reuse.code).toBe(2);
    expect(reuse.stderr).toContain('belongs to public.t.other (removed, kept as history)');
    const otherContext = await runCli(['columns', 'add', 'public.t.other', '--context', 'fresh'], { env });
    expect(otherContext.code).toBe(2);
    expect(otherContext.stderr).toContain('keeps it');
    const again = await runCliJson(['columns', 'add', 'public.t.other'], { env });
    expect(again.code).toBe(0);
    expect(again.json.column).toMatchObject({ context: 'public.t.spare', state: 'encrypted' });
  });

  test('a registered column whose type changed since registration: rotate exit 3 naming column and type; status flags it', async () => {
    await db.query(`ALTER TABLE public.t ALTER COLUMN "Mixed Case" TYPE integer USING NULL`);
    try {
      const r = await runCli(['rotate', '--skip-backup-check', '--settle-time', '0'], { env });
      expect(r.code).toBe(3);
      expect(r.stderr).toContain('registered column public.t."Mixed Case" was text at registration but is now of type integer');
      expect(r.stderr).not.toMatch(/\n\s+at /);
      const status = await runCliJson(['status', '--no-provider-check'], { env });
      expect(status.json.attention.join('\n')).toContain('public.t."Mixed Case" was text at registration but is now of type integer');
      expect((await db.query('SELECT count(*)::int AS n FROM alation_keys.keyring')).rows[0].n).toBe(1);
    } finally {
      await db.query(`ALTER TABLE public.t ALTER COLUMN "Mixed Case" TYPE text`);
    }
  });
});
