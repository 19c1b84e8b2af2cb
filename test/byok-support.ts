/** Shared set-up of the BYOK tests: the fake AWS server and the environment that points at it. */
import { Pool } from 'pg';
import { BYOK_ROLE_NAME } from '../src/kms/arn';
import { ensureExternalId } from '../src/core/byok';
import type { FakeAws } from './support/fake-aws';

export const ROLE_ARN = `arn:aws:iam::111122223333:role/${BYOK_ROLE_NAME}`;

/** Environment for the SDK (in-process or a spawned CLI) to reach only the fake server. */
export function awsEnv(server: FakeAws, extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    AWS_ENDPOINT_URL: server.endpoint,
    AWS_ENDPOINT_URL_KMS: undefined,
    AWS_ENDPOINT_URL_STS: undefined,
    AWS_ACCESS_KEY_ID: server.baseCredentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: server.baseCredentials.secretAccessKey,
    AWS_SESSION_TOKEN: undefined,
    AWS_PROFILE: undefined,
    AWS_DEFAULT_PROFILE: undefined,
    AWS_REGION: server.region,
    AWS_CONFIG_FILE: '/nonexistent/aws-config',
    AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/aws-credentials',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_MAX_ATTEMPTS: '2',
    ALATION_KEYS_AWS_REQUEST_TIMEOUT_MS: '1500',
    ALATION_KEYS_AWS_CONNECT_TIMEOUT_MS: '1000',
    ...extra,
  };
}

/** Points this process's SDK clients (the library under test) at the fake server. */
export function applyAwsEnv(server: FakeAws, extra: Record<string, string | undefined> = {}): void {
  for (const [k, v] of Object.entries(awsEnv(server, extra))) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
}

/** Creates AlationBYOKRole trusting the operator with this installation's ExternalId. */
export async function createByokRole(server: FakeAws, pool: Pool, opts: { requireExternalId?: string | null } = {}): Promise<string> {
  const externalId = await ensureExternalId(pool);
  server.createRole({ arn: ROLE_ARN, requireExternalId: opts.requireExternalId === undefined ? externalId : opts.requireExternalId });
  return externalId;
}

export function byokArgs(server: FakeAws, keyArn: string, roleArn = ROLE_ARN): string[] {
  return ['--region', server.region, '--key-arn', keyArn, '--role-arn', roleArn];
}
