/**
 * Every directory the tool creates is checked first and fails with exit 3 naming the path:
 * nothing spins (Node's recursive mkdir loops forever on ENOENT under /proc), a file where a
 * directory should be is called a file, not a bare EEXIST. Through the built binary.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInstallation, Installation, tempDir } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { createTestDatabase } from './support/db';
import { ensureDirectory } from '../src/files/directory';
import { PreconditionError } from '../src/errors';

let inst: Installation;

beforeAll(async () => {
  inst = await createInstallation('directories');
});

afterAll(async () => {
  await inst?.cleanup();
});

// The old code never returned from its mkdir: a run that is still going after this long is the hang.
const HANG = { timeoutMs: 20_000 };

describe('backup --out', () => {
  test('a directory under /proc fails at once with exit 3 naming it', async () => {
    const r = await runCli(['backup', '--out', '/proc/nope'], { env: inst.env, ...HANG });
    expect(r.signal).toBeNull();
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^error: cannot use \/proc\/nope as the backup directory: .*\/proc.*refused to create \/proc\/nope/m);
    expect(r.stderr).toMatch(/hint: pass --out DIR/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  test('--json gets the error document', async () => {
    const r = await runCliJson(['backup', '--out', '/proc/nope/deeper'], { env: inst.env, ...HANG });
    expect(r.code).toBe(3);
    expect(r.json).toMatchObject({ ok: false, error: { exitCode: 3, message: expect.stringContaining('/proc/nope') } });
  });

  test('a file is called a file, not EEXIST', async () => {
    const r = await runCli(['backup', '--out', '/etc/hostname'], { env: inst.env, ...HANG });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/cannot use \/etc\/hostname as the backup directory: it is a file, not a directory/);
    expect(r.stderr).not.toMatch(/EEXIST/);
  });

  test('a file in the middle of the path is named', async () => {
    const dir = tempDir('dir-file');
    try {
      fs.writeFileSync(path.join(dir, 'plain'), 'x');
      const r = await runCli(['backup', '--out', path.join(dir, 'plain', 'backups')], { env: inst.env, ...HANG });
      expect(r.code).toBe(3);
      expect(r.stderr).toContain(`${path.join(dir, 'plain')} is a file, not a directory`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('init with a master key file under /proc fails with exit 3 naming the directory', async () => {
  const db = await createTestDatabase('directories-init');
  try {
    const r = await runCli(['init'], {
      env: { ALATION_KEYS_DATABASE_URL: db.url, ALATION_KEYS_MASTER_KEY_FILE: '/proc/nope/master.key' },
      ...HANG,
    });
    expect(r.signal).toBeNull();
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/cannot use \/proc\/nope as the directory of the master key file/);
  } finally {
    await db.drop();
  }
});

describe('ensureDirectory', () => {
  test('makes missing parents with the mode, accepts existing ones and links to directories', () => {
    const dir = tempDir('ensure');
    try {
      const target = path.join(dir, 'a', 'b', 'c');
      ensureDirectory(target, 0o700, { what: 'test directory', hint: 'x' });
      expect(fs.statSync(target).isDirectory()).toBe(true);
      expect(fs.statSync(path.join(dir, 'a')).mode & 0o777).toBe(0o700);
      fs.symlinkSync(path.join(dir, 'a'), path.join(dir, 'link'));
      ensureDirectory(path.join(dir, 'link', 'b', 'd'), 0o700, { what: 'test directory', hint: 'x' });
      expect(fs.statSync(path.join(dir, 'a', 'b', 'd')).isDirectory()).toBe(true);
      ensureDirectory(target, 0o700, { what: 'test directory', hint: 'x' });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a path under /proc is a PreconditionError, not a loop', () => {
    expect(() => ensureDirectory('/proc/nope/x', 0o700, { what: 'test directory', hint: 'x' })).toThrow(PreconditionError);
  });
});
