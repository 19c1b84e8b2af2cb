/**
 * Strict parsing of the two ARNs BYOK needs. Anything else is a UsageError (exit 2) whose
 * one-line message says what to fix.
 *
 *   key:  arn:<partition>:kms:<region>:<12 digits>:key/<key id>
 *   role: arn:<partition>:iam::<12 digits>:role/[path/]AlationBYOKRole
 */
import { UsageError } from '../errors';

/** The IAM role name every installation uses (case-sensitive). */
export const BYOK_ROLE_NAME = 'AlationBYOKRole';

const PARTITION = /^aws(?:-[a-z]+)*$/;
const REGION = /^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$/;
const ACCOUNT = /^\d{12}$/;
/** A single-region key id (UUID) or a multi-Region key id (mrk-…). */
const KEY_ID = /^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$/;
const PATH_SEGMENT = /^[A-Za-z0-9+=,.@_-]+$/;
const ROLE_NAME = /^[A-Za-z0-9+=,.@_-]{1,64}$/;

export interface KeyArn {
  arn: string;
  partition: string;
  region: string;
  accountId: string;
  keyId: string;
}

export interface RoleArn {
  arn: string;
  partition: string;
  accountId: string;
  /** `/` or `/some/path/`. */
  path: string;
  roleName: string;
}

const KEY_FORMAT = 'arn:aws:kms:REGION:ACCOUNT-ID:key/KEY-ID';
const ROLE_FORMAT = `arn:aws:iam::ACCOUNT-ID:role/${BYOK_ROLE_NAME}`;

/** Throws a UsageError unless `region` looks like an AWS region name (us-east-1). */
export function parseRegion(input: string | undefined, flag = '--region'): string {
  const region = (input ?? '').trim();
  if (!region) throw new UsageError(`${flag} is required (an AWS region such as us-east-1)`);
  if (!REGION.test(region)) throw new UsageError(`${flag} "${region}" is not an AWS region name (like us-east-1)`);
  return region;
}

function splitArn(input: string, flag: string, format: string): string[] {
  if (!input.startsWith('arn:')) {
    throw new UsageError(`${flag} must be a full ARN (${format}), got "${input}"`);
  }
  const parts = input.split(':');
  if (parts.length < 6) throw new UsageError(`${flag} "${input}" is not a complete ARN: expected ${format}`);
  // The resource part may itself contain ':' in general ARNs; neither of ours does.
  if (parts.length > 6) throw new UsageError(`${flag} "${input}" has too many ':' separators: expected ${format}`);
  return parts;
}

export function parseKeyArn(raw: string | undefined, flag = '--key-arn'): KeyArn {
  const input = (raw ?? '').trim();
  if (!input) throw new UsageError(`${flag} is required (${KEY_FORMAT})`);
  if (/^alias\//.test(input)) {
    throw new UsageError(`${flag} names an alias (${input}); give the key ARN (${KEY_FORMAT}): an alias can be re-pointed to another key`);
  }
  if (KEY_ID.test(input)) {
    throw new UsageError(`${flag} is a bare key id; give the full key ARN (${KEY_FORMAT})`);
  }
  const [, partition, service, region, account, resource] = splitArn(input, flag, KEY_FORMAT);
  if (!PARTITION.test(partition)) throw new UsageError(`${flag} has an unknown partition "${partition}" (expected aws, aws-cn, aws-us-gov, …)`);
  if (service !== 'kms') throw new UsageError(`${flag} must be a KMS key ARN (service "kms"), got service "${service}"`);
  if (!REGION.test(region)) throw new UsageError(`${flag} has no valid region ("${region}"): expected ${KEY_FORMAT}`);
  if (!ACCOUNT.test(account)) throw new UsageError(`${flag} has an invalid account id "${account}" (12 digits expected)`);
  if (resource.startsWith('alias/')) {
    throw new UsageError(`${flag} is an alias ARN (${resource}); give the key ARN (${KEY_FORMAT}): an alias can be re-pointed to another key`);
  }
  if (!resource.startsWith('key/')) throw new UsageError(`${flag} must end in key/KEY-ID, got "${resource}"`);
  const keyId = resource.slice('key/'.length);
  if (!KEY_ID.test(keyId)) {
    throw new UsageError(`${flag} has an invalid key id "${keyId}" (a lowercase UUID, or mrk-… for a multi-Region key)`);
  }
  return { arn: input, partition, region, accountId: account, keyId };
}

export function parseRoleArn(raw: string | undefined, flag = '--role-arn'): RoleArn {
  const input = (raw ?? '').trim();
  if (!input) throw new UsageError(`${flag} is required (${ROLE_FORMAT})`);
  const [, partition, service, region, account, resource] = splitArn(input, flag, ROLE_FORMAT);
  if (!PARTITION.test(partition)) throw new UsageError(`${flag} has an unknown partition "${partition}" (expected aws, aws-cn, aws-us-gov, …)`);
  if (service === 'sts' && resource.startsWith('assumed-role/')) {
    throw new UsageError(`${flag} is an assumed-role session ARN; give the role's ARN (${ROLE_FORMAT})`);
  }
  if (service !== 'iam') throw new UsageError(`${flag} must be an IAM role ARN (service "iam"), got service "${service}"`);
  if (region !== '') throw new UsageError(`${flag} must not name a region (IAM ARNs look like ${ROLE_FORMAT})`);
  if (!ACCOUNT.test(account)) throw new UsageError(`${flag} has an invalid account id "${account}" (12 digits expected)`);
  if (!resource.startsWith('role/')) throw new UsageError(`${flag} must name a role (…:role/${BYOK_ROLE_NAME}), got "${resource}"`);
  const segments = resource.slice('role/'.length).split('/');
  const roleName = segments.pop() ?? '';
  for (const seg of segments) {
    if (!PATH_SEGMENT.test(seg)) throw new UsageError(`${flag} has an invalid role path segment "${seg}"`);
  }
  if (!ROLE_NAME.test(roleName)) throw new UsageError(`${flag} has an invalid role name "${roleName}"`);
  if (roleName !== BYOK_ROLE_NAME) {
    if (roleName.toLowerCase() === BYOK_ROLE_NAME.toLowerCase()) {
      throw new UsageError(
        `${flag}: the role name must be exactly ${BYOK_ROLE_NAME} (case-sensitive), got ${roleName}; rename the role to ${BYOK_ROLE_NAME}`,
      );
    }
    throw new UsageError(`${flag}: the role must be named ${BYOK_ROLE_NAME}, got ${roleName}`);
  }
  const path = segments.length ? `/${segments.join('/')}/` : '/';
  return { arn: input, partition, accountId: account, path, roleName };
}

/**
 * A principal for the trust policy: an IAM ARN (root, user, role) or a 12-digit account id.
 * An assumed-role session ARN is turned into its role's ARN (path unknown: `/`).
 */
export function parsePrincipal(raw: string | undefined, flag = '--principal', defaultPartition = 'aws'): string {
  const input = (raw ?? '').trim();
  if (ACCOUNT.test(input)) return `arn:${defaultPartition}:iam::${input}:root`;
  const m = /^arn:(aws(?:-[a-z]+)*):(iam|sts)::(\d{12}):(.+)$/.exec(input);
  if (!m) {
    throw new UsageError(`${flag} must be an IAM principal ARN (arn:aws:iam::ACCOUNT-ID:user/NAME, …:role/NAME, …:root) or an account id`);
  }
  const [, partition, service, account, resource] = m;
  if (service === 'sts') {
    const a = /^assumed-role\/([A-Za-z0-9+=,.@_-]{1,64})\/[^/]+$/.exec(resource);
    if (!a) throw new UsageError(`${flag} "${input}" is not an IAM principal`);
    return `arn:${partition}:iam::${account}:role/${a[1]}`;
  }
  if (resource === 'root' || /^(user|role)\/([A-Za-z0-9+=,.@_-]+\/)*[A-Za-z0-9+=,.@_-]{1,64}$/.test(resource)) return input;
  throw new UsageError(`${flag} "${input}" is not an IAM user, role or root ARN`);
}
