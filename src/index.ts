/** The library the application uses: `import { openKeyring } from 'alation-keys'`. */
export { openKeyring } from './core/keyring-client';
export type { Keyring, OpenKeyringOptions, PlainValue } from './core/keyring-client';
export {
  sealEnvelope,
  openEnvelope,
  envelopeToText,
  envelopeFromText,
  envelopeVersion,
  storedValueVersion,
  EnvelopeAuthError,
  EnvelopeFormatError,
} from './crypto/envelope';
export { wrapDataKey, unwrapDataKey } from './crypto/wrap';
export * from './errors';
