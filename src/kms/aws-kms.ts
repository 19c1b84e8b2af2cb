// Placeholder until the BYOK work lands: the AWS KMS provider.
import { ProviderError } from '../errors';
import { KeyProvider } from './provider';

export interface AwsKmsProviderOptions {
  region: string;
  key_arn: string;
  role_arn: string;
  external_id: string;
  installationId: string;
  profile?: string;
}

export function createAwsKmsKeyProvider(_opts: AwsKmsProviderOptions): KeyProvider {
  throw new ProviderError('the aws-kms provider is not available in this build');
}
