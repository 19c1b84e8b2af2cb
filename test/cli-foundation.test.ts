import * as fs from 'node:fs';
import * as path from 'node:path';
import { Client } from 'pg';
import { createTestDatabase, TestDatabase } from './support/db';
import { runCli, runCliJson, spawnCli } from './support/cli';
import { tempDir } from './support/fixtures';
import { openKeyring } from '../src/core/keyring-client';

describe('init, columns, status, jobs through the real binary', () => {
  let db: TestDatabase;
  let dir: string;
  let env: NodeJS.ProcessEnv;
  beforeAll(async () => {
    db = await createTestDatabase('cli_foundation');
    dir = tempDir('cli');
    env = { ALATION_KEYS_DATABASE_URL: db.url, ALATION_KEYS_MASTER_KEY_FILE: path.join(dir, 'master.key') };
  });
  afterAll(async () => {
    await db.drop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('commands before init exit 3 and say to run init', async () => {
    const r = await runCli(['status'], { env });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('alation-keys init');
    expect(r.stderr.trim().split('\n').length).toBeLessThanOrEqual(2);
  });

  test('init creates everything; a second init is a no-op', async () => {
    const first = await runCliJson(['init'], { env });
    expect(first.code).toBe(0);
    expect(first.json).toMatchObject({ masterKeyFileCreated: true, dataKeyCreated: 1, changed: true });
    expect(fs.statSync(env.ALATION_KEYS_MASTER_KEY_FILE!).mode & 0o777).toBe(0o600);
    const keyFile = fs.readFileSync(env.ALATION_KEYS_MASTER_KEY_FILE!, 'utf8');
    const second = await runCliJson(['init'], { env });
    expect(second.code).toBe(0);
    expect(second.json).toMatchObject({ changed: false, masterKeyFileCreated: false, dataKeyCreated: null, migrationsApplied: [] });
    expect(second.json.installationId).toBe(first.json.installationId);
    expect(fs.readFileSync(env.ALATION_KEYS_MASTER_KEY_FILE!, 'utf8')).toBe(keyFile);
    const keys = await db.query('SELECT version, state FROM alation_keys.keyring');
    expect(keys.rows).toEqual([{ version: 1, state: 'primary' }]);
    const plain = await runCli(['init'], { env });
    expect(plain.stdout).toContain('nothing to do');
  });

  test('columns add validates type, key and quoted mixed-case names', async () => {
    await db.query(`CREATE TABLE public."Vault" (id int PRIMARY KEY, "Secret" text, n int, blob bytea)`);
    await db.query(`CREATE TABLE public.nokey (id int, secret text)`);
    await db.query(`CREATE TABLE public.uniq (code text NOT NULL UNIQUE, secret bytea)`);
    const ok = await runCli(['columns', 'add', 'public."Vault"."Secret"'], { env });
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('public."Vault"."Secret"');
    expect((await runCli(['columns', 'add', 'public."Vault".blob'], { env })).code).toBe(0);
    const again = await runCli(['columns', 'add', 'public."Vault"."Secret"'], { env });
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('already registered');
    const wrongType = await runCli(['columns', 'add', 'public."Vault".n'], { env });
    expect(wrongType.code).toBe(2);
    expect(wrongType.stderr).toContain('type integer');
    const noKey = await runCli(['columns', 'add', 'public.nokey.secret'], { env });
    expect(noKey.code).toBe(2);
    expect(noKey.stderr).toContain('no primary key or unique not-null key');
    const folded = await runCli(['columns', 'add', 'public.Vault.Secret'], { env });
    expect(folded.code).toBe(2);
    expect(folded.stderr).toMatch(/public\.vault does not exist/);
    const uniq = await runCliJson(['columns', 'add', 'public.uniq.secret'], { env });
    expect(uniq.code).toBe(0);
    expect(uniq.json.column.key_columns).toEqual(['code']);
    const malformed = await runCli(['columns', 'add', 'public.only'], { env });
    expect(malformed.code).toBe(2);
    const list = await runCliJson(['columns', 'list'], { env });
    expect(list.json.columns.map((c: any) => c.column).sort()).toEqual(['public."Vault"."Secret"', 'public."Vault".blob', 'public.uniq.secret']);
    expect(list.json.columns.find((c: any) => c.column_name === 'Secret').context).toBe('public."Vault"."Secret"');
  });

  test('status --json counts values per DEK version per column from envelope headers', async () => {
    const k = await openKeyring({ connectionString: db.url, masterKeyFile: env.ALATION_KEYS_MASTER_KEY_FILE });
    for (let i = 1; i <= 25; i++) {
      await db.query(`INSERT INTO public."Vault" (id, "Secret", blob) VALUES ($1, $2, $3)`, [
        i,
        i % 5 === 0 ? null : await k.encrypt(`s${i}`, 'public."Vault"."Secret"'),
        await k.encrypt(Buffer.from([i]), 'public."Vault".blob'),
      ]);
    }
    await k.close();
    // A value under a DEK version the keyring does not know, written behind our back.
    await db.query(`INSERT INTO public.uniq (code, secret) VALUES ('x', '\\x414b010000000900000000000000000000000000000000000000000000000000000000'::bytea)`);
    const r = await runCliJson(['status', '--no-provider-check'], { env });
    expect(r.code).toBe(0);
    const byCol = Object.fromEntries(r.json.columns.map((c: any) => [c.column, c.versions]));
    expect(byCol['public."Vault"."Secret"']).toEqual({ '1': 20 });
    expect(byCol['public."Vault".blob']).toEqual({ '1': 25 });
    expect(byCol['public.uniq.secret']).toEqual({ '9': 1 });
    expect(r.json.keys[0]).toMatchObject({ version: 1, state: 'primary', values: 45 });
    expect(r.json.attention.join('\n')).toContain('data key v9');
    const check = await runCliJson(['status', '--check'], { env });
    expect(check.code).toBe(3);
    expect(check.json.attention.length).toBeGreaterThan(0);
    expect(r.json.headroom.requiredBytes).toBe(Math.ceil(r.json.headroom.databaseBytes * 1.5));
    await db.query(`DELETE FROM public.uniq`);
  });

  test('columns remove of a column holding values is refused (exit 3) without --force; with --force it needs confirmation', async () => {
    const refused = await runCli(['columns', 'remove', 'public."Vault".blob', '--yes'], { env });
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain('still holds 25 encrypted values');
    expect(refused.stderr).toContain('--force');
    const r = await runCli(['columns', 'remove', 'public."Vault".blob', '--force'], { env });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('holds 25 encrypted values');
    expect(r.stderr).toContain('--yes');
    expect((await runCliJson(['columns', 'list'], { env })).json.columns).toHaveLength(3);
    const yes = await runCli(['columns', 'remove', 'public."Vault".blob', '--force', '--yes'], { env });
    expect(yes.code).toBe(0);
    expect((await runCliJson(['columns', 'list'], { env })).json.columns).toHaveLength(2);
    expect((await runCli(['columns', 'add', 'public."Vault".blob'], { env })).code).toBe(0);
  });

  test('a master key file readable by others is refused with exit 4 and the fix', async () => {
    fs.chmodSync(env.ALATION_KEYS_MASTER_KEY_FILE!, 0o644);
    try {
      const r = await runCli(['status'], { env });
      expect(r.code).toBe(0); // status still reports, and flags it
      const check = await runCli(['status', '--check'], { env });
      expect(check.code).toBe(3);
      expect(check.stdout).toContain('readable by group or others');
      const init = await runCli(['init'], { env });
      expect(init.code).toBe(4);
      expect(init.stderr).toContain('readable by group or others (mode 0644)');
      expect(init.stderr).toContain(`chmod 600 ${env.ALATION_KEYS_MASTER_KEY_FILE}`);
      const lib = await openKeyring({ connectionString: db.url, masterKeyFile: env.ALATION_KEYS_MASTER_KEY_FILE }).catch((e) => e);
      expect(lib.exitCode).toBe(4);
      expect(lib.hint).toContain('chmod 600');
    } finally {
      fs.chmodSync(env.ALATION_KEYS_MASTER_KEY_FILE!, 0o600);
    }
  });

  test('init with another installation\'s master key file is refused with exit 4', async () => {
    const other = path.join(dir, 'other.key');
    const r0 = await runCli(['init'], { env: { ...env, ALATION_KEYS_DATABASE_URL: 'postgresql://127.0.0.1:1/x', ALATION_KEYS_MASTER_KEY_FILE: other } });
    expect(r0.code).toBe(1);
    expect(r0.stderr).toContain('cannot connect to the database');
    await require('../src/kms/master-key-file').createMasterKeyFile(other);
    const r = await runCli(['init', '--master-key-file', other], { env });
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/master key mk_[0-9a-f]+ \(wrapping data key v1\) is not in/);
  });

  test('a schema newer than the binary is refused with exit 3', async () => {
    await db.query(`INSERT INTO alation_keys.schema_migrations (version, name) VALUES (99, 'from the future')`);
    try {
      const r = await runCli(['status'], { env });
      expect(r.code).toBe(3);
      expect(r.stderr).toContain('newer than this binary');
      expect((await runCli(['init'], { env })).code).toBe(3);
    } finally {
      await db.query(`DELETE FROM alation_keys.schema_migrations WHERE version = 99`);
    }
  });

  test('bad usage exits 2 with one line and no stack trace; --verbose adds the trace', async () => {
    const unknown = await runCli(['status', '--frobnicate'], { env });
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown option '--frobnicate'");
    const badUrl = await runCli(['status', '--database-url', 'not a url'], { env });
    expect(badUrl.code).toBe(2);
    expect(badUrl.stderr).not.toMatch(/\n\s+at /);
    const badJob = await runCli(['jobs', 'show', 'abc'], { env });
    expect(badJob.code).toBe(2);
    const verbose = await runCli(['status', '--database-url', 'not a url', '--verbose'], { env });
    expect(verbose.stderr).toMatch(/\n\s+at /);
  });

  test('with --json every failure prints the error document on stdout, usage errors included', async () => {
    const cases: Array<[string[], number, RegExp]> = [
      [['status', '--frobnicate'], 2, /unknown option '--frobnicate'/],
      [['jobs', 'show'], 2, /missing required argument 'id'/],
      [['rotate', '--workers'], 2, /argument missing/],
      [['frobnicate'], 2, /unknown command 'frobnicate'/],
      [['jobs', 'show', 'abc'], 2, /job id must be a positive whole number/],
      [['status', '--database-url', 'not a url'], 2, /./],
    ];
    for (const [args, code, message] of cases) {
      for (const at of ['end', 'start']) {
        const argv = at === 'end' ? [...args, '--json'] : ['--json', ...args];
        const r = await runCli(argv, { env });
        expect({ argv, code: r.code }).toEqual({ argv, code });
        let doc: any;
        expect(() => (doc = JSON.parse(r.stdout))).not.toThrow();
        expect(doc.ok).toBe(false);
        expect(doc.error.message).toMatch(message);
        expect(doc.error.exitCode).toBe(code);
        expect(r.stderr).toMatch(/error: /);
      }
    }
    const help = await runCli(['status', '--help', '--json'], { env });
    expect(help.code).toBe(0);
  });

  test('connection precedence: flag over ALATION_KEYS_DATABASE_URL over PG*; application_name names the command', async () => {
    const u = new URL(db.url);
    // Flag wins over a broken env URL.
    const flag = await runCli(['keys', 'list', '--database-url', db.url], { env: { ...env, ALATION_KEYS_DATABASE_URL: 'postgresql://127.0.0.1:1/none' } });
    expect(flag.code).toBe(0);
    // PG* variables when no URL is given.
    const pgEnv = {
      ALATION_KEYS_DATABASE_URL: undefined,
      ALATION_KEYS_MASTER_KEY_FILE: env.ALATION_KEYS_MASTER_KEY_FILE,
      PGHOST: u.hostname,
      PGPORT: u.port,
      PGUSER: decodeURIComponent(u.username),
      PGPASSWORD: decodeURIComponent(u.password),
      PGDATABASE: db.name,
    };
    expect((await runCli(['keys', 'list'], { env: pgEnv })).code).toBe(0);
    // Without PGDATABASE the database is rosemeta.
    const noDb = await runCli(['keys', 'list'], { env: { ...pgEnv, PGDATABASE: undefined } });
    expect(noDb.stderr).toContain('"rosemeta" does not exist');
    expect(noDb.code).toBe(3);
    // application_name as seen by a DBA: hold a long status call via a lock and look.
    const locker = new Client({ connectionString: db.url });
    await locker.connect();
    await locker.query('BEGIN');
    await locker.query('LOCK TABLE alation_keys.jobs IN ACCESS EXCLUSIVE MODE');
    const child = spawnCli(['jobs', 'list'], { env });
    let seen: string[] = [];
    for (let i = 0; i < 50 && seen.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      const r = await db.query(`SELECT application_name FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE 'alation-keys/%'`, [db.name]);
      seen = r.rows.map((x) => x.application_name);
    }
    await locker.query('ROLLBACK');
    await locker.end();
    await new Promise((r) => child.on('close', r));
    expect(seen).toContain('alation-keys/jobs');
  });
});
