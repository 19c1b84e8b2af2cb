import { PreconditionError } from '../errors';
import { LocalKeyProvider } from './local';
import { resolveMasterKeyPath } from './master-key-file';
import { KekProviderKind, KeyProvider } from './provider';

export interface ProviderOptions {
  masterKeyFile?: string;
  /** AWS shared-config profile for the operator's base credentials. */
  awsProfile?: string;
}

/** What choosing the provider needs of alation_keys.settings (the Settings of src/core/settings.ts fit). */
export interface ProviderSettings {
  installation_id?: string;
  kek_provider?: KekProviderKind;
  aws?: { region: string; key_arn: string; role_arn: string; external_id: string };
  /** KMS key ARNs replaced by `byok onboard --replace`: old backups' DEKs may name them. */
  aws_previous_key_arns?: string[];
}

/** The provider this installation's settings name (local unless BYOK was onboarded). */
export function createKeyProvider(settings: ProviderSettings, opts: ProviderOptions = {}): KeyProvider {
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
    return createAwsKmsKeyProvider({
      ...settings.aws,
      installationId: settings.installation_id,
      profile: opts.awsProfile,
      previousKeyArns: settings.aws_previous_key_arns,
    });
  }
  throw new PreconditionError(`unknown kek_provider "${String(kind)}" in alation_keys.settings`);
}

export { LocalKeyProvider } from './local';
export type { KeyProvider } from './provider';
