/**
 * A second reader, written from docs/format.md and docs/database.md alone with nothing but
 * node:crypto and SQL: it imports no code of this project's src/. If it decrypts the vectors
 * and a database the tool wrote, the documentation is enough to implement a reader.
 */
import { createDecipheriv, createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Pool } from 'pg';
import { createInstallation, Installation } from './support/fixtures';
import { runCli } from './support/cli';

// ---------------------------------------------------------------------------------------------
// The reader (docs/format.md sections 2–4)
// ---------------------------------------------------------------------------------------------

class ReaderIntegrityError extends Error {}

/** AES-256-GCM with a 12-byte nonce and the full 16-byte tag. */
function gcmOpen(key: Buffer, nonce: Buffer, ciphertext: Buffer, tag: Buffer, aad: Buffer): Buffer {
  if (key.length !== 32 || nonce.length !== 12 || tag.length !== 16) throw new ReaderIntegrityError('bad sizes');
  const d = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
  d.setAAD(aad);
  d.setAuthTag(tag);
  try {
    return Buffer.concat([d.update(ciphertext), d.final()]);
  } catch {
    throw new ReaderIntegrityError('authentication failed');
  }
}

/** Section 3.1: nonce(12) || ciphertext(32) || tag(16) under the master key, AAD "alation-keys/dek/<version>". */
function unwrapLocal(masterKey: Buffer, version: number, wrapped: Buffer): Buffer {
  if (wrapped.length !== 60) throw new ReaderIntegrityError('a wrapped DEK is 60 bytes');
  return gcmOpen(masterKey, wrapped.subarray(0, 12), wrapped.subarray(12, 44), wrapped.subarray(44), Buffer.from(`alation-keys/dek/${version}`, 'utf8'));
}

/** Section 2: the master keys by id. */
function readMasterKeys(json: string): Map<string, Buffer> {
  const doc = JSON.parse(json);
  if (doc.format !== 'alation-keys/master-key' || doc.version !== 1 || !Array.isArray(doc.keys) || doc.keys.length === 0) {
    throw new Error('not a master key file');
  }
  const keys = new Map<string, Buffer>();
  for (const k of doc.keys) {
    const material = Buffer.from(k.material, 'base64');
    if (material.length !== 32 || material.toString('base64') !== k.material) throw new Error('bad master key material');
    keys.set(k.id, material);
  }
  return keys;
}

/** Section 4.1: `ak1:` + canonical standard base64 with padding. */
function decodeText(value: string): Buffer {
  const body = value.slice(4);
  if (body.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(body)) throw new ReaderIntegrityError('malformed base64');
  const bytes = Buffer.from(body, 'base64');
  if (bytes.toString('base64') !== body) throw new ReaderIntegrityError('non-canonical base64');
  return bytes;
}

function isEnvelope(value: Buffer | string): boolean {
  return typeof value === 'string' ? value.startsWith('ak1:') : value.length >= 3 && value[0] === 0x41 && value[1] === 0x4b && value[2] === 0x01;
}

/** Section 4.2. `deks` maps DEK versions to keys; `state` is the column's state. */
function readValue(value: Buffer | string, context: string, deks: Map<number, Buffer>, state = 'encrypted'): Buffer | string {
  if (!isEnvelope(value)) {
    if (state === 'encrypting' || state === 'decrypting') return value;
    throw new ReaderIntegrityError('not an envelope in an encrypted column');
  }
  const env = typeof value === 'string' ? decodeText(value) : value;
  if (env.length < 35 || env[0] !== 0x41 || env[1] !== 0x4b || env[2] !== 0x01) throw new ReaderIntegrityError('malformed envelope');
  const version = env.readUInt32BE(3);
  const dek = deks.get(version);
  if (!dek) throw new ReaderIntegrityError(`no DEK v${version}`);
  const header = env.subarray(0, 7);
  const plain = gcmOpen(dek, env.subarray(7, 19), env.subarray(19, env.length - 16), env.subarray(env.length - 16), Buffer.concat([header, Buffer.from(context, 'utf8')]));
  return typeof value === 'string' ? plain.toString('utf8') : plain;
}

// ---------------------------------------------------------------------------------------------

const VECTORS = JSON.parse(fs.readFileSync(path.join(__dirname, 'vectors', 'envelope-v1.json'), 'utf8'));

function expectedPlaintext(v: any): Buffer {
  if (v.plaintext_hex !== undefined) return Buffer.from(v.plaintext_hex, 'hex');
  const b = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < b.length; i++) b[i] = i % 251;
  expect(createHash('sha256').update(b).digest('hex')).toBe(v.plaintext_sha256);
  return b;
}

describe('a reader written from docs/format.md', () => {
  const dek = Buffer.from(VECTORS.dek_hex, 'hex');

  test('decrypts every envelope vector, in bytea and in text storage, to its plaintext', () => {
    expect(VECTORS.envelopes.length).toBeGreaterThanOrEqual(6);
    for (const v of VECTORS.envelopes) {
      const deks = new Map([[v.dek_version, dek]]);
      const plaintext = expectedPlaintext(v);
      const bytea = Buffer.from(v.bytea_envelope_base64, 'base64');
      expect(bytea.length).toBe(35 + plaintext.length);
      expect(bytea.subarray(7, 19).toString('hex')).toBe(v.nonce_hex);
      expect(Buffer.concat([bytea.subarray(0, 7), Buffer.from(v.context, 'utf8')]).toString('hex')).toBe(v.aad_hex);
      expect((readValue(bytea, v.context, deks) as Buffer).equals(plaintext)).toBe(true);
      expect(v.text_envelope).toBe(`ak1:${v.bytea_envelope_base64}`);
      if (plaintext.length < 4096 && Buffer.from(plaintext.toString('utf8'), 'utf8').equals(plaintext)) {
        expect(readValue(v.text_envelope, v.context, deks)).toBe(plaintext.toString('utf8'));
      } else {
        expect(() => readValue(v.text_envelope, v.context, deks)).not.toThrow();
      }
    }
  });

  test('rejects every vector with a flipped bit, another context, another DEK version or non-canonical base64', () => {
    for (const v of VECTORS.envelopes.filter((e: any) => e.plaintext_hex !== undefined)) {
      const deks = new Map([[v.dek_version, dek]]);
      const bytea = Buffer.from(v.bytea_envelope_base64, 'base64');
      for (let bit = 0; bit < bytea.length * 8; bit++) {
        const t = Buffer.from(bytea);
        t[bit >> 3] ^= 1 << (bit & 7);
        expect(() => readValue(t, v.context, deks)).toThrow(ReaderIntegrityError);
      }
      expect(() => readValue(bytea, `${v.context}x`, deks)).toThrow(ReaderIntegrityError);
      expect(() => readValue(bytea, v.context, new Map([[v.dek_version + 1, dek]]))).toThrow(ReaderIntegrityError);
      expect(() => readValue(v.text_envelope.slice(0, -1), v.context, deks)).toThrow(ReaderIntegrityError);
      expect(() => readValue(v.text_envelope.replace('ak1:', 'AK1:'), v.context, deks)).toThrow(ReaderIntegrityError);
      expect(() => readValue(`${v.text_envelope}\n`, v.context, deks)).toThrow(ReaderIntegrityError);
    }
  });

  test('unwraps every wrapped-DEK vector under the master key to the vectors DEK', () => {
    const masterKey = Buffer.from(VECTORS.master_key.material_base64, 'base64');
    for (const w of VECTORS.wrapped_deks) {
      const wrapped = Buffer.from(w.wrapped_key_hex, 'hex');
      expect(wrapped.subarray(0, 12).toString('hex')).toBe(w.nonce_hex);
      expect(w.aad).toBe(`alation-keys/dek/${w.dek_version}`);
      expect(unwrapLocal(masterKey, w.dek_version, wrapped).equals(dek)).toBe(true);
      expect(() => unwrapLocal(masterKey, w.dek_version + 1, wrapped)).toThrow(ReaderIntegrityError);
    }
  });
});

describe('a reader written from docs/ reads a database the tool wrote', () => {
  let inst: Installation;

  beforeAll(async () => {
    inst = await createInstallation('docsreader', { values: 300 });
    // A rotation: a second DEK under a second master key, old values re-encrypted.
    const r = await runCli(['rotate', '--skip-backup-check', '--skip-disk-check', '--settle-time', '0'], { env: inst.env });
    expect({ code: r.code, stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stderr: '' });
  });

  afterAll(async () => {
    await inst?.cleanup();
  });

  test('with only the master key file and the alation_keys tables, every registered value decrypts to what the library reads', async () => {
    const pool: Pool = inst.db.pool;
    const masterKeys = readMasterKeys(fs.readFileSync(inst.masterKeyFile, 'utf8'));
    expect(masterKeys.size).toBe(2);
    const keyring = await pool.query<{ version: number; state: string; wrapped_key: Buffer; kek_provider: string; kek_id: string }>(
      `SELECT version, state, wrapped_key, kek_provider, kek_id FROM alation_keys.keyring WHERE state <> 'destroyed'`,
    );
    const deks = new Map<number, Buffer>();
    for (const row of keyring.rows) {
      expect(row.kek_provider).toBe('local');
      deks.set(row.version, unwrapLocal(masterKeys.get(row.kek_id)!, row.version, row.wrapped_key));
    }
    expect([...deks.keys()].sort()).toEqual([1, 2]);

    const columns = await pool.query<{ table_schema: string; table_name: string; column_name: string; key_columns: string[]; storage: string; context: string }>(
      `SELECT table_schema, table_name, column_name, key_columns, storage, context FROM alation_keys.encrypted_columns`,
    );
    expect(columns.rows.length).toBe(3);
    let read = 0;
    const versions = new Set<number>();
    for (const c of columns.rows) {
      const q = (s: string) => '"' + s.replace(/"/g, '""') + '"';
      const rows = await pool.query(
        `SELECT ${c.key_columns.map(q).join(', ')}, ${q(c.column_name)} AS v FROM ${q(c.table_schema)}.${q(c.table_name)} WHERE ${q(c.column_name)} IS NOT NULL`,
      );
      for (const row of rows.rows) {
        const mine = readValue(row.v, c.context, deks);
        const theirs = await inst.keyring.decrypt(row.v, `${c.table_schema}.${c.table_name}.${c.column_name}`);
        expect(typeof mine).toBe(c.storage === 'text' ? 'string' : 'object');
        expect(mine).toEqual(theirs);
        const env = typeof row.v === 'string' ? decodeText(row.v) : row.v;
        versions.add(env.readUInt32BE(3));
        read++;
      }
    }
    expect(read).toBeGreaterThan(200);
    expect([...versions]).toEqual([2]);
  });
});
