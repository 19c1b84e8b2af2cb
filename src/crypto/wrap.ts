/**
 * DEK wrapping under a local master key (docs/format.md section 3.1, provider `local`). Pure functions.
 * wrapped_key = nonce(12) || ciphertext(32) || tag(16), AAD "alation-keys/dek/<version>".
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { DEK_LENGTH, NONCE_LENGTH, TAG_LENGTH } from './envelope';

export const WRAPPED_DEK_LENGTH = NONCE_LENGTH + DEK_LENGTH + TAG_LENGTH;

export class WrappedKeyError extends Error {}

export function dekAdditionalData(version: number): Buffer {
  return Buffer.from(`alation-keys/dek/${version}`, 'utf8');
}

export function generateDataKey(): Buffer {
  return randomBytes(DEK_LENGTH);
}

export function wrapDataKey(masterKey: Buffer, version: number, dek: Buffer, nonce?: Buffer): Buffer {
  if (masterKey.length !== 32) throw new RangeError('a master key is 32 bytes');
  if (dek.length !== DEK_LENGTH) throw new RangeError('a data key is 32 bytes');
  const iv = nonce ?? randomBytes(NONCE_LENGTH);
  const cipher = createCipheriv('aes-256-gcm', masterKey, iv, { authTagLength: TAG_LENGTH });
  cipher.setAAD(dekAdditionalData(version));
  const ciphertext = Buffer.concat([cipher.update(dek), cipher.final()]);
  return Buffer.concat([iv, ciphertext, cipher.getAuthTag()]);
}

export function unwrapDataKey(masterKey: Buffer, version: number, wrapped: Buffer): Buffer {
  if (wrapped.length !== WRAPPED_DEK_LENGTH) {
    throw new WrappedKeyError(`wrapped data key v${version} has ${wrapped.length} bytes, expected ${WRAPPED_DEK_LENGTH}`);
  }
  const decipher = createDecipheriv('aes-256-gcm', masterKey, wrapped.subarray(0, NONCE_LENGTH), { authTagLength: TAG_LENGTH });
  decipher.setAAD(dekAdditionalData(version));
  decipher.setAuthTag(wrapped.subarray(NONCE_LENGTH + DEK_LENGTH));
  try {
    return Buffer.concat([decipher.update(wrapped.subarray(NONCE_LENGTH, NONCE_LENGTH + DEK_LENGTH)), decipher.final()]);
  } catch {
    throw new WrappedKeyError(`wrapped data key v${version} failed to authenticate under the master key`);
  }
}
