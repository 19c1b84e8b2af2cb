import * as fs from 'node:fs';
import {
  envelopeFromText,
  envelopeToText,
  EnvelopeAuthError,
  EnvelopeFormatError,
  envelopeVersion,
  openEnvelope,
  sealEnvelope,
} from '../src/crypto/envelope';
import { unwrapDataKey, wrapDataKey, WrappedKeyError } from '../src/crypto/wrap';
import { buildVectors, oneMebibytePattern, VECTORS_PATH } from '../scripts/make-vectors';
import { createHash } from 'node:crypto';
import * as path from 'node:path';

const vectorsFile = path.resolve(__dirname, 'vectors/envelope-v1.json');
const vectors = JSON.parse(fs.readFileSync(vectorsFile, 'utf8'));
const dek = Buffer.from(vectors.dek_hex, 'hex');

function plaintextOf(e: any): Buffer {
  return e.plaintext_hex !== undefined ? Buffer.from(e.plaintext_hex, 'hex') : oneMebibytePattern();
}

describe('envelope v1 test vectors', () => {
  test('the committed vectors file is exactly what the format produces', () => {
    expect(path.basename(VECTORS_PATH)).toBe('envelope-v1.json');
    expect(JSON.parse(JSON.stringify(buildVectors()))).toEqual(vectors);
  });

  test.each(vectors.envelopes.map((e: any) => [e.name, e]) as Array<[string, any]>)('%s: seals byte for byte and opens', (_name: string, e: any) => {
    const plaintext = plaintextOf(e);
    if (e.plaintext_sha256) expect(createHash('sha256').update(plaintext).digest('hex')).toBe(e.plaintext_sha256);
    const sealed = sealEnvelope(dek, e.dek_version, plaintext, e.context, Buffer.from(e.nonce_hex, 'hex'));
    expect(sealed.toString('base64')).toBe(e.bytea_envelope_base64);
    expect(envelopeToText(sealed)).toBe(e.text_envelope);
    expect(envelopeVersion(sealed)).toBe(e.dek_version);
    expect(openEnvelope(dek, Buffer.from(e.bytea_envelope_base64, 'base64'), e.context).equals(plaintext)).toBe(true);
    expect(openEnvelope(dek, envelopeFromText(e.text_envelope), e.context).equals(plaintext)).toBe(true);
    expect(sealed.subarray(0, 7).toString('hex') + Buffer.from(e.context, 'utf8').toString('hex')).toBe(e.aad_hex);
  });

  test('wrapped DEK vectors wrap byte for byte and unwrap', () => {
    const mk = Buffer.from(vectors.master_key.material_base64, 'base64');
    for (const w of vectors.wrapped_deks) {
      const wrapped = wrapDataKey(mk, w.dek_version, dek, Buffer.from(w.nonce_hex, 'hex'));
      expect(wrapped.toString('hex')).toBe(w.wrapped_key_hex);
      expect(unwrapDataKey(mk, w.dek_version, wrapped).equals(dek)).toBe(true);
      // The version is bound in the AAD: unwrapping as another version fails.
      expect(() => unwrapDataKey(mk, w.dek_version + 1, wrapped)).toThrow(WrappedKeyError);
    }
  });
});

describe('envelope integrity', () => {
  const e = vectors.envelopes.find((x: any) => x.name === 'ASCII');
  const envelope = Buffer.from(e.bytea_envelope_base64, 'base64');

  test('a one-byte change anywhere in the envelope fails', () => {
    let rejected = 0;
    for (let i = 0; i < envelope.length; i++) {
      for (const flip of [0x01, 0x80]) {
        const bad = Buffer.from(envelope);
        bad[i] ^= flip;
        expect(() => openEnvelope(dek, bad, e.context)).toThrow(i < 3 ? EnvelopeFormatError : Error);
        rejected++;
      }
    }
    expect(rejected).toBe(envelope.length * 2);
  });

  test('a different context fails authentication', () => {
    expect(() => openEnvelope(dek, envelope, 'public.credentials.other')).toThrow(EnvelopeAuthError);
    expect(() => openEnvelope(dek, envelope, '')).toThrow(EnvelopeAuthError);
  });

  test('truncated, extended and malformed values are refused', () => {
    expect(() => openEnvelope(dek, envelope.subarray(0, envelope.length - 1), e.context)).toThrow(EnvelopeAuthError);
    expect(() => openEnvelope(dek, envelope.subarray(0, 34), e.context)).toThrow(EnvelopeFormatError);
    expect(() => openEnvelope(dek, Buffer.concat([envelope, Buffer.from([0])]), e.context)).toThrow(EnvelopeAuthError);
    expect(() => envelopeFromText('ak2:' + envelope.toString('base64'))).toThrow(EnvelopeFormatError);
    expect(() => envelopeFromText('ak1:' + envelope.toString('base64').slice(1))).toThrow(EnvelopeFormatError);
    expect(() => envelopeFromText('ak1:' + envelope.toString('base64url'))).toThrow(EnvelopeFormatError);
  });

  test('every encryption uses a fresh nonce', () => {
    const a = sealEnvelope(dek, 1, Buffer.from('same'), 'c');
    const b = sealEnvelope(dek, 1, Buffer.from('same'), 'c');
    expect(a.subarray(7, 19).equals(b.subarray(7, 19))).toBe(false);
  });
});
