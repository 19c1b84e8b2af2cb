import { PreconditionError } from '../errors';
import { Settings } from '../core/settings';
import { LocalKeyProvider } from './local';
import { resolveMasterKeyPath } from './master-key-file';
import { KeyProvider } from './provider';

export interface ProviderOptions {
  masterKeyFile?: string;
  /** AWS shared-config profile for the operator's base credentials. */
  awsProfile?: string;
}

/** The provider this installation's settings name (local unless BYOK was onboarded). */
export function createKeyProvider(settings: Settings, opts: ProviderOptions = {}): KeyProvider {
  const kind = settings.kek_provider ?? 'local';
  if (kind === 'local') return new LocalKeyProvider(resolveMasterKeyPath(opts.masterKeyFile));
  if (kind === 'aws-kms') {
    if (!settings.aws || !settings.installation_id) {
      throw new PreconditionError('settings say aws-kms but the aws settings are missing', {
        hint: 'run `alation-keys byok onboard` again',
      });
    }
    // Loaded on demand: the AWS SDK is large, and only BYOK installations need it.
    const { createAwsKmsKeyProvider } = require('./aws-kms') as typeof import('./aws-kms');
    return createAwsKmsKeyProvider({ ...settings.aws, installationId: settings.installation_id, profile: opts.awsProfile });
  }
  throw new PreconditionError(`unknown kek_provider "${String(kind)}" in alation_keys.settings`);
}

export { LocalKeyProvider } from './local';
export type { KeyProvider } from './provider';
