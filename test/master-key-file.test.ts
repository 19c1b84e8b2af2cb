import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProviderError } from '../src/errors';
import { appendMasterKey, createMasterKeyFile, currentMasterKey, newMasterKey, readMasterKeyFile } from '../src/kms/master-key-file';
import { tempDir } from './support/fixtures';

describe('master key file', () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir('mkf');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('is created with mode 0600 in the documented format', async () => {
    const file = path.join(dir, 'sub', 'master.key');
    const created = await createMasterKeyFile(file);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(doc.format).toBe('alation-keys/master-key');
    expect(doc.version).toBe(1);
    expect(doc.keys).toHaveLength(1);
    expect(doc.keys[0].id).toMatch(/^mk_[0-9a-f]{8}$/);
    expect(Buffer.from(doc.keys[0].material, 'base64')).toHaveLength(32);
    expect(doc.keys[0].created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(readMasterKeyFile(file).keys[0].material.equals(created.keys[0].material)).toBe(true);
    expect(fs.readdirSync(path.dirname(file))).toEqual(['master.key']);
  });

  test('is never created through a link, not even a dangling one', async () => {
    const file = path.join(dir, 'master.key');
    const elsewhere = path.join(dir, 'elsewhere.key');
    fs.symlinkSync(elsewhere, file);
    await expect(createMasterKeyFile(file)).rejects.toThrow(/already exists/);
    expect(fs.existsSync(elsewhere)).toBe(false);
  });

  test('an append is atomic, keeps mode 0600 and earlier keys, leaves no temporary file and removes stale ones', async () => {
    const file = path.join(dir, 'master.key');
    const created = await createMasterKeyFile(file);
    const inode = fs.statSync(file).ino;
    // What a rewrite killed between writing its temp file and renaming it leaves behind.
    const stale = path.join(dir, '.master.key.4242.0badcafe.tmp');
    fs.writeFileSync(stale, fs.readFileSync(file), { mode: 0o600 });
    const unrelated = path.join(dir, '.other.key.4242.0badcafe.tmp');
    fs.writeFileSync(unrelated, 'x');
    const mk = newMasterKey();
    const back = await appendMasterKey(file, mk);
    expect(currentMasterKey(back).id).toBe(mk.id);
    const again = readMasterKeyFile(file);
    expect(again.keys.map((k) => k.id)).toEqual([created.keys[0].id, mk.id]);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(file).ino).not.toBe(inode); // renamed over, not edited in place
    expect(fs.readdirSync(dir).sort()).toEqual(['.other.key.4242.0badcafe.tmp', 'master.key']);
  });

  test('through a symbolic link the target is rewritten in its own directory and the link stays a link', async () => {
    const secrets = path.join(dir, 'secrets');
    fs.mkdirSync(secrets, { mode: 0o700 });
    const real = path.join(secrets, 'real.key');
    await createMasterKeyFile(real);
    const link = path.join(dir, 'master.key');
    fs.symlinkSync(path.join('secrets', 'real.key'), link);
    const mk = newMasterKey();
    await appendMasterKey(link, mk);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readlinkSync(link)).toBe(path.join('secrets', 'real.key'));
    expect(currentMasterKey(readMasterKeyFile(real)).id).toBe(mk.id);
    expect(fs.readdirSync(dir).sort()).toEqual(['master.key', 'secrets']);
    expect(fs.readdirSync(secrets).sort()).toEqual(['real.key']);
  });

  test('appends that overlap never lose a key (the lock serialises re-read, append, rename)', async () => {
    const file = path.join(dir, 'master.key');
    const created = await createMasterKeyFile(file);
    const keys = Array.from({ length: 6 }, () => newMasterKey());
    let inWindow = 0;
    let maxInWindow = 0;
    const hooks = {
      inRewriteWindow: async () => {
        inWindow++;
        maxInWindow = Math.max(maxInWindow, inWindow);
        await new Promise((r) => setTimeout(r, 30));
        inWindow--;
      },
    };
    await Promise.all(keys.map((k) => appendMasterKey(file, k, hooks)));
    expect(maxInWindow).toBe(1);
    expect(readMasterKeyFile(file).keys.map((k) => k.id).sort()).toEqual([created.keys[0].id, ...keys.map((k) => k.id)].sort());
  });

  test.each([0o644, 0o640, 0o604])('mode %o is refused with a message naming the fix', async (mode) => {
    const file = path.join(dir, 'master.key');
    await createMasterKeyFile(file);
    fs.chmodSync(file, mode);
    let err: unknown;
    try {
      readMasterKeyFile(file);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ProviderError);
    expect((err as ProviderError).exitCode).toBe(4);
    expect((err as ProviderError).message).toContain('readable by group or others');
    expect((err as ProviderError).hint).toBe(`run: chmod 600 ${file}`);
  });

  test('a malformed file is refused without echoing its content', () => {
    const file = path.join(dir, 'master.key');
    fs.writeFileSync(file, '{"format":"alation-keys/master-key","version":1,"keys":[{"id":"mk_1","material":"c2VjcmV0"}]}', { mode: 0o600 });
    expect(() => readMasterKeyFile(file)).toThrow(/not 32 bytes of base64/);
    try {
      readMasterKeyFile(file);
    } catch (e) {
      expect(String((e as Error).message)).not.toContain('c2VjcmV0');
    }
  });
});
