import * as fs from 'node:fs';
import { openKeyring } from '../src/core/keyring-client';
import { addPrimaryDataKey } from '../src/core/keyring';
import { withTransaction } from '../src/db/transaction';
import { IntegrityError, UsageError } from '../src/errors';
import { LocalKeyProvider } from '../src/kms/local';
import { BLOBS, CREDENTIALS, DOCUMENTS } from '../scripts/lib/rosemeta';
import { createInstallation, Installation } from './support/fixtures';

describe('openKeyring (the application library)', () => {
  let inst: Installation;
  beforeAll(async () => {
    inst = await createInstallation('library');
  });
  afterAll(async () => {
    await inst.cleanup();
  });

  test('encrypts and decrypts text and bytea columns; NULL stays NULL', async () => {
    const k = inst.keyring;
    const t = await k.encrypt('Straße 🔑', CREDENTIALS);
    expect(t).toMatch(/^ak1:[A-Za-z0-9+/]+=*$/);
    expect(await k.decrypt(t, CREDENTIALS)).toBe('Straße 🔑');
    const b = await k.encrypt(Buffer.from([0, 1, 2, 255]), BLOBS);
    expect(Buffer.isBuffer(b)).toBe(true);
    expect((await k.decrypt(b, BLOBS)).equals(Buffer.from([0, 1, 2, 255]))).toBe(true);
    expect(await k.encrypt(null, CREDENTIALS)).toBeNull();
    expect(await k.decrypt(null, CREDENTIALS)).toBeNull();
    expect(await k.decrypt(await k.encrypt('', DOCUMENTS), DOCUMENTS)).toBe('');
  });

  test('the column context is bound: a value moved to another column fails with an integrity error (exit 5)', async () => {
    const v = await inst.keyring.encrypt('secret', CREDENTIALS);
    const err = await inst.keyring.decrypt(v, DOCUMENTS).catch((e) => e);
    expect(err).toBeInstanceOf(IntegrityError);
    expect(err.exitCode).toBe(5);
    expect(err.message).toContain(DOCUMENTS);
  });

  test('a one-byte change in a stored value is an integrity error naming the column', async () => {
    const v = (await inst.keyring.encrypt(Buffer.from('payload'), BLOBS)) as Buffer;
    for (const i of [0, 5, 10, 20, v.length - 1]) {
      const bad = Buffer.from(v);
      bad[i] ^= 0x10;
      const err = await inst.keyring.decrypt(bad, BLOBS).catch((e) => e);
      expect(err).toBeInstanceOf(IntegrityError);
      expect(err.location).toMatchObject({ schema: 'public', table: 'blobs', column: 'payload' });
    }
  });

  test('wrong types and unregistered columns are usage errors', async () => {
    await expect(inst.keyring.encrypt(Buffer.from('x') as any, CREDENTIALS)).rejects.toBeInstanceOf(UsageError);
    await expect(inst.keyring.encrypt('x', 'public.nope.nope')).rejects.toThrow(/not registered/);
  });

  test('a DEK published by another process is picked up on first use (re-read once before giving up)', async () => {
    const other = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 3600 });
    const before = other.primaryVersion();
    await withTransaction(inst.db.pool, (tx) => addPrimaryDataKey(tx, new LocalKeyProvider(inst.masterKeyFile)));
    await inst.keyring.refresh();
    expect(inst.keyring.primaryVersion()).toBe(before + 1);
    const v = await inst.keyring.encrypt('new key', CREDENTIALS);
    // `other` has not refreshed (3600 s) but still decrypts: unknown version → one re-read.
    expect(other.primaryVersion()).toBe(before);
    expect(await other.decrypt(v, CREDENTIALS)).toBe('new key');
    expect(other.primaryVersion()).toBe(before + 1);
    await other.close();
  });

  test('keeps working from cached DEKs while the key provider is unavailable', async () => {
    const k = await openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile, refreshSeconds: 0 });
    const v = await k.encrypt('cached', CREDENTIALS);
    fs.chmodSync(inst.masterKeyFile, 0o644); // provider now refuses
    try {
      expect(await k.decrypt(v, CREDENTIALS)).toBe('cached');
      expect(await k.decrypt(await k.encrypt('still', CREDENTIALS), CREDENTIALS)).toBe('still');
      await expect(openKeyring({ pool: inst.db.pool, masterKeyFile: inst.masterKeyFile })).rejects.toMatchObject({ exitCode: 4 });
    } finally {
      fs.chmodSync(inst.masterKeyFile, 0o600);
      await k.close();
    }
  });

  test('an unknown DEK version is an integrity error after one re-read', async () => {
    const v = (await inst.keyring.encrypt(Buffer.from('x'), BLOBS)) as Buffer;
    const bad = Buffer.from(v);
    bad.writeUInt32BE(999, 3);
    const err = await inst.keyring.decrypt(bad, BLOBS).catch((e) => e);
    expect(err).toBeInstanceOf(IntegrityError);
    expect(err.message).toContain('v999');
  });
});
