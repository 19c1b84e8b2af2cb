/**
 * The tool as a role that is not a superuser, created with exactly the statements of README
 * "Database privileges" (read from the README, so the two cannot drift), on a database where
 * PUBLIC was given nothing: init, columns add, status, rotate killed with kill -9 and resumed,
 * verify (and what it says of a column it may not read), backup. Then each privilege taken
 * away in turn: exit 3 naming it, never a raw SQL error.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool } from 'pg';
import { createTestDatabase, TestDatabase } from './support/db';
import { tempDir } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { FAST, keyringRows, spawnUntil } from './support/rotate-helpers';
import { testWithPgDump } from './support/pg-dump';
import { openKeyring, Keyring } from '../src/core/keyring-client';
import { createRosemetaTables, generateRosemeta, ROSEMETA_COLUMNS, RosemetaShape, verifyRosemeta } from '../scripts/lib/rosemeta';

const README = fs.readFileSync(path.resolve(__dirname, '../README.md'), 'utf8');
const ROLE = `ak_lp_${randomBytes(4).toString('hex')}`;
const PASSWORD = randomBytes(12).toString('hex');

/** The SQL statements of each ```sql block of README "Database privileges", psql meta-commands left out. */
function readmeStatements(): string[][] {
  const section = README.split(/^## Database privileges$/m)[1]?.split(/^## /m)[0];
  if (!section) throw new Error('README has no "Database privileges" section');
  return [...section.matchAll(/```sql\n([\s\S]*?)```/g)].map((m) =>
    m[1]
      .split('\n')
      .filter((l) => l.trim() && !l.trim().startsWith('--') && !l.trim().startsWith('\\'))
      .join('\n')
      .split(/;\s*$/m)
      .map((s) => s.trim())
      .filter(Boolean),
  );
}

let db: TestDatabase;
let dir: string;
let masterKeyFile: string;
let keyring: Keyring;
let shape: RosemetaShape;
let serverNum: number;
let statements: string[];
let env: NodeJS.ProcessEnv;

/** A README statement for this database and role. */
function forTest(sql: string): string {
  return sql.replace(/\balation_keys_admin\b/g, ROLE).replace(/\brosemeta\b/g, db.name);
}

beforeAll(async () => {
  db = await createTestDatabase('leastpriv');
  serverNum = Number((await db.query(`SELECT current_setting('server_version_num') AS v`)).rows[0].v);
  // A careful DBA's database: PUBLIC may not even connect, and owns nothing in schema public.
  await db.query(`REVOKE ALL ON DATABASE ${db.name} FROM PUBLIC; REVOKE ALL ON SCHEMA public FROM PUBLIC`);
  await createRosemetaTables(db.pool);
  // A table without encrypted columns (and its sequence): pg_dump reads it too.
  await db.query('CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, note text)');
  const [main, v17] = readmeStatements();
  expect(main[0]).toMatch(/^CREATE ROLE alation_keys_admin LOGIN$/);
  statements = [...main, ...(serverNum >= 170000 ? v17 : [])];
  for (const s of statements) await db.query(forTest(s));
  // What `\password` does in psql.
  await db.query(`ALTER ROLE ${ROLE} PASSWORD '${PASSWORD}'`);
  dir = tempDir('leastpriv');
  masterKeyFile = path.join(dir, 'master.key');
  const url = new URL(db.url);
  url.username = ROLE;
  url.password = PASSWORD;
  env = { ALATION_KEYS_DATABASE_URL: url.toString(), ALATION_KEYS_MASTER_KEY_FILE: masterKeyFile };
});

afterAll(async () => {
  await keyring?.close();
  await db?.drop();
  const c = new Pool({ connectionString: db.url.replace(/\/[^/]*$/, '/postgres'), max: 1 });
  await c.query(`DROP ROLE IF EXISTS ${ROLE}`).catch(() => undefined);
  await c.end();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('the role is not a superuser and has nothing beyond the README statements', async () => {
  const r = await db.query(`SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = $1`, [ROLE]);
  expect(r.rows[0]).toEqual({ rolsuper: false, rolcreatedb: false, rolcreaterole: false });
  expect(statements.length).toBeGreaterThanOrEqual(8);
});

test('init and columns add as the role; status measures the headroom (pg_read_all_settings)', async () => {
  const init = await runCli(['init'], { env });
  expect([init.code, init.stderr]).toEqual([0, expect.any(String)]);
  for (const c of ROSEMETA_COLUMNS) {
    const add = await runCli(['columns', 'add', c], { env });
    expect([add.code, add.stderr]).toEqual([0, expect.any(String)]);
  }
  // The application writes its values (as the tables' owner).
  keyring = await openKeyring({ pool: db.pool, masterKeyFile, refreshSeconds: 1 });
  shape = await generateRosemeta(db.pool, keyring, { totalValues: 600 });
  const status = await runCliJson(['status', '--no-provider-check'], { env });
  expect(status.code).toBe(0);
  expect(status.json.headroom).toMatchObject({ freeBytesSource: 'data-directory', ok: true });
});

test('rotate as the role, killed with kill -9 mid-column, then resumed: every value under the new key', async () => {
  const run = spawnUntil(['rotate', ...FAST, '--batch-size', '50'], 'ALATION_KEYS_TEST_PAUSED mid-column', {
    env: { ...env, ALATION_KEYS_TEST_PAUSE_AT: 'mid-column' },
  });
  await run.seen;
  run.child.kill('SIGKILL');
  await run.exited;
  const again = await runCliJson(['rotate', ...FAST], { env });
  expect([again.code, again.stderr]).toEqual([0, expect.stringMatching(/resuming job \d+ \(v1→v2\)/)]);
  expect(again.json.toVersion).toBe(2);
  // VACUUM needs MAINTAIN (PostgreSQL 17+) or ownership: before 17 the documented fallback warns.
  if (serverNum >= 170000) expect(again.stderr).not.toMatch(/not allowed to VACUUM/);
  else expect(again.stderr).toMatch(/not allowed to VACUUM "public"\."blobs", "public"\."credentials", "public"\."documents" \(run as the table owner\)/);
  await keyring.refresh();
  const report = await verifyRosemeta(db.pool, keyring, shape);
  expect(report.mismatched).toEqual([]);
  expect(report.missing).toEqual([]);
  for (const perVersion of Object.values(report.versions)) expect(Object.keys(perVersion)).toEqual(['2']);
  expect((await keyringRows(db.pool)).map((k) => k.version)).toEqual([1, 2]);
});

test('verify as the role: every value decrypts, and the unregistered columns are looked at with the SELECT the backup grant gives', async () => {
  const r = await runCliJson(['verify'], { env });
  expect([r.code, r.stderr]).toEqual([0, expect.any(String)]);
  expect(r.json).toMatchObject({ ok: true, failed: 0, verified: r.json.values });
  expect(r.json.values).toBeGreaterThan(500);
  // credentials.name, documents.title, blobs.kind and audit_log.note.
  expect(r.json.unregistered).toMatchObject({ columnsScanned: 4, found: [], unreadable: [] });
});

test('verify as the role without SELECT on an unregistered table: says which column it could not look at, exit 0', async () => {
  await db.query(forTest('REVOKE SELECT ON public.audit_log FROM alation_keys_admin'));
  try {
    const r = await runCli(['verify'], { env });
    expect([r.code, r.stderr]).toEqual([0, expect.not.stringMatching(/permission denied|\n\s+at /)]);
    expect(r.stdout).toMatch(/unregistered text\/bytea columns: 3 looked at, at most 10,000 values each/);
    expect(r.stdout).toContain(`not looked at: public.audit_log.note: the role lacks SELECT on table public.audit_log (GRANT SELECT ON public.audit_log TO ${ROLE})`);
  } finally {
    await db.query(forTest('GRANT SELECT ON ALL TABLES IN SCHEMA public TO alation_keys_admin'));
  }
});

testWithPgDump('backup as the role: pg_dump reads everything with the granted privileges; the backup verifies', async () => {
  const out = path.join(dir, 'backups');
  const b = await runCliJson(['backup', '--out', out], { env });
  expect([b.code, b.stderr]).toEqual([0, expect.any(String)]);
  const v = await runCli(['backup', 'verify', b.json.file], { env });
  expect([v.code, v.stderr]).toEqual([0, expect.any(String)]);
});

describe('each privilege taken away in turn: exit 3 naming it, nothing changed', () => {
  /** backup: pg_dump reads every table and every sequence of the schema (one README statement each). */
  const dumpCase = (all: 'TABLES' | 'SEQUENCES', revoked: string, missing: string) => {
    const grant = `GRANT SELECT ON ALL ${all} IN SCHEMA public TO alation_keys_admin`;
    return {
      privilege: `SELECT on every ${all === 'TABLES' ? 'table' : 'sequence'} (backup)`,
      covers: grant,
      take: `REVOKE SELECT ON ${revoked} FROM alation_keys_admin`,
      give: grant,
      args: ['backup', '--out', '/nonexistent/never-written'],
      expected: new RegExp(`lacks SELECT on ${missing.replace(/\./g, '\\.')}, needed for pg_dump`),
    };
  };
  // `covers`: the README statement whose privilege the case takes away.
  const cases: Array<{ privilege: string; covers: string; take: string; give: string; args: string[]; expected: RegExp }> = [
    {
      privilege: 'CONNECT',
      covers: 'GRANT CONNECT, TEMPORARY ON DATABASE rosemeta TO alation_keys_admin',
      take: 'REVOKE CONNECT ON DATABASE rosemeta FROM alation_keys_admin',
      give: 'GRANT CONNECT ON DATABASE rosemeta TO alation_keys_admin',
      args: ['status', '--no-provider-check'],
      expected: /lacks CONNECT on database/,
    },
    {
      privilege: 'TEMPORARY',
      covers: 'GRANT CONNECT, TEMPORARY ON DATABASE rosemeta TO alation_keys_admin',
      take: 'REVOKE TEMPORARY ON DATABASE rosemeta FROM alation_keys_admin',
      give: 'GRANT TEMPORARY ON DATABASE rosemeta TO alation_keys_admin',
      args: ['rotate', ...FAST],
      expected: /lacks TEMPORARY on database \w+, needed to stage/,
    },
    {
      privilege: 'ownership of the alation_keys schema',
      covers: 'CREATE SCHEMA alation_keys AUTHORIZATION alation_keys_admin',
      take: 'ALTER SCHEMA alation_keys OWNER TO CURRENT_USER',
      give: 'ALTER SCHEMA alation_keys OWNER TO alation_keys_admin',
      args: ['init'],
      expected: /lacks ownership of schema alation_keys/,
    },
    {
      privilege: 'USAGE on schema public',
      covers: 'GRANT USAGE ON SCHEMA public TO alation_keys_admin',
      take: 'REVOKE USAGE ON SCHEMA public FROM alation_keys_admin',
      give: 'GRANT USAGE ON SCHEMA public TO alation_keys_admin',
      args: ['rotate', ...FAST],
      expected: /lacks USAGE on schema public, needed to re-encrypt/,
    },
    {
      privilege: 'UPDATE on the registered tables',
      covers: 'GRANT SELECT, UPDATE ON public.credentials, public.documents, public.blobs TO alation_keys_admin',
      take: 'REVOKE UPDATE ON public.credentials, public.documents, public.blobs FROM alation_keys_admin',
      give: 'GRANT SELECT, UPDATE ON public.credentials, public.documents, public.blobs TO alation_keys_admin',
      args: ['rotate', ...FAST],
      expected: /lacks UPDATE on table public\.blobs, UPDATE on table public\.credentials, UPDATE on table public\.documents, needed to re-encrypt/,
    },
    {
      privilege: 'SELECT on the registered tables (rotate --dry-run)',
      covers: 'GRANT SELECT, UPDATE ON public.credentials, public.documents, public.blobs TO alation_keys_admin',
      take: 'REVOKE SELECT ON public.credentials FROM alation_keys_admin',
      give: 'GRANT SELECT ON public.credentials TO alation_keys_admin',
      args: ['rotate', '--dry-run'],
      expected: /lacks SELECT on table public\.credentials, needed to count and sample/,
    },
    {
      privilege: 'SELECT on the registered tables (verify)',
      covers: 'GRANT SELECT, UPDATE ON public.credentials, public.documents, public.blobs TO alation_keys_admin',
      take: 'REVOKE SELECT ON public.documents FROM alation_keys_admin',
      give: 'GRANT SELECT ON public.documents TO alation_keys_admin',
      args: ['verify'],
      expected: /lacks SELECT on table public\.documents, needed to read and decrypt the registered columns/,
    },
    dumpCase('TABLES', 'public.audit_log', 'table public.audit_log'),
    dumpCase('SEQUENCES', 'ALL SEQUENCES IN SCHEMA public', 'sequence public.audit_log_id_seq'),
    {
      privilege: 'pg_read_all_settings (the headroom check)',
      covers: 'GRANT pg_read_all_settings TO alation_keys_admin',
      take: 'REVOKE pg_read_all_settings FROM alation_keys_admin',
      give: 'GRANT pg_read_all_settings TO alation_keys_admin',
      args: ['rotate', ...FAST],
      expected: /disk headroom is unknown: cannot see the data directory: .*needs pg_read_all_settings.*--free-space BYTES/,
    },
  ];

  test('every privilege the README grants is taken away by a case here', () => {
    const covered = new Set(cases.map((c) => c.covers));
    const granted = readmeStatements()[0].filter((x) => !/^CREATE ROLE /.test(x));
    expect(granted.filter((x) => !covered.has(x))).toEqual([]);
  });

  test.each(cases)('without $privilege', async ({ take, give, args, expected }) => {
    const keysBefore = (await keyringRows(db.pool)).length;
    await db.query(forTest(take));
    try {
      const r = await runCli(args, { env });
      expect([r.code, r.stderr]).toEqual([3, expect.stringMatching(expected)]);
      expect(r.stderr).not.toMatch(/\n\s+at /);
      expect(r.stderr).toMatch(/hint: .*(GRANT|ALTER|--free-space)/);
    } finally {
      await db.query(forTest(give));
    }
    expect((await keyringRows(db.pool)).length).toBe(keysBefore);
  });
});
