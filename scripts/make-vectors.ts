/**
 * Writes test/vectors/envelope-v1.json: fixed keys, nonces, contexts and plaintexts with the
 * exact envelopes they give, so another language can implement docs/format.md and check itself.
 * Run: node dist/scripts/make-vectors.js  (the test asserts the committed file byte for byte).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { envelopeToText, sealEnvelope } from '../src/crypto/envelope';
import { wrapDataKey } from '../src/crypto/wrap';

const hex = (b: Buffer) => b.toString('hex');
const fixed = (label: string, n: number) => createHash('sha256').update(label).digest().subarray(0, n);

export function oneMebibytePattern(): Buffer {
  const b = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < b.length; i++) b[i] = i % 251;
  return b;
}

export function buildVectors() {
  const dek = fixed('alation-keys vector dek', 32);
  const masterKey = fixed('alation-keys vector master key', 32);
  const cases: Array<{ name: string; plaintext: Buffer; context: string; version: number; plaintextNote?: string }> = [
    { name: 'empty plaintext, empty context', plaintext: Buffer.alloc(0), context: '', version: 1 },
    { name: 'ASCII', plaintext: Buffer.from('correct horse battery staple', 'utf8'), context: 'public.credentials.secret', version: 1 },
    { name: 'multi-byte UTF-8', plaintext: Buffer.from('Straße · 数据目录 · ключ · 🔑', 'utf8'), context: 'public.documents.body', version: 7 },
    { name: 'binary with a large DEK version', plaintext: Buffer.from([0, 1, 2, 253, 254, 255]), context: 'public.blobs.payload', version: 0x01020304 },
    { name: 'multi-byte context', plaintext: Buffer.from('x', 'utf8'), context: 'öffentlich.Schlüssel.Wert', version: 2 },
    {
      name: '1 MiB binary',
      plaintext: oneMebibytePattern(),
      context: 'public.blobs.payload',
      version: 3,
      plaintextNote: 'plaintext byte i = i mod 251, 1048576 bytes; plaintext_hex omitted, plaintext_sha256 given',
    },
  ];
  const envelopes = cases.map((c, i) => {
    const nonce = fixed(`alation-keys vector nonce ${i}`, 12);
    const envelope = sealEnvelope(dek, c.version, c.plaintext, c.context, nonce);
    const big = c.plaintext.length > 4096;
    return {
      name: c.name,
      dek_version: c.version,
      context: c.context,
      nonce_hex: hex(nonce),
      ...(big ? { plaintext_note: c.plaintextNote, plaintext_sha256: createHash('sha256').update(c.plaintext).digest('hex') } : { plaintext_hex: hex(c.plaintext) }),
      aad_hex: hex(Buffer.concat([envelope.subarray(0, 7), Buffer.from(c.context, 'utf8')])),
      bytea_envelope_base64: envelope.toString('base64'),
      text_envelope: envelopeToText(envelope),
    };
  });
  const wrapped = [1, 7, 0x01020304].map((version, i) => {
    const nonce = fixed(`alation-keys vector wrap nonce ${i}`, 12);
    return {
      dek_version: version,
      aad: `alation-keys/dek/${version}`,
      nonce_hex: hex(nonce),
      wrapped_key_hex: hex(wrapDataKey(masterKey, version, dek, nonce)),
    };
  });
  return {
    format: 'alation-keys/envelope-vectors',
    version: 1,
    spec: 'docs/format.md: wrapped data keys (section 3.1, provider local) and the value envelope v1 (section 4)',
    dek_hex: hex(dek),
    master_key: { id: 'mk_vectors', material_base64: masterKey.toString('base64') },
    envelopes,
    wrapped_deks: wrapped,
  };
}

export const VECTORS_PATH = path.resolve(__dirname, '../../test/vectors/envelope-v1.json');

if (require.main === module) {
  fs.writeFileSync(VECTORS_PATH, JSON.stringify(buildVectors(), null, 2) + '\n');
  process.stdout.write(`wrote ${VECTORS_PATH}\n`);
}
