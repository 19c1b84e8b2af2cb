import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProviderError } from '../src/errors';
import {
  createMasterKeyFile,
  currentMasterKey,
  newMasterKey,
  readMasterKeyFile,
  writeMasterKeyFile,
} from '../src/kms/master-key-file';
import { tempDir } from './support/fixtures';

describe('master key file', () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir('mkf');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('is created with mode 0600 in the documented format', () => {
    const file = path.join(dir, 'sub', 'master.key');
    const created = createMasterKeyFile(file);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(doc.format).toBe('alation-keys/master-key');
    expect(doc.version).toBe(1);
    expect(doc.keys).toHaveLength(1);
    expect(doc.keys[0].id).toMatch(/^mk_[0-9a-f]{8}$/);
    expect(Buffer.from(doc.keys[0].material, 'base64')).toHaveLength(32);
    expect(doc.keys[0].created_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(readMasterKeyFile(file).keys[0].material.equals(created.keys[0].material)).toBe(true);
  });

  test('is rewritten atomically, keeping mode 0600 and earlier keys, leaving no temporary file', () => {
    const file = path.join(dir, 'master.key');
    const created = createMasterKeyFile(file);
    const inode = fs.statSync(file).ino;
    writeMasterKeyFile({ path: file, keys: [...created.keys, newMasterKey()] });
    const again = readMasterKeyFile(file);
    expect(again.keys).toHaveLength(2);
    expect(again.keys[0].id).toBe(created.keys[0].id);
    expect(currentMasterKey(again).id).not.toBe(created.keys[0].id);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(file).ino).not.toBe(inode); // renamed over, not edited in place
    expect(fs.readdirSync(dir)).toEqual(['master.key']);
  });

  test.each([0o644, 0o640, 0o604])('mode %o is refused with a message naming the fix', (mode) => {
    const file = path.join(dir, 'master.key');
    createMasterKeyFile(file);
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
