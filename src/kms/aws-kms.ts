/**
 * The `aws-kms` key provider (SPEC 2.2) and the AWS plumbing BYOK shares with it:
 * clients with explicit retries and timeouts, assumed-role credentials that refresh
 * before they expire, and AWS errors translated into our typed errors.
 *
 * Base credentials come from the SDK's default chain (environment, shared config and
 * `--profile`, web identity, container/instance role). Endpoint overrides
 * (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL_STS, or `endpoint_url` in the
 * shared config) are honoured natively by the installed SDK, by every client made here.
 */
import * as os from 'node:os';
import {
  DecryptCommand,
  DescribeKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  KMSClient,
  type KeyMetadata,
} from '@aws-sdk/client-kms';
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { AlationKeysError, IntegrityError, ProviderError } from '../errors';
import { DEK_LENGTH } from '../crypto/envelope';
import { GeneratedDataKey, KeyProvider, WrappedDataKey } from './provider';

export interface AwsKmsProviderOptions {
  region: string;
  key_arn: string;
  role_arn: string;
  external_id: string;
  installationId: string;
  profile?: string;
  /** Key ARNs this installation used before a `byok onboard --replace`: DEKs (in old backups) may name them. */
  previousKeyArns?: string[];
}

export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  expiration?: Date;
}

export type AwsCredentialsProvider = () => Promise<AwsCredentials>;

// ---------------------------------------------------------------------------
// Client configuration: explicit retries and timeouts, no hanging call.
// ---------------------------------------------------------------------------

function envInt(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  return Number.isInteger(n) && n >= min && n <= max ? n : fallback;
}

export interface AwsCallLimits {
  /** Attempts per call, first one included ($AWS_MAX_ATTEMPTS, default 4). */
  maxAttempts: number;
  /** TCP/TLS connect timeout ($ALATION_KEYS_AWS_CONNECT_TIMEOUT_MS, default 3000). */
  connectionTimeoutMs: number;
  /** Whole request/response timeout per attempt ($ALATION_KEYS_AWS_REQUEST_TIMEOUT_MS, default 10000). */
  requestTimeoutMs: number;
}

export function awsCallLimits(): AwsCallLimits {
  return {
    maxAttempts: envInt('AWS_MAX_ATTEMPTS', 4, 1, 10),
    connectionTimeoutMs: envInt('ALATION_KEYS_AWS_CONNECT_TIMEOUT_MS', 3000, 100, 120_000),
    requestTimeoutMs: envInt('ALATION_KEYS_AWS_REQUEST_TIMEOUT_MS', 10_000, 100, 300_000),
  };
}

function clientConfig(region: string) {
  const limits = awsCallLimits();
  return {
    region,
    maxAttempts: limits.maxAttempts,
    retryMode: 'standard',
    requestHandler: {
      connectionTimeout: limits.connectionTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      socketTimeout: limits.requestTimeoutMs,
      throwOnRequestTimeout: true,
    },
  };
}

/** STS with the operator's base credentials (default chain, optionally a shared-config profile). */
export function createBaseStsClient(region: string, profile?: string): STSClient {
  return new STSClient({ ...clientConfig(region), ...(profile ? { profile } : {}) });
}

export function createKmsClient(region: string, credentials: AwsCredentialsProvider): KMSClient {
  return new KMSClient({ ...clientConfig(region), credentials });
}

/** A session name AWS accepts ([\w+=,.@-], 2..64), telling CloudTrail readers who called. */
export function roleSessionName(installationId: string): string {
  const host = os.hostname().replace(/[^\w+=,.@-]/g, '-');
  return `alation-keys-${installationId.slice(0, 8)}-${host}`.slice(0, 64);
}

// ---------------------------------------------------------------------------
// Assumed-role credentials that refresh before expiry.
// ---------------------------------------------------------------------------

/** Refresh when this much of the session is left (capped at 5 minutes). */
function refreshMarginMs(lifetimeMs: number): number {
  return Math.min(5 * 60_000, Math.max(0, lifetimeMs / 2));
}

/**
 * Credentials for `roleArn`, assumed with `externalId` through `sts`. Cached and refreshed
 * before expiry (5 minutes ahead, or half the session when sessions are short) in the
 * background, one AssumeRole at a time; while a refresh fails or hangs the old credentials
 * are used until they expire.
 */
export function assumedRoleCredentials(
  sts: STSClient,
  params: { roleArn: string; externalId: string | undefined; sessionName: string; durationSeconds?: number },
): AwsCredentialsProvider & { assumeCount(): number } {
  let current: (AwsCredentials & { refreshAt: number; expiresAt: number }) | undefined;
  let pending: Promise<AwsCredentials> | undefined;
  let count = 0;
  const assume = async (): Promise<AwsCredentials> => {
    count++;
    const obtainedAt = Date.now();
    let out;
    try {
      out = await sts.send(
        new AssumeRoleCommand({
          RoleArn: params.roleArn,
          RoleSessionName: params.sessionName,
          ExternalId: params.externalId,
          DurationSeconds: params.durationSeconds ?? 3600,
        }),
      );
    } catch (err) {
      throw translateAwsError(err, { operation: 'AssumeRole', roleArn: params.roleArn });
    }
    const c = out.Credentials;
    if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken) {
      throw new ProviderError(`STS AssumeRole of ${params.roleArn} returned no credentials`);
    }
    const expiresAt = c.Expiration ? new Date(c.Expiration).getTime() : obtainedAt + 15 * 60_000;
    current = {
      accessKeyId: c.AccessKeyId,
      secretAccessKey: c.SecretAccessKey,
      sessionToken: c.SessionToken,
      expiration: new Date(expiresAt),
      expiresAt,
      refreshAt: expiresAt - refreshMarginMs(expiresAt - obtainedAt),
    };
    return current;
  };
  const start = (): Promise<AwsCredentials> => {
    if (!pending) {
      pending = assume().finally(() => {
        pending = undefined;
      });
      pending.catch(() => undefined); // a background refresh may fail unobserved
    }
    return pending;
  };
  const provider = async (): Promise<AwsCredentials> => {
    const now = Date.now();
    if (current && now < current.refreshAt) return current;
    if (current && now < current.expiresAt - 5_000) {
      // Still valid: refresh in the background and keep using these meanwhile (and if it fails).
      void start();
      return current;
    }
    return start();
  };
  return Object.assign(provider, { assumeCount: () => count });
}

// ---------------------------------------------------------------------------
// Error translation
// ---------------------------------------------------------------------------

export type AwsOperation = 'AssumeRole' | 'GetCallerIdentity' | 'DescribeKey' | 'GenerateDataKey' | 'Encrypt' | 'Decrypt';

export interface AwsErrorContext {
  operation: AwsOperation;
  keyArn?: string;
  roleArn?: string;
  region?: string;
  /** DEK version being unwrapped (Decrypt of a keyring row). */
  version?: number;
  /** The AssumeRole was made without the ExternalId on purpose (byok test). */
  withoutExternalId?: boolean;
}

const THROTTLING = new Set([
  'ThrottlingException',
  'Throttling',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'RequestThrottled',
  'RequestThrottledException',
  'SlowDown',
  'LimitExceededException',
]);

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'EPIPE',
  'ECONNABORTED',
]);

/** The SDK error's code, status and attempts, whatever shape it has. */
function describeSdkError(err: unknown) {
  const e = (err ?? {}) as { name?: string; code?: string; message?: string; $metadata?: { httpStatusCode?: number; attempts?: number } };
  return {
    name: e.name ?? 'Error',
    code: e.code,
    message: (e.message ?? String(err)).split('\n')[0],
    status: e.$metadata?.httpStatusCode,
    attempts: e.$metadata?.attempts,
  };
}

export function isAwsNetworkFailure(err: unknown): boolean {
  const d = describeSdkError(err);
  return (
    d.name === 'TimeoutError' ||
    d.name === 'RequestTimeout' ||
    d.name === 'AbortError' ||
    (d.code !== undefined && NETWORK_CODES.has(d.code)) ||
    /socket hang up|ECONNRESET|ECONNREFUSED|timed out|EPIPE/i.test(d.message) ||
    (d.status !== undefined && d.status >= 500) ||
    d.name === 'ServiceUnavailableException' ||
    d.name === 'ServiceUnavailable' ||
    d.name === 'KMSInternalException' ||
    d.name === 'DependencyTimeoutException' ||
    d.name === 'InternalFailure'
  );
}

/** The code of an AWS error (`AccessDenied`, `ThrottlingException`, …), or undefined. */
export function awsErrorName(err: unknown): string | undefined {
  if (err instanceof AlationKeysError) return (err as AlationKeysError & { awsError?: string }).awsError;
  return describeSdkError(err).name;
}

/** A ProviderError that remembers the AWS error code it came from. */
export class AwsProviderError extends ProviderError {
  constructor(
    message: string,
    readonly awsError: string,
    options?: { hint?: string; cause?: unknown },
  ) {
    super(message, options);
  }
}

const POLICY_HINT = 'see `alation-keys byok policy` for the exact statements';

export function translateAwsError(err: unknown, c: AwsErrorContext): AlationKeysError {
  if (err instanceof AlationKeysError) return err;
  const d = describeSdkError(err);
  const sts = c.operation === 'AssumeRole' || c.operation === 'GetCallerIdentity';
  const service = sts ? 'STS' : 'KMS';
  const where = c.keyArn ? ` on ${c.keyArn}` : '';
  const tries = d.attempts && d.attempts > 1 ? ` after ${d.attempts} attempts` : '';
  const mk = (message: string, hint?: string) => new AwsProviderError(message, d.name, { hint, cause: err });

  if (d.name === 'CredentialsProviderError' || /Could not load credentials/i.test(d.message)) {
    return mk(`no AWS credentials found for ${service} ${c.operation}: ${d.message}`, 'set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, pass --profile NAME, or run where an instance or container role is available');
  }
  if (THROTTLING.has(d.name)) {
    return mk(`${service} throttled ${c.operation}${where}${tries} (${d.name})`, `the AWS request rate quota was exceeded; wait and run it again, or ask AWS to raise the ${service} request quota; nothing was changed`);
  }
  if (isAwsNetworkFailure(err)) {
    return mk(
      `${service} unreachable: ${c.operation}${where} failed${tries} (${d.name}: ${d.message})`,
      `check network access to the ${service} endpoint${c.region ? ` of ${c.region}` : ''} (proxy, VPC endpoint, AWS_ENDPOINT_URL_${service}) and the AWS health dashboard; nothing was changed`,
    );
  }
  switch (d.name) {
    case 'AccessDenied':
    case 'AccessDeniedException':
      if (c.operation === 'AssumeRole') {
        if (c.withoutExternalId) return mk(`STS refused AssumeRole of ${c.roleArn} without the ExternalId (AccessDenied)`);
        return mk(
          `STS refused AssumeRole of ${c.roleArn} (AccessDenied): the role's trust policy does not let these credentials assume it with this installation's ExternalId`,
          `fix the trust policy of the role: it must allow your principal sts:AssumeRole with Condition StringEquals "sts:ExternalId" set to this installation's ExternalId; ${POLICY_HINT}`,
        );
      }
      if (c.operation === 'GetCallerIdentity') return mk(`STS refused GetCallerIdentity (AccessDenied): ${d.message}`);
      return mk(
        `KMS refused ${c.operation}${where} (AccessDeniedException): the role's permission policy or the key policy does not allow kms:${c.operation}`,
        `allow kms:${c.operation} on this key in the role's permission policy, and name the role in the key policy (a key policy grants nothing by default); ${POLICY_HINT}`,
      );
    case 'InvalidClientTokenId':
    case 'UnrecognizedClientException':
    case 'SignatureDoesNotMatch':
    case 'IncompleteSignature':
    case 'InvalidSignatureException':
    case 'MissingAuthenticationToken':
    case 'MissingAuthenticationTokenException':
      return mk(`AWS rejected the credentials used for ${service} ${c.operation} (${d.name})`, 'check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the --profile you use');
    case 'ExpiredToken':
    case 'ExpiredTokenException':
      return mk(`the AWS credentials used for ${service} ${c.operation} have expired (${d.name})`, 'refresh your AWS credentials (e.g. aws sso login) and run it again');
    case 'RegionDisabledException':
      return mk(`STS is not activated in region ${c.region ?? '?'} (${d.name})`, 'activate STS for that region in IAM → Account settings');
    case 'DisabledException':
      return mk(`the KMS key ${c.keyArn ?? ''} is disabled (DisabledException)`, 'enable the key (KMS console → Key actions → Enable, or `aws kms enable-key`), then run it again');
    case 'KMSInvalidStateException':
      return mk(`the KMS key ${c.keyArn ?? ''} cannot be used for ${c.operation} in its current state: ${d.message}`, keyStateHint(d.message));
    case 'NotFoundException':
      return mk(
        `KMS has no key ${c.keyArn ?? ''}${c.region ? ` in ${c.region}` : ''} (NotFoundException)`,
        'check the key ARN; the key must exist in the region its ARN names and belong to the account in the ARN',
      );
    case 'InvalidKeyUsageException':
      return mk(`the KMS key ${c.keyArn ?? ''} cannot encrypt data keys (${d.message})`, 'use a symmetric key: KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT');
    case 'InvalidCiphertextException':
    case 'IncorrectKeyException':
      if (c.operation === 'Decrypt' && c.version !== undefined) {
        return new IntegrityError(
          `data key v${c.version} in alation_keys.keyring could not be decrypted by KMS key ${c.keyArn ?? ''} (${d.name}): the wrapped key, its key or its encryption context does not match`,
          { version: c.version },
          { hint: 'restore alation_keys.keyring from a backup taken with this KMS key; do not rewrite any value', cause: err },
        );
      }
      return mk(`KMS ${c.operation}${where} failed (${d.name}: ${d.message})`);
    case 'KeyUnavailableException':
      return mk(`the KMS key ${c.keyArn ?? ''} is unavailable (${d.message})`, 'if the key is in a custom key store, connect it; otherwise check the AWS health dashboard');
    default:
      return mk(`${service} ${c.operation}${where} failed (${d.name}: ${d.message})`);
  }
}

export function keyStateHint(state: string): string {
  if (/pending ?deletion|PendingDeletion/i.test(state)) return 'the key is scheduled for deletion: cancel the deletion (`aws kms cancel-key-deletion`) and enable the key';
  if (/pending ?import|PendingImport/i.test(state)) return 'the key has no key material yet: import its key material, or use a key with origin AWS_KMS';
  if (/unavailable/i.test(state)) return 'the key\'s custom key store is disconnected: connect it (KMS console → Custom key stores)';
  if (/disabled/i.test(state)) return 'enable the key (KMS console → Key actions → Enable, or `aws kms enable-key`)';
  if (/creating|updating/i.test(state)) return 'the key is still being created or updated; wait a minute and run it again';
  return 'the key must be in state Enabled';
}

// ---------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------

export function dekEncryptionContext(version: number, installationId: string): Record<string, string> {
  return { 'alation-keys:dek-version': String(version), 'alation-keys:installation': installationId };
}

/** Why a KMS key cannot be the installation's KEK, or undefined when it can. */
export function keyMetadataProblem(meta: KeyMetadata | undefined): { message: string; hint: string } | undefined {
  if (!meta) return { message: 'DescribeKey returned no key metadata', hint: 'check the key ARN' };
  const spec = meta.KeySpec ?? meta.CustomerMasterKeySpec;
  if (spec !== 'SYMMETRIC_DEFAULT') {
    return { message: `the key is asymmetric or not an encryption key (KeySpec ${spec ?? '?'})`, hint: 'create a symmetric key: KeySpec SYMMETRIC_DEFAULT, KeyUsage ENCRYPT_DECRYPT' };
  }
  if (meta.KeyUsage !== 'ENCRYPT_DECRYPT') {
    return { message: `the key's usage is ${meta.KeyUsage ?? '?'}, not ENCRYPT_DECRYPT`, hint: 'create a symmetric key with KeyUsage ENCRYPT_DECRYPT' };
  }
  if (meta.KeyState !== 'Enabled') {
    const state = meta.KeyState ?? '?';
    const when = meta.KeyState === 'PendingDeletion' && meta.DeletionDate ? ` (deletion on ${new Date(meta.DeletionDate).toISOString()})` : '';
    return { message: `the key is ${state}${when}, not Enabled`, hint: keyStateHint(state) };
  }
  return undefined;
}

export class AwsKmsKeyProvider implements KeyProvider {
  readonly kind = 'aws-kms' as const;
  readonly sts: STSClient;
  readonly kms: KMSClient;
  readonly credentials: ReturnType<typeof assumedRoleCredentials>;

  constructor(readonly opts: AwsKmsProviderOptions) {
    this.sts = createBaseStsClient(opts.region, opts.profile);
    this.credentials = assumedRoleCredentials(this.sts, {
      roleArn: opts.role_arn,
      externalId: opts.external_id,
      sessionName: roleSessionName(opts.installationId),
    });
    this.kms = createKmsClient(opts.region, this.credentials);
  }

  currentKekId(): string {
    return this.opts.key_arn;
  }

  private context(version: number) {
    return dekEncryptionContext(version, this.opts.installationId);
  }

  private fail(err: unknown, operation: AwsOperation, version?: number): AlationKeysError {
    return translateAwsError(err, { operation, keyArn: this.opts.key_arn, roleArn: this.opts.role_arn, region: this.opts.region, version });
  }

  async generateDataKey(version: number): Promise<GeneratedDataKey> {
    let out;
    try {
      out = await this.kms.send(new GenerateDataKeyCommand({ KeyId: this.opts.key_arn, KeySpec: 'AES_256', EncryptionContext: this.context(version) }));
    } catch (err) {
      throw this.fail(err, 'GenerateDataKey');
    }
    if (!out.Plaintext || out.Plaintext.length !== DEK_LENGTH || !out.CiphertextBlob?.length) {
      throw new ProviderError(`KMS GenerateDataKey on ${this.opts.key_arn} returned no usable data key`);
    }
    this.checkAnsweringKey(out.KeyId, 'GenerateDataKey');
    return { dek: Buffer.from(out.Plaintext), wrappedKey: Buffer.from(out.CiphertextBlob), kekId: this.opts.key_arn };
  }

  async wrapDataKey(version: number, dek: Buffer): Promise<WrappedDataKey> {
    let out;
    try {
      out = await this.kms.send(new EncryptCommand({ KeyId: this.opts.key_arn, Plaintext: dek, EncryptionContext: this.context(version) }));
    } catch (err) {
      throw this.fail(err, 'Encrypt');
    }
    if (!out.CiphertextBlob?.length) throw new ProviderError(`KMS Encrypt on ${this.opts.key_arn} returned no ciphertext`);
    this.checkAnsweringKey(out.KeyId, 'Encrypt');
    return { wrappedKey: Buffer.from(out.CiphertextBlob), kekId: this.opts.key_arn };
  }

  async unwrapDataKey(version: number, wrappedKey: Buffer, kekId: string): Promise<Buffer> {
    // A keyring row is data: a KeyId it names is sent to KMS only when it is this
    // installation's key (or one it replaced), never a key someone wrote into the row.
    if (kekId !== this.opts.key_arn && !(this.opts.previousKeyArns ?? []).includes(kekId)) {
      throw new IntegrityError(
        `data key v${version} names KMS key ${kekId}, which is neither the configured key ${this.opts.key_arn} nor one it replaced; not sent to KMS`,
        { version },
        { hint: 'the keyring row was changed outside alation-keys: restore alation_keys.keyring from a backup' },
      );
    }
    let out;
    try {
      // KeyId pins the key: KMS refuses a ciphertext of any other key.
      out = await this.kms.send(new DecryptCommand({ KeyId: kekId, CiphertextBlob: wrappedKey, EncryptionContext: this.context(version) }));
    } catch (err) {
      throw translateAwsError(err, { operation: 'Decrypt', keyArn: kekId, roleArn: this.opts.role_arn, region: this.opts.region, version });
    }
    if (!out.Plaintext || out.Plaintext.length !== DEK_LENGTH) {
      throw new IntegrityError(`data key v${version} unwrapped by KMS to ${out.Plaintext?.length ?? 0} bytes, not ${DEK_LENGTH}`, { version });
    }
    return Buffer.from(out.Plaintext);
  }

  /** DescribeKey through the assumed role; the key must be usable. */
  async describeKey(): Promise<KeyMetadata> {
    let out;
    try {
      out = await this.kms.send(new DescribeKeyCommand({ KeyId: this.opts.key_arn }));
    } catch (err) {
      throw this.fail(err, 'DescribeKey');
    }
    if (!out.KeyMetadata) throw new ProviderError(`KMS DescribeKey of ${this.opts.key_arn} returned no key metadata`);
    return out.KeyMetadata;
  }

  async checkReachable(): Promise<void> {
    const problem = keyMetadataProblem(await this.describeKey());
    if (problem) throw new ProviderError(`KMS key ${this.opts.key_arn}: ${problem.message}`, { hint: problem.hint });
  }

  private checkAnsweringKey(keyId: string | undefined, op: string): void {
    if (keyId && keyId !== this.opts.key_arn) {
      throw new ProviderError(`KMS ${op} answered with key ${keyId}, not ${this.opts.key_arn}`);
    }
  }

  /** KMS rotates its own key material: a rotation wraps the new DEK under the same key. */
  async addKekVersion(): Promise<null> {
    return null;
  }

  /** Nothing to zero: the key material stays in KMS. */
  dispose(): void {}

  destroy(): void {
    this.kms.destroy();
    this.sts.destroy();
  }
}

export function createAwsKmsKeyProvider(opts: AwsKmsProviderOptions): AwsKmsKeyProvider {
  return new AwsKmsKeyProvider(opts);
}

/** The ARN of whoever the base credentials belong to (for the trust policy). */
export async function callerIdentity(region: string, profile?: string): Promise<{ arn: string; account: string }> {
  const sts = createBaseStsClient(region, profile);
  try {
    const out = await sts.send(new GetCallerIdentityCommand({}));
    return { arn: out.Arn ?? '', account: out.Account ?? '' };
  } catch (err) {
    throw translateAwsError(err, { operation: 'GetCallerIdentity', region });
  } finally {
    sts.destroy();
  }
}
