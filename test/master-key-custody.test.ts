/**
 * The master key file through the real binary (SPEC 2.1): malformed files are exit 4 with one
 * line, a symbolic link survives a rotation, and two rotations of two databases sharing one
 * file (their rewrites made to overlap) never lose an appended key.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openKeyring } from '../src/core/keyring-client';
import { readMasterKeyFile } from '../src/kms/master-key-file';
import { verifyRosemeta } from '../scripts/lib/rosemeta';
import { runCli } from './support/cli';
import { createInstallation, Installation } from './support/fixtures';
import { FAST, spawnUntil } from './support/rotate-helpers';

describe('a malformed master key file is exit 4 with a one-line reason', () => {
  let inst: Installation;
  let good: string;
  beforeAll(async () => {
    inst = await createInstallation('mk_malformed');
    good = fs.readFileSync(inst.masterKeyFile, 'utf8');
  });
  afterAll(async () => {
    fs.writeFileSync(inst.masterKeyFile, good, { mode: 0o600 });
    await inst.cleanup();
  });

  const key = (over: Record<string, unknown> = {}) => ({ id: 'mk_0000aaaa', created_at: '2026-11-30T04:35:19Z', material: Buffer.alloc(32, 7).toString('base64'), ...over });
  const doc = (keys: unknown, over: Record<string, unknown> = {}) => JSON.stringify({ format: 'alation-keys/master-key', version: 1, keys, ...over });
  const shapes: Array<[string, string, string]> = [
    ['null', 'null', 'not a JSON object'],
    ['a null key', doc([null]), 'key 0 is not an object'],
    ['an empty file', '', 'it is empty'],
    ['not JSON', '{"format": "alation-keys/master-key",', 'not JSON'],
    ['a wrong format string', doc([key()], { format: 'something-else' }), 'format is not "alation-keys/master-key"'],
    ['an unknown version', doc([key()], { version: 2 }), 'unsupported version 2'],
    ['no keys', JSON.stringify({ format: 'alation-keys/master-key', version: 1 }), 'no "keys" array'],
    ['keys that are not an array', doc({ a: 1 }), '"keys" is not an array'],
    ['an empty key list', doc([]), '"keys" is empty'],
    ['bad base64', doc([key({ material: '!!!not base64!!!' })]), "key mk_0000aaaa's material is not base64"],
    ['a 16-byte key', doc([key({ material: Buffer.alloc(16, 1).toString('base64') })]), "key mk_0000aaaa's material is not 32 bytes of base64"],
    ['duplicate ids', doc([key(), key({ material: Buffer.alloc(32, 9).toString('base64') })]), 'key id mk_0000aaaa appears twice'],
    ['a key without id', doc([key({ id: undefined })]), 'key 0 has no id'],
    ['a key without material', doc([key({ material: 42 })]), 'key mk_0000aaaa has no material'],
    ['an array', '[]', 'not a JSON object'],
  ];

  test.each(shapes)('%s', async (_what, content, reason) => {
    fs.writeFileSync(inst.masterKeyFile, content, { mode: 0o600 });
    const r = await runCli(['init'], { env: inst.env });
    expect(r.code).toBe(4);
    const errors = r.stderr.split('\n').filter((l) => l.startsWith('error:'));
    expect(errors).toEqual([`error: master key file ${inst.masterKeyFile} is not valid: ${reason}`]);
    expect(r.stderr).not.toMatch(/TypeError|\n\s+at /);
    expect(r.stderr).not.toContain(Buffer.alloc(32, 7).toString('base64'));
  });
});

describe('a symbolic link as master key file', () => {
  let inst: Installation;
  let real: string;
  beforeAll(async () => {
    inst = await createInstallation('mk_symlink', { values: 60 });
    // The real file lives on a "secrets mount"; the configured path is a link to it.
    const mount = path.join(inst.dir, 'secrets');
    fs.mkdirSync(mount, { mode: 0o700 });
    real = path.join(mount, 'master.key');
    fs.renameSync(inst.masterKeyFile, real);
    fs.symlinkSync(real, inst.masterKeyFile);
  });
  afterAll(async () => {
    await inst.cleanup();
  });

  test('after rotate the link is still a link, the target holds the new key, and the library decrypts on either path', async () => {
    const before = readMasterKeyFile(real).keys.map((k) => k.id);
    // Left by a rewrite killed before its rename: key material that must not stay on disk.
    const stale = path.join(path.dirname(real), '.master.key.999999.deadbeef.tmp');
    fs.copyFileSync(real, stale);
    const r = await runCli(['rotate', ...FAST], { env: inst.env });
    expect([r.code, r.stderr]).toEqual([0, expect.any(String)]);
    expect(fs.lstatSync(inst.masterKeyFile).isSymbolicLink()).toBe(true);
    expect(fs.readlinkSync(inst.masterKeyFile)).toBe(real);
    const after = readMasterKeyFile(real);
    expect(after.keys.map((k) => k.id).slice(0, before.length)).toEqual(before);
    expect(after.keys).toHaveLength(before.length + 1);
    expect(fs.statSync(real).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(path.dirname(real)).filter((n) => n.endsWith('.tmp'))).toEqual([]);
    const kek = (await inst.db.query(`SELECT DISTINCT kek_id FROM alation_keys.keyring WHERE state <> 'destroyed'`)).rows;
    expect(kek).toEqual([{ kek_id: after.keys[after.keys.length - 1].id }]);
    for (const file of [inst.masterKeyFile, real]) {
      const k = await openKeyring({ pool: inst.db.pool, masterKeyFile: file });
      try {
        const report = await verifyRosemeta(inst.db.pool, k, inst.shape!);
        expect(report.mismatched).toEqual([]);
        expect(report.checked).toBeGreaterThan(0);
      } finally {
        await k.close();
      }
    }
  }, 900_000);
});

describe('two databases sharing one master key file', () => {
  let a: Installation;
  let b: Installation;
  beforeAll(async () => {
    a = await createInstallation('mk_shared_a', { values: 30 });
    b = await createInstallation('mk_shared_b', { values: 30, masterKeyFile: a.masterKeyFile });
  });
  afterAll(async () => {
    await b?.cleanup();
    await a?.cleanup();
  });

  test('rotated at the same moment, 10 times: both exit 0, the file keeps every appended key, every value decrypts', async () => {
    // Both commands wait before the lock until released together; then each holds its rewrite
    // window (re-read → rename) open for 1 s. Without the lock both would re-read the same
    // file and the second rename would drop the first one's key.
    const hooks = { ALATION_KEYS_TEST_PAUSE_AT: 'master-key-lock', ALATION_KEYS_TEST_MASTER_KEY_REWRITE_MS: '1000' };
    for (let round = 1; round <= 10; round++) {
      const runs = [a, b].map((inst) => spawnUntil(['rotate', ...FAST], 'ALATION_KEYS_TEST_PAUSED master-key-lock', { env: { ...inst.env, ...hooks } }));
      await Promise.all(runs.map((r) => r.seen));
      for (const r of runs) r.child.kill('SIGUSR2');
      const results = await Promise.all(runs.map((r) => r.exited));
      expect(results.map((r) => [r.code, r.stderr.includes('error')])).toEqual([
        [0, false],
        [0, false],
      ]);
      const ids = readMasterKeyFile(a.masterKeyFile).keys.map((k) => k.id);
      expect(ids).toHaveLength(1 + 2 * round);
      for (const inst of [a, b]) {
        const kek = (await inst.db.query(`SELECT kek_id FROM alation_keys.keyring WHERE state = 'primary'`)).rows[0].kek_id;
        expect(ids).toContain(kek);
      }
    }
    for (const inst of [a, b]) {
      const k = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile });
      try {
        const report = await verifyRosemeta(inst.db.pool, k, inst.shape!);
        expect(report.mismatched).toEqual([]);
        expect(report.missing).toEqual([]);
        expect(Object.keys(report.versions[Object.keys(report.versions)[0]])).toEqual(['11']);
      } finally {
        await k.close();
      }
    }
  }, 900_000);
});
