/**
 * BYOK with AWS KMS: the ExternalId, the policy snippets, the pre-flight test and the
 * irreversible onboarding (every DEK re-wrapped under the customer's key in one
 * transaction). Core never prints: commands render what these return.
 */
import { randomInt } from 'node:crypto';
import { Pool } from 'pg';
import { DecryptCommand, DescribeKeyCommand, EncryptCommand, GenerateDataKeyCommand, KMSClient } from '@aws-sdk/client-kms';
import { STSClient } from '@aws-sdk/client-sts';
import { AlationKeysError, PreconditionError, ProviderError, UsageError } from '../errors';
import { requireInitialised } from '../db/migrations';
import { acquireAdvisoryLock, withTransaction } from '../db/transaction';
import { createKeyProvider, ProviderOptions } from '../kms';
import { BYOK_ROLE_NAME, KeyArn, parseKeyArn, parsePrincipal, parseRegion, parseRoleArn, RoleArn } from '../kms/arn';
import {
  assumedRoleCredentials,
  awsErrorName,
  AwsKmsKeyProvider,
  AwsOperation,
  callerIdentity,
  createBaseStsClient,
  createKmsClient,
  keyMetadataProblem,
  roleSessionName,
  translateAwsError,
} from '../kms/aws-kms';
import { KeyProvider } from '../kms/provider';
import { createJob, describeLockHolder, finishJob, JobActorOption, markOrphanedJobs } from './jobs';
import { readKeyring, rewrapKeyring, unwrapKeyring } from './keyring';
import { AwsSettings, ensureSetting, readSettings, Settings, writeSetting } from './settings';
import { count } from '../plural';

/** The KMS actions the role needs, no more. */
export const BYOK_KMS_ACTIONS = ['kms:Decrypt', 'kms:DescribeKey', 'kms:Encrypt', 'kms:GenerateDataKey'] as const;

/** Settings key of the installation's ExternalId (also copied into `aws.external_id` on onboarding). */
export const EXTERNAL_ID_SETTING = 'aws_external_id';

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

export interface ByokTarget {
  region: string;
  key: KeyArn;
  role: RoleArn;
  /** Region the catalog service runs in (latency warning when it differs from the key's). */
  serviceRegion?: string;
}

export interface ByokFlags {
  region?: string;
  keyArn?: string;
  roleArn?: string;
  serviceRegion?: string;
}

/** Parses the flags strictly; malformed input is a UsageError (exit 2). */
export function parseByokTarget(flags: ByokFlags): ByokTarget {
  const region = parseRegion(flags.region);
  const key = parseKeyArn(flags.keyArn);
  const role = parseRoleArn(flags.roleArn);
  const serviceRegion = flags.serviceRegion === undefined ? undefined : parseRegion(flags.serviceRegion, '--service-region');
  return { region, key, role, serviceRegion };
}

/** The flags a command still needs (for the wizard and for the usage error). */
export function missingByokFlags(flags: ByokFlags): string[] {
  const out: string[] = [];
  if (!flags.region) out.push('--region');
  if (!flags.keyArn) out.push('--key-arn');
  if (!flags.roleArn) out.push('--role-arn');
  return out;
}

// ---------------------------------------------------------------------------
// ExternalId
// ---------------------------------------------------------------------------

const ALPHANUMERIC = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
export const EXTERNAL_ID_LENGTH = 40;

/** 40 uniformly random characters of [A-Za-z0-9] (about 238 bits). */
export function generateExternalId(): string {
  let out = '';
  for (let i = 0; i < EXTERNAL_ID_LENGTH; i++) out += ALPHANUMERIC[randomInt(ALPHANUMERIC.length)];
  return out;
}

/** The installation's ExternalId: made once, stored in settings, never changed. */
export async function ensureExternalId(pool: Pool): Promise<string> {
  const settings = await readSettings(pool);
  if (settings.aws?.external_id) {
    // Onboarded installations keep the id they were onboarded with.
    return ensureSetting(pool, EXTERNAL_ID_SETTING, settings.aws.external_id);
  }
  return ensureSetting(pool, EXTERNAL_ID_SETTING, generateExternalId());
}

// ---------------------------------------------------------------------------
// Policy snippets
// ---------------------------------------------------------------------------

export interface PolicySnippets {
  externalId: string;
  principal: string;
  /**
   * `placeholder`: no --principal and the caller could not be told (no AWS credentials on this
   * machine, often not the one that will run the tool): `principal` is PLACEHOLDER_PRINCIPAL,
   * which IAM refuses, and `principalProblem` says why.
   */
  principalSource: 'caller' | 'flag' | 'placeholder';
  /** Why the caller could not be told (set with principalSource `placeholder`). */
  principalProblem?: string;
  /** Set when the principal was derived from an assumed-role session (its path is unknown). */
  principalNote?: string;
  keyArn: string;
  roleArn: string;
  /** Attach to the role AlationBYOKRole. */
  permissionPolicy: object;
  /** The role's trust policy. */
  trustPolicy: object;
  /** Add to the KMS key's key policy. */
  keyPolicyStatement: object;
}

/** The trusted principal of a trust policy printed without one: not an ARN, so IAM refuses the policy until it is replaced. */
export const PLACEHOLDER_PRINCIPAL = 'REPLACE-WITH-THE-ARN-OF-THE-USER-OR-ROLE-THAT-RUNS-ALATION-KEYS';

export function buildPolicySnippets(key: KeyArn, role: RoleArn, principal: string, externalId: string): Omit<PolicySnippets, 'principalSource'> {
  return {
    externalId,
    principal,
    keyArn: key.arn,
    roleArn: role.arn,
    permissionPolicy: {
      Version: '2012-10-17',
      Statement: [
        {
          Sid: 'AlationKeysUseCustomerKey',
          Effect: 'Allow',
          Action: [...BYOK_KMS_ACTIONS],
          Resource: key.arn,
        },
      ],
    },
    trustPolicy: {
      Version: '2012-10-17',
      Statement: [
        {
          Sid: 'AlationKeysAssumeRole',
          Effect: 'Allow',
          Principal: { AWS: principal },
          Action: 'sts:AssumeRole',
          Condition: { StringEquals: { 'sts:ExternalId': externalId } },
        },
      ],
    },
    keyPolicyStatement: {
      Sid: 'AllowAlationBYOKRole',
      Effect: 'Allow',
      Principal: { AWS: role.arn },
      Action: [...BYOK_KMS_ACTIONS],
      Resource: '*',
    },
  };
}

export async function byokPolicy(
  pool: Pool,
  flags: { keyArn?: string; roleArn?: string; principal?: string },
  opts: ProviderOptions = {},
): Promise<PolicySnippets> {
  const key = parseKeyArn(flags.keyArn);
  const role = parseRoleArn(flags.roleArn);
  if (key.partition !== role.partition) {
    throw new UsageError(`--key-arn is in partition ${key.partition} but --role-arn in ${role.partition}; both must be in the same partition`);
  }
  const explicit = flags.principal !== undefined ? parsePrincipal(flags.principal, '--principal', key.partition) : undefined;
  await requireInitialised(pool);
  const externalId = await ensureExternalId(pool);
  if (explicit) return { ...buildPolicySnippets(key, role, explicit, externalId), principalSource: 'flag' };
  let me;
  try {
    me = await callerIdentity(key.region, opts.awsProfile);
  } catch (err) {
    if (!(err instanceof AlationKeysError)) throw err;
    // The snippets are needed before the role exists, often on a machine with no AWS
    // credentials: they are still printed, with a principal IAM refuses until it is replaced.
    return {
      ...buildPolicySnippets(key, role, PLACEHOLDER_PRINCIPAL, externalId),
      principalSource: 'placeholder',
      principalProblem: `cannot tell who you are for the trust policy: ${err.message}`,
    };
  }
  const principal = parsePrincipal(me.arn, 'sts:GetCallerIdentity', key.partition);
  const principalNote = /:assumed-role\//.test(me.arn)
    ? `you are signed in through the assumed role ${principal}; if that role has a path (SSO roles do: /aws-reserved/sso.amazonaws.com/…), pass --principal with its full ARN`
    : undefined;
  return {
    ...buildPolicySnippets(key, role, principal, externalId),
    principalSource: 'caller',
    ...(principalNote ? { principalNote } : {}),
  };
}

// ---------------------------------------------------------------------------
// The pre-flight test
// ---------------------------------------------------------------------------

export type CheckStatus = 'pass' | 'fail' | 'warn' | 'skip';

export interface ByokCheck {
  id: 'arns' | 'assume-role' | 'external-id-enforced' | 'describe-key' | 'round-trip' | 'latency';
  title: string;
  status: CheckStatus;
  detail: string;
  /** What to do about a failure or warning. */
  fix?: string;
  /** The AWS error code behind a failure, when there is one. */
  awsError?: string;
}

export interface LatencyReport {
  samples: number;
  medianMs: number;
  p95Ms: number;
  keyRegion: string;
  serviceRegion: string | null;
}

export interface ByokTestReport {
  ok: boolean;
  /** A check found the input itself inconsistent (exit 2 rather than 4). */
  badInput: boolean;
  region: string;
  keyArn: string;
  roleArn: string;
  externalId: string;
  checks: ByokCheck[];
  latency: LatencyReport | null;
}

export interface ByokTestOptions {
  externalId: string;
  installationId: string;
  profile?: string;
  /** Called as each check finishes (for live rendering). */
  onCheck?: (check: ByokCheck) => void;
  latencySamples?: number;
}

/** Region prefixes that belong to a partition other than `aws`. */
function partitionOfRegion(region: string): string {
  if (region.startsWith('cn-')) return 'aws-cn';
  if (region.startsWith('us-gov-')) return 'aws-us-gov';
  if (region.startsWith('us-isob-')) return 'aws-iso-b';
  if (region.startsWith('us-isof-') || region.startsWith('eu-isoe-')) return region.startsWith('us-isof-') ? 'aws-iso-f' : 'aws-iso-e';
  if (region.startsWith('us-iso-')) return 'aws-iso';
  return 'aws';
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx];
}

function round1(n: number): number {
  return Math.round(n * 10) / 10;
}

const BYOK_CHECK_TITLES: Record<ByokCheck['id'], string> = {
  arns: 'ARNs and region are consistent',
  'assume-role': `AssumeRole ${BYOK_ROLE_NAME} with the ExternalId`,
  'external-id-enforced': 'AssumeRole without the ExternalId is refused',
  'describe-key': 'KMS key is symmetric, ENCRYPT_DECRYPT and Enabled',
  'round-trip': 'GenerateDataKey → Decrypt and Encrypt → Decrypt round trip',
  latency: 'KMS latency',
};
const BYOK_CHECK_ORDER = Object.keys(BYOK_CHECK_TITLES) as Array<ByokCheck['id']>;

/** The checks of one `byok test` run as they are made: each reported to the caller at once. */
class ByokCheckList {
  readonly checks: ByokCheck[] = [];

  constructor(
    private readonly target: ByokTarget,
    private readonly onCheck: ((c: ByokCheck) => void) | undefined,
  ) {}

  add(id: ByokCheck['id'], c: Omit<ByokCheck, 'id' | 'title'>): ByokCheck {
    const check = { id, title: BYOK_CHECK_TITLES[id], ...c };
    this.checks.push(check);
    this.onCheck?.(check);
    return check;
  }

  /** A failed AWS call, translated into what to fix. */
  fail(id: ByokCheck['id'], err: unknown, operation: AwsOperation, extra: Partial<Parameters<typeof translateAwsError>[1]> = {}): ByokCheck {
    const { key, role, region } = this.target;
    const e = translateAwsError(err, { operation, keyArn: key.arn, roleArn: role.arn, region, ...extra });
    return this.add(id, { status: 'fail', detail: e.message, fix: e.hint, awsError: awsErrorName(e) });
  }

  /** Every check after `id` is skipped, saying why. */
  skipAfter(id: ByokCheck['id'], why: string): void {
    for (const next of BYOK_CHECK_ORDER.slice(BYOK_CHECK_ORDER.indexOf(id) + 1)) this.add(next, { status: 'skip', detail: why });
  }
}

export async function runByokTest(target: ByokTarget, opts: ByokTestOptions): Promise<ByokTestReport> {
  const list = new ByokCheckList(target, opts.onCheck);
  const report: ByokTestReport = {
    ok: false,
    badInput: false,
    region: target.region,
    keyArn: target.key.arn,
    roleArn: target.role.arn,
    externalId: opts.externalId,
    checks: list.checks,
    latency: null,
  };
  // 1. ARN and region consistency.
  if (!checkArns(target, list)) {
    report.badInput = true;
    list.skipAfter('arns', 'not run: fix the ARNs first');
    return report;
  }
  const sts: STSClient = createBaseStsClient(target.region, opts.profile);
  let kms: KMSClient | undefined;
  try {
    // 2. AssumeRole with the ExternalId.
    const sessionName = roleSessionName(opts.installationId);
    const credentials = assumedRoleCredentials(sts, { roleArn: target.role.arn, externalId: opts.externalId, sessionName, durationSeconds: 900 });
    try {
      const c = await credentials();
      list.add('assume-role', { status: 'pass', detail: `session credentials valid until ${c.expiration?.toISOString() ?? '?'}` });
    } catch (err) {
      list.fail('assume-role', err, 'AssumeRole');
      list.skipAfter('assume-role', 'not run: the role could not be assumed');
      return report;
    }
    // 3. Without the ExternalId it must be refused.
    await checkExternalIdEnforced(sts, target, opts.externalId, sessionName, list);
    // 4. DescribeKey.
    kms = createKmsClient(target.region, credentials);
    if (!(await checkDescribeKey(kms, target, list))) return report;
    // 5. Round trips with an encryption context.
    const context = { 'alation-keys:installation': opts.installationId, 'alation-keys:purpose': 'byok-test' };
    const blob = await checkRoundTrip(kms, target, context, list);
    if (!blob) return report;
    // 6. Latency.
    report.latency = await measureLatency(kms, target, context, blob, Math.max(3, opts.latencySamples ?? 10), list);
  } finally {
    kms?.destroy();
    sts.destroy();
  }
  report.ok = list.checks.every((c) => c.status === 'pass' || c.status === 'warn');
  return report;
}

function checkArns(target: ByokTarget, list: ByokCheckList): boolean {
  const { key, role } = target;
  const problems: string[] = [];
  if (key.region !== target.region) problems.push(`the key ARN is in region ${key.region} but --region is ${target.region}`);
  if (key.partition !== role.partition) problems.push(`the key is in partition ${key.partition} but the role in ${role.partition}`);
  if (partitionOfRegion(target.region) !== key.partition) {
    problems.push(`region ${target.region} belongs to partition ${partitionOfRegion(target.region)}, the key ARN says ${key.partition}`);
  }
  if (problems.length) {
    list.add('arns', { status: 'fail', detail: problems.join('; '), fix: 'pass the region the key lives in (the 4th field of its ARN) and ARNs of the same partition' });
    return false;
  }
  list.add('arns', {
    status: 'pass',
    detail: `key ${key.keyId} in ${key.region} (account ${key.accountId}); role ${role.path}${role.roleName} in account ${role.accountId}${
      key.accountId !== role.accountId ? ' (cross-account: the key policy must name the role)' : ''
    }`,
  });
  return true;
}

async function checkExternalIdEnforced(sts: STSClient, target: ByokTarget, externalId: string, sessionName: string, list: ByokCheckList): Promise<void> {
  try {
    await assumedRoleCredentials(sts, { roleArn: target.role.arn, externalId: undefined, sessionName, durationSeconds: 900 })();
    list.add('external-id-enforced', {
      status: 'fail',
      detail: 'the role can be assumed WITHOUT the ExternalId: its trust policy does not enforce it (confused-deputy risk)',
      fix: `add to the trust policy statement: "Condition": {"StringEquals": {"sts:ExternalId": "${externalId}"}}`,
    });
  } catch (err) {
    const name = awsErrorName(err);
    if (name === 'AccessDenied' || name === 'AccessDeniedException') {
      list.add('external-id-enforced', { status: 'pass', detail: 'STS refused it (AccessDenied): the trust policy checks sts:ExternalId' });
    } else {
      list.fail('external-id-enforced', err, 'AssumeRole', { withoutExternalId: true });
    }
  }
}

async function checkDescribeKey(kms: KMSClient, target: ByokTarget, list: ByokCheckList): Promise<boolean> {
  const { key } = target;
  try {
    const out = await kms.send(new DescribeKeyCommand({ KeyId: key.arn }));
    const problem = keyMetadataProblem(out.KeyMetadata);
    if (problem) {
      list.add('describe-key', { status: 'fail', detail: problem.message, fix: problem.hint, awsError: undefined });
      list.skipAfter('describe-key', 'not run: the key is not usable');
      return false;
    }
    if (out.KeyMetadata?.Arn && out.KeyMetadata.Arn !== key.arn) {
      list.add('describe-key', { status: 'fail', detail: `KMS describes ${out.KeyMetadata.Arn}, not ${key.arn}`, fix: 'pass the key ARN exactly as KMS shows it' });
      list.skipAfter('describe-key', 'not run: the key is not usable');
      return false;
    }
    const m = out.KeyMetadata!;
    list.add('describe-key', {
      status: 'pass',
      detail: `${m.KeySpec ?? m.CustomerMasterKeySpec}, ${m.KeyUsage}, ${m.KeyState}, origin ${m.Origin ?? '?'}${m.MultiRegion ? ', multi-Region' : ''}`,
    });
    return true;
  } catch (err) {
    list.fail('describe-key', err, 'DescribeKey');
    list.skipAfter('describe-key', 'not run: DescribeKey failed');
    return false;
  }
}

/** GenerateDataKey → Decrypt and Encrypt → Decrypt; returns a ciphertext for the latency samples, or undefined when it failed. */
async function checkRoundTrip(kms: KMSClient, target: ByokTarget, context: Record<string, string>, list: ByokCheckList): Promise<Uint8Array | undefined> {
  const keyId = target.key.arn;
  let op: AwsOperation = 'GenerateDataKey';
  try {
    const g = await kms.send(new GenerateDataKeyCommand({ KeyId: keyId, KeySpec: 'AES_256', EncryptionContext: context }));
    op = 'Decrypt';
    const d = await kms.send(new DecryptCommand({ KeyId: keyId, CiphertextBlob: g.CiphertextBlob, EncryptionContext: context }));
    if (!g.Plaintext || !d.Plaintext || g.Plaintext.length !== 32 || !Buffer.from(g.Plaintext).equals(Buffer.from(d.Plaintext))) {
      throw new ProviderError('KMS Decrypt did not return the data key GenerateDataKey made');
    }
    op = 'Encrypt';
    const probe = Buffer.from(`alation-keys byok test ${new Date().toISOString()}`);
    const e = await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: probe, EncryptionContext: context }));
    op = 'Decrypt';
    const d2 = await kms.send(new DecryptCommand({ KeyId: keyId, CiphertextBlob: e.CiphertextBlob, EncryptionContext: context }));
    if (!d2.Plaintext || !Buffer.from(d2.Plaintext).equals(probe)) throw new ProviderError('KMS Decrypt did not return what Encrypt was given');
    list.add('round-trip', { status: 'pass', detail: 'kms:GenerateDataKey, kms:Encrypt and kms:Decrypt work with an encryption context' });
    return e.CiphertextBlob!;
  } catch (err) {
    list.fail('round-trip', err, op);
    list.skipAfter('round-trip', 'not run: the round trip failed');
    return undefined;
  }
}

async function measureLatency(
  kms: KMSClient,
  target: ByokTarget,
  context: Record<string, string>,
  blob: Uint8Array,
  samples: number,
  list: ByokCheckList,
): Promise<LatencyReport | null> {
  const { key } = target;
  const times: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      const t0 = process.hrtime.bigint();
      await kms.send(new DecryptCommand({ KeyId: key.arn, CiphertextBlob: blob, EncryptionContext: context }));
      times.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  } catch (err) {
    list.fail('latency', err, 'Decrypt');
    return null;
  }
  times.sort((a, b) => a - b);
  const latency: LatencyReport = {
    samples,
    medianMs: round1(percentile(times, 50)),
    p95Ms: round1(percentile(times, 95)),
    keyRegion: key.region,
    serviceRegion: target.serviceRegion ?? null,
  };
  const warnings: string[] = [];
  const fixes: string[] = [];
  if (target.serviceRegion && target.serviceRegion !== key.region) {
    warnings.push(`the key is in ${key.region} but the service runs in ${target.serviceRegion}: every KMS call crosses regions`);
    fixes.push(`use a key in ${target.serviceRegion} (or a multi-Region replica there) to cut latency and keep working when ${key.region} is impaired`);
  }
  if (latency.p95Ms > 1000) {
    warnings.push(`p95 latency ${latency.p95Ms} ms is high`);
    fixes.push('check the network path to KMS (VPC endpoint, proxy)');
  }
  const stats = `Decrypt median ${latency.medianMs} ms, p95 ${latency.p95Ms} ms over ${samples} calls`;
  list.add('latency', {
    status: warnings.length ? 'warn' : 'pass',
    detail: warnings.length ? `${stats}; ${warnings.join('; ')}` : stats,
    fix: fixes.length ? fixes.join('; ') : undefined,
  });
  return latency;
}

// ---------------------------------------------------------------------------
// Onboarding
// ---------------------------------------------------------------------------

export interface OnboardPlan {
  target: ByokTarget;
  replace: boolean;
  externalId: string;
  installationId: string;
  /** Provider now wrapping the DEKs. */
  fromProvider: 'local' | 'aws-kms';
  fromKeyArn: string | null;
  /** DEKs that will be re-wrapped. */
  dataKeys: number;
  /** What becomes irreversible, one sentence each. */
  irreversible: string[];
  /** The installation already uses exactly this region, key and role: nothing to do. */
  alreadyOnboarded: boolean;
}

/** Refuses what cannot be done (exit 3) before anything talks to AWS. */
export async function planOnboarding(pool: Pool, target: ByokTarget, opts: { replace?: boolean }): Promise<OnboardPlan> {
  await requireInitialised(pool);
  const settings = await readSettings(pool);
  const alreadyOnboarded = checkOnboardAllowed(settings, target, !!opts.replace) === 'already-onboarded';
  const externalId = await ensureExternalId(pool);
  const keys = (await readKeyring(pool)).filter((k) => k.state !== 'destroyed' && k.wrapped_key);
  const irreversible = [
    'There is no way back to the local master key: from now on every data key is wrapped only by this KMS key.',
    'The KMS key and the role must stay enabled and reachable, or the catalog stops when it next starts or rotates.',
    'Deleting the KMS key (or losing access to it) destroys every encrypted value, in the database and in backups taken from now on.',
  ];
  if (!opts.replace) irreversible.push('Backups taken before now still need the local master key file: keep a copy of it for as long as you keep those backups.');
  if (opts.replace) irreversible.push(`The previous key ${settings.aws?.key_arn ?? '(unknown)'} will no longer wrap any data key; keep it until no backup needs it.`);
  return {
    target,
    replace: !!opts.replace,
    externalId,
    installationId: settings.installation_id!,
    fromProvider: (settings.kek_provider ?? 'local') as 'local' | 'aws-kms',
    fromKeyArn: settings.aws?.key_arn ?? null,
    dataKeys: keys.length,
    irreversible,
    alreadyOnboarded,
  };
}

/** True when the installation is onboarded to exactly this region, key and role. */
function onboardedTo(settings: Settings, target: ByokTarget): boolean {
  return (
    settings.kek_provider === 'aws-kms' &&
    settings.aws?.key_arn === target.key.arn &&
    settings.aws?.role_arn === target.role.arn &&
    settings.aws?.region === target.region
  );
}

/**
 * Refuses (exit 3) what onboarding cannot do; 'already-onboarded' when the installation uses
 * this very target (with or without --replace), so that a runbook step can run again.
 */
function checkOnboardAllowed(settings: Settings, target: ByokTarget, replace: boolean): 'allowed' | 'already-onboarded' {
  if (!settings.installation_id) throw new PreconditionError('the installation has no id', { hint: 'run `alation-keys init`' });
  if (onboardedTo(settings, target)) return 'already-onboarded';
  const onboarded = settings.kek_provider === 'aws-kms';
  if (onboarded && !replace) {
    throw new PreconditionError(`BYOK is already onboarded: data keys are wrapped by ${settings.aws?.key_arn ?? 'a KMS key'}`, {
      hint: 'to move to another customer key run `alation-keys byok onboard --replace` with its ARNs',
    });
  }
  if (!onboarded && replace) {
    throw new PreconditionError('--replace moves an onboarded installation to another KMS key, but this installation still uses the local master key', {
      hint: 'run `alation-keys byok onboard` without --replace',
    });
  }
  return 'allowed';
}

export interface OnboardResult {
  jobId: number;
  keyArn: string;
  roleArn: string;
  region: string;
  externalId: string;
  rewrapped: number;
  versions: number[];
  replace: boolean;
  previousKeyArn: string | null;
  byokEnabledAt: string;
}

/**
 * The irreversible switch: under the maintenance lock, in one transaction, every DEK is
 * unwrapped with the current provider, re-wrapped with KMS Encrypt, verified by KMS Decrypt,
 * and the settings switch to aws-kms. Any failure rolls all of it back; the job is then
 * recorded as failed in its own statement.
 */
export async function applyOnboarding(
  pool: Pool,
  plan: OnboardPlan,
  opts: ProviderOptions & JobActorOption & { onProgress?: (text: string) => void } = {},
): Promise<OnboardResult> {
  const lock = await acquireAdvisoryLock(pool, (pid) => describeLockHolder(pool, pid));
  let kms: AwsKmsKeyProvider | undefined;
  let from: KeyProvider | undefined;
  try {
    await markOrphanedJobs(pool, { holdingLock: true });
    const settings = await readSettings(pool);
    if (plan.alreadyOnboarded || checkOnboardAllowed(settings, plan.target, plan.replace) === 'already-onboarded') {
      throw new PreconditionError(`the installation already uses key ${plan.target.key.arn} through ${plan.target.role.arn}; nothing to onboard`);
    }
    if ((settings.kek_provider ?? 'local') !== plan.fromProvider) {
      throw new PreconditionError('the key provider changed while onboarding was being prepared; run the command again');
    }
    const installationId = settings.installation_id!;
    const aws: AwsSettings = {
      region: plan.target.region,
      key_arn: plan.target.key.arn,
      role_arn: plan.target.role.arn,
      external_id: plan.externalId,
    };
    from = createKeyProvider(settings, opts);
    kms = new AwsKmsKeyProvider({ ...aws, installationId, profile: opts.awsProfile });
    const job = await createJob(pool, {
      actor: opts.actor,
      kind: 'byok-onboard',
      detail: {
        provider: 'aws-kms',
        keyArn: aws.key_arn,
        roleArn: aws.role_arn,
        region: aws.region,
        replace: plan.replace,
        previousProvider: plan.fromProvider,
        previousKeyArn: plan.fromKeyArn,
      },
    });
    const kmsProvider = kms;
    const fromProvider = from;
    try {
      const result = await withTransaction(pool, async (tx) => {
        opts.onProgress?.(`re-wrapping ${count(plan.dataKeys, 'data key')} with KMS Encrypt`);
        const before = await unwrapKeyring(await readKeyring(tx), fromProvider);
        const rewrapped = await rewrapKeyring(tx, fromProvider, kmsProvider);
        // Prove every new wrapping opens to the same DEK before committing.
        opts.onProgress?.('verifying every re-wrapped data key with KMS Decrypt');
        const rows = await readKeyring(tx);
        const versions: number[] = [];
        for (const row of rows) {
          if (row.state === 'destroyed' || !row.wrapped_key) continue;
          const dek = await kmsProvider.unwrapDataKey(row.version, row.wrapped_key, row.kek_id);
          const expected = before.get(row.version);
          if (!expected || !dek.equals(expected) || row.kek_provider !== 'aws-kms' || row.kek_id !== aws.key_arn) {
            throw new ProviderError(`data key v${row.version} did not survive re-wrapping with KMS; nothing was changed`);
          }
          dek.fill(0);
          versions.push(row.version);
        }
        for (const k of before.values()) k.fill(0);
        const now = new Date().toISOString();
        const enabledAt = plan.replace && settings.byok_enabled_at ? settings.byok_enabled_at : now;
        await writeSetting(tx, 'kek_provider', 'aws-kms');
        await writeSetting(tx, 'aws', aws);
        await writeSetting(tx, 'byok_enabled_at', enabledAt);
        if (plan.replace) await writeSetting(tx, 'byok_replaced_at', now);
        if (plan.replace && plan.fromKeyArn && plan.fromKeyArn !== aws.key_arn) {
          const previous = settings.aws_previous_key_arns ?? [];
          if (!previous.includes(plan.fromKeyArn)) await writeSetting(tx, 'aws_previous_key_arns', [...previous, plan.fromKeyArn]);
        }
        await finishJob(tx, job.id, 'succeeded', undefined, { rewrapped, versions });
        return { rewrapped, versions, enabledAt };
      });
      return {
        jobId: job.id,
        keyArn: aws.key_arn,
        roleArn: aws.role_arn,
        region: aws.region,
        externalId: aws.external_id,
        rewrapped: result.rewrapped,
        versions: result.versions,
        replace: plan.replace,
        previousKeyArn: plan.fromKeyArn,
        byokEnabledAt: result.enabledAt,
      };
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      await finishJob(pool, job.id, 'failed', `${message} (rolled back: keyring and settings unchanged)`).catch(() => undefined);
      throw err;
    }
  } finally {
    kms?.destroy();
    if (from instanceof AwsKmsKeyProvider) from.destroy();
    await lock.release();
  }
}

/** Going back to the local master key is refused once onboarded (exit 3). */
export async function refuseOffboarding(pool: Pool): Promise<{ provider: string }> {
  await requireInitialised(pool);
  const settings = await readSettings(pool);
  if (settings.kek_provider === 'aws-kms') {
    throw new PreconditionError(
      `BYOK cannot be undone: data keys stay wrapped by the customer's KMS key ${settings.aws?.key_arn ?? ''}; there is no way back to the local master key`,
      { hint: 'to move to another KMS key run `alation-keys byok onboard --replace`' },
    );
  }
  return { provider: settings.kek_provider ?? 'local' };
}
