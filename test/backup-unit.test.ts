/** The pieces of `backup` that need no database: finding pg_dump, its environment, file housekeeping. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tempDir } from './support/fixtures';
import { findPgTool, majorName, parsePgToolVersion, pgToolEnv } from '../src/core/pg-tools';
import { checkBackupSpace, fileTimestamp, removeStalePartials } from '../src/core/backup';
import { copyTextField, parseDumpKeyring, parseDumpSettings } from '../src/core/backup-catalog';
import { resolveConnectionConfig } from '../src/db/connection';
import { PreconditionError } from '../src/errors';

let dir: string;
beforeAll(() => {
  dir = tempDir('backup-unit');
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function fakeTool(sub: string, tool: string, version: string): string {
  const d = path.join(dir, sub);
  fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(d, tool), `#!/bin/sh\necho "${tool} (PostgreSQL) ${version}"\n`, { mode: 0o755 });
  return d;
}

describe('pg_dump versions', () => {
  test('parses the version lines of old and new releases', () => {
    expect(parsePgToolVersion('pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)')).toEqual({ text: '15.20', num: 150020 });
    expect(parsePgToolVersion('pg_dump (PostgreSQL) 9.6.0')).toEqual({ text: '9.6.0', num: 90600 });
    expect(parsePgToolVersion('pg_dump (PostgreSQL) 17beta1')).toEqual({ text: '17', num: 170000 });
    expect(parsePgToolVersion('something else 15.2')).toBeUndefined();
    expect(majorName(150018)).toBe('15');
    expect(majorName(90624)).toBe('9.6');
  });

  test('only a too-old pg_dump around: exit 3 naming the version needed and what was found', () => {
    const old = fakeTool('old', 'pg_dump', '9.6.0');
    let err: unknown;
    try {
      findPgTool('pg_dump', { minVersionNum: 150018, minReason: 'the server is PostgreSQL 15.18', flag: '--pg-dump PATH', env: { PATH: old }, versionedDirs: () => [] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PreconditionError);
    expect((err as Error).message).toBe(`pg_dump 15 or newer is needed (the server is PostgreSQL 15.18); only found ${old}/pg_dump (9.6.0)`);
    expect((err as PreconditionError).hint).toMatch(/--pg-dump PATH/);
  });

  test('none at all: exit 3', () => {
    expect(() =>
      findPgTool('pg_dump', { minVersionNum: 150018, minReason: 'x', flag: '--pg-dump PATH', env: { PATH: path.join(dir, 'empty') }, versionedDirs: () => [] }),
    ).toThrow(/no pg_dump found on PATH/);
  });

  test('PATH first when new enough, else the closest per-version install', () => {
    const old = fakeTool('old2', 'pg_dump', '14.9');
    const onPath = fakeTool('path15', 'pg_dump', '15.3');
    const v16 = fakeTool('v16/bin', 'pg_dump', '16.1');
    const v17 = fakeTool('v17/bin', 'pg_dump', '17.0');
    const dirs = () => [
      { dir: v16, major: 1600 },
      { dir: v17, major: 1700 },
    ];
    const base = { minReason: 'x', flag: '--pg-dump PATH', versionedDirs: dirs };
    expect(findPgTool('pg_dump', { ...base, minVersionNum: 150000, env: { PATH: `${old}:${onPath}` } }).path).toBe(`${onPath}/pg_dump`);
    expect(findPgTool('pg_dump', { ...base, minVersionNum: 160002, env: { PATH: `${old}:${onPath}` } })).toMatchObject({
      path: `${v16}/pg_dump`,
      version: { text: '16.1' },
    });
    // An explicit path is the only one considered.
    expect(() => findPgTool('pg_dump', { ...base, explicit: `${old}/pg_dump`, minVersionNum: 150000, env: { PATH: onPath } })).toThrow(
      /is pg_dump 14\.9, but x: pg_dump 15 or newer is needed/,
    );
  });
});

describe('the environment pg_dump connects with', () => {
  test('a URL: every part in PG* variables, the password in PGPASSWORD', () => {
    const config = resolveConnectionConfig({
      databaseUrl: 'postgresql://alice:s%3Acret@db.example.com:6543/rosemeta?sslmode=verify-full&sslrootcert=/etc/ca.pem',
      env: {},
    });
    const env = pgToolEnv(config, { applicationName: 'alation-keys/backup', env: { PATH: '/bin', PGPASSWORD: 'stale' } });
    expect(env).toMatchObject({
      PGHOST: 'db.example.com',
      PGPORT: '6543',
      PGUSER: 'alice',
      PGPASSWORD: 's:cret',
      PGDATABASE: 'rosemeta',
      PGSSLMODE: 'verify-full',
      PGSSLROOTCERT: '/etc/ca.pem',
      PGAPPNAME: 'alation-keys/backup',
      PATH: '/bin',
    });
  });

  test('a unix socket in the URL, and the database the server reported', () => {
    const config = resolveConnectionConfig({ databaseUrl: 'postgresql://bob@%2Fvar%2Frun%2Fpostgresql/', env: {} });
    const env = pgToolEnv(config, { applicationName: 'a', database: 'rosemeta_prod', env: {} });
    expect(env).toMatchObject({ PGHOST: '/var/run/postgresql', PGUSER: 'bob', PGDATABASE: 'rosemeta_prod', PGPORT: '5432' });
    expect(env.PGPASSWORD).toBeUndefined();
  });

  test('no URL: the PG* variables pass through; node-pg defaults (TCP localhost) otherwise', () => {
    const config = resolveConnectionConfig({ env: { PGHOST: 'pg.internal', PGPASSWORD: 'pw' } });
    expect(pgToolEnv(config, { applicationName: 'a', env: { PGHOST: 'pg.internal', PGPASSWORD: 'pw', PGUSER: 'u' } })).toMatchObject({
      PGHOST: 'pg.internal',
      PGPASSWORD: 'pw',
      PGUSER: 'u',
      PGDATABASE: 'rosemeta',
    });
    expect(pgToolEnv(resolveConnectionConfig({ env: {} }), { applicationName: 'a', env: {} })).toMatchObject({ PGHOST: 'localhost', PGPORT: '5432' });
  });
});

describe('backup files', () => {
  test('stale unfinished backups (ours, untouched for a day) are removed; nothing else is', () => {
    const d = path.join(dir, 'stale');
    fs.mkdirSync(d);
    const old = new Date(Date.now() - 2 * 86_400_000);
    const names = {
      stale: '.rosemeta-20261101T000000Z.dump.partial',
      staleManifest: '.rosemeta-20261101T000000Z.dump.manifest.json.partial',
      fresh: '.rosemeta-20261130T000000Z.dump.partial',
      notOurs: '.something.partial',
      finished: 'rosemeta-20261101T000000Z.dump',
    };
    for (const n of Object.values(names)) fs.writeFileSync(path.join(d, n), 'x');
    const staleDir = path.join(d, '.rosemeta-20261102T000000Z.dump.partial');
    fs.mkdirSync(staleDir);
    fs.writeFileSync(path.join(staleDir, 'toc.dat'), 'x');
    for (const n of [names.stale, names.staleManifest, names.notOurs, names.finished, '.rosemeta-20261102T000000Z.dump.partial/toc.dat', '.rosemeta-20261102T000000Z.dump.partial']) {
      fs.utimesSync(path.join(d, n), old, old);
    }
    const removed = removeStalePartials(d).map((p) => path.basename(p)).sort();
    expect(removed).toEqual([names.staleManifest, names.stale, '.rosemeta-20261102T000000Z.dump.partial'].sort());
    expect(fs.readdirSync(d).sort()).toEqual([names.notOurs, names.fresh, names.finished].sort());
  });

  test('free space must cover the database size', () => {
    expect(() => checkBackupSpace('/b', 2000, 1999)).toThrow(PreconditionError);
    expect(() => checkBackupSpace('/b', 2000, 1999)).toThrow(/in \/b: 2\.0 kB free \(1999 bytes\), the database is 2\.0 kB \(2000 bytes\)/);
    expect(() => checkBackupSpace('/b', 2000, 2000)).not.toThrow();
  });

  test('file names carry the UTC time', () => {
    expect(fileTimestamp(new Date('2026-11-30T05:42:47.123Z'))).toBe('20261130T054247Z');
  });

  test('the keyring is read back from pg_restore output', () => {
    const sql = [
      'SET statement_timeout = 0;',
      'COPY alation_keys.keyring (version, state, wrapped_key, kek_provider, kek_id, created_at, retired_at, destroyed_at) FROM stdin;',
      '1\tretired\t\\\\x00ff10\tlocal\tmk_1\t2026-11-30 05:00:00+00\t2026-11-30 06:00:00+00\t\\N',
      '2\tprimary\t\\\\xabcd\tlocal\tmk_1\t2026-11-30 06:00:00+00\t\\N\t\\N',
      '3\tdestroyed\t\\N\tlocal\tmk_1\t2026-11-30 06:00:00+00\t\\N\t2026-11-30 07:00:00+00',
      '\\.',
      'COPY alation_keys.jobs (id) FROM stdin;',
      '9',
      '\\.',
    ].join('\n');
    expect(parseDumpKeyring(sql)).toEqual([
      { version: 1, state: 'retired', wrapped: Buffer.from('00ff10', 'hex'), kekProvider: 'local', kekId: 'mk_1' },
      { version: 2, state: 'primary', wrapped: Buffer.from('abcd', 'hex'), kekProvider: 'local', kekId: 'mk_1' },
      { version: 3, state: 'destroyed', wrapped: null, kekProvider: 'local', kekId: 'mk_1' },
    ]);
    expect(copyTextField('a\\tb\\\\c')).toBe('a\tb\\c');
    const settings = [
      'COPY alation_keys.settings (key, value) FROM stdin;',
      'installation_id\t"1b0c5f0e-0000-4000-8000-000000000001"',
      'kek_provider\t"aws-kms"',
      'aws\t{"region": "eu-west-1", "key_arn": "arn:aws:kms:eu-west-1:111122223333:key/abc", "role_arn": "r", "external_id": "e"}',
      '\\.',
    ].join('\n');
    expect(parseDumpSettings(settings)).toEqual({
      installation_id: '1b0c5f0e-0000-4000-8000-000000000001',
      kek_provider: 'aws-kms',
      aws: { region: 'eu-west-1', key_arn: 'arn:aws:kms:eu-west-1:111122223333:key/abc', role_arn: 'r', external_id: 'e' },
    });
    expect(copyTextField('\\N')).toBeNull();
  });
});
