/**
 * The aws-kms KeyProvider and ARN parsing, against the fake KMS/STS server reached by the
 * real SDK clients through endpoint overrides taken from the environment.
 */
import { randomBytes } from 'node:crypto';
import { AwsKmsKeyProvider, translateAwsError } from '../src/kms/aws-kms';
import { BYOK_ROLE_NAME, parseKeyArn, parsePrincipal, parseRoleArn } from '../src/kms/arn';
import { buildPolicySnippets, BYOK_KMS_ACTIONS, generateExternalId } from '../src/core/byok';
import { IntegrityError, ProviderError, UsageError } from '../src/errors';
import { startFakeAws, type FakeAws } from './support/fake-aws';

const ROLE = `arn:aws:iam::111122223333:role/${BYOK_ROLE_NAME}`;
const EXTERNAL_ID = 'Ext0123456789abcdefghijABCDEFGHIJ0123456789';
const INSTALLATION = '6f1c2f0e-1111-4222-8333-944445555666';

let server: FakeAws;
const providers: AwsKmsKeyProvider[] = [];
const savedEnv = { ...process.env };

function useServerEnv(s: FakeAws, extra: Record<string, string> = {}) {
  for (const k of Object.keys(process.env)) if (k.startsWith('AWS_')) delete process.env[k];
  Object.assign(process.env, {
    AWS_ENDPOINT_URL: s.endpoint,
    AWS_ACCESS_KEY_ID: s.baseCredentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s.baseCredentials.secretAccessKey,
    AWS_REGION: s.region,
    AWS_CONFIG_FILE: '/nonexistent/aws-config',
    AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/aws-credentials',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_MAX_ATTEMPTS: '2',
    ALATION_KEYS_AWS_REQUEST_TIMEOUT_MS: '700',
    ALATION_KEYS_AWS_CONNECT_TIMEOUT_MS: '500',
    ...extra,
  });
}

function provider(keyArn: string, over: Partial<ConstructorParameters<typeof AwsKmsKeyProvider>[0]> = {}): AwsKmsKeyProvider {
  const p = new AwsKmsKeyProvider({
    region: server.region,
    key_arn: keyArn,
    role_arn: ROLE,
    external_id: EXTERNAL_ID,
    installationId: INSTALLATION,
    ...over,
  });
  providers.push(p);
  return p;
}

async function rejection(p: Promise<unknown>): Promise<any> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error('expected a rejection');
}

beforeEach(async () => {
  server = await startFakeAws();
  server.createRole({ arn: ROLE, requireExternalId: EXTERNAL_ID });
  useServerEnv(server);
});

afterEach(async () => {
  for (const p of providers.splice(0)) p.destroy();
  await server.stop();
  process.env = { ...savedEnv };
});

describe('ARN parsing', () => {
  const KEY = 'arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';

  test('accepts a key ARN and a role ARN with or without a path', () => {
    expect(parseKeyArn(KEY)).toEqual({ arn: KEY, partition: 'aws', region: 'eu-west-1', accountId: '123456789012', keyId: '1234abcd-12ab-34cd-56ef-1234567890ab' });
    expect(parseKeyArn('arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab').partition).toBe('aws-us-gov');
    expect(parseRoleArn('arn:aws:iam::123456789012:role/AlationBYOKRole')).toMatchObject({ path: '/', roleName: 'AlationBYOKRole' });
    expect(parseRoleArn('arn:aws-cn:iam::123456789012:role/alation/byok/AlationBYOKRole')).toMatchObject({ path: '/alation/byok/', partition: 'aws-cn' });
  });

  test('refuses a role whose name differs only in case, saying it is case-sensitive', () => {
    for (const name of ['alationbyokrole', 'AlationByokRole', 'ALATIONBYOKROLE']) {
      const err = (() => {
        try {
          parseRoleArn(`arn:aws:iam::123456789012:role/${name}`);
        } catch (e) {
          return e as Error;
        }
      })();
      expect(err).toBeInstanceOf(UsageError);
      expect(err!.message).toContain('must be exactly AlationBYOKRole (case-sensitive)');
      expect(err!.message).toContain(name);
    }
    expect(() => parseRoleArn('arn:aws:iam::123456789012:role/SomeOtherRole')).toThrow('must be named AlationBYOKRole');
  });

  test.each([
    ['arn:aws:kms:eu-west-1:123456789012:alias/prod', /alias.*an alias can be re-pointed/],
    ['alias/prod', /names an alias/],
    ['1234abcd-12ab-34cd-56ef-1234567890ab', /bare key id/],
    ['arn:aws:kms:eu-west-1:12345678901:key/1234abcd-12ab-34cd-56ef-1234567890ab', /account id "12345678901"/],
    ['arn:aws:kms::123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab', /no valid region/],
    ['arn:aws:kms:eu-west-1:123456789012:key/1234ABCD-12AB-34CD-56EF-1234567890AB', /invalid key id/],
    ['arn:aws:s3:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab', /service "s3"/],
    ['arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab:extra', /too many ':'/],
    ['', /is required/],
  ])('key ARN %p is refused', (arn, message) => {
    expect(() => parseKeyArn(arn)).toThrow(UsageError);
    expect(() => parseKeyArn(arn)).toThrow(message);
  });

  test.each([
    ['arn:aws:iam:us-east-1:123456789012:role/AlationBYOKRole', /must not name a region/],
    ['arn:aws:iam::123456789012:user/AlationBYOKRole', /must name a role/],
    ['arn:aws:sts::123456789012:assumed-role/AlationBYOKRole/session', /assumed-role session ARN/],
    ['arn:aws:iam::abc:role/AlationBYOKRole', /invalid account id/],
    ['AlationBYOKRole', /must be a full ARN/],
  ])('role ARN %p is refused', (arn, message) => {
    expect(() => parseRoleArn(arn)).toThrow(message);
  });

  test('principals: account ids become root ARNs, assumed-role sessions their role', () => {
    expect(parsePrincipal('123456789012')).toBe('arn:aws:iam::123456789012:root');
    expect(parsePrincipal('arn:aws:sts::123456789012:assumed-role/Ops/jane')).toBe('arn:aws:iam::123456789012:role/Ops');
    expect(parsePrincipal('arn:aws:iam::123456789012:user/ops/jane')).toBe('arn:aws:iam::123456789012:user/ops/jane');
    expect(() => parsePrincipal('jane')).toThrow(UsageError);
  });
});

describe('ExternalId and policy snippets', () => {
  test('ExternalIds are at least 32 characters of [A-Za-z0-9] and never repeat', () => {
    const ids = new Set(Array.from({ length: 200 }, () => generateExternalId()));
    expect(ids.size).toBe(200);
    for (const id of ids) expect(id).toMatch(/^[A-Za-z0-9]{32,}$/);
  });

  test('snippets grant exactly the four KMS actions on exactly the key, and the trust policy demands the ExternalId', () => {
    const key = parseKeyArn('arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab');
    const role = parseRoleArn('arn:aws:iam::210987654321:role/byok/AlationBYOKRole');
    const s = buildPolicySnippets(key, role, 'arn:aws:iam::210987654321:user/ops', EXTERNAL_ID) as any;
    const perm = JSON.parse(JSON.stringify(s.permissionPolicy));
    expect(perm.Statement).toHaveLength(1);
    expect([...perm.Statement[0].Action].sort()).toEqual(['kms:Decrypt', 'kms:DescribeKey', 'kms:Encrypt', 'kms:GenerateDataKey']);
    expect(perm.Statement[0].Resource).toBe(key.arn);
    expect(perm.Statement[0].Effect).toBe('Allow');
    expect(s.trustPolicy.Statement[0]).toEqual({
      Sid: expect.any(String),
      Effect: 'Allow',
      Principal: { AWS: 'arn:aws:iam::210987654321:user/ops' },
      Action: 'sts:AssumeRole',
      Condition: { StringEquals: { 'sts:ExternalId': EXTERNAL_ID } },
    });
    expect(s.keyPolicyStatement.Principal).toEqual({ AWS: role.arn });
    expect([...s.keyPolicyStatement.Action].sort()).toEqual([...BYOK_KMS_ACTIONS].sort());
  });
});

describe('AwsKmsKeyProvider', () => {
  test('GenerateDataKey and Encrypt wrap under the key with the SPEC 2.2 encryption context; Decrypt unwraps', async () => {
    const key = server.createKey();
    const p = provider(key.arn);
    const g = await p.generateDataKey(7);
    expect(g.dek).toHaveLength(32);
    expect(g.kekId).toBe(key.arn);
    const dek = randomBytes(32);
    const w = await p.wrapDataKey(8, dek);
    expect(w.kekId).toBe(key.arn);
    expect((await p.unwrapDataKey(7, g.wrappedKey, key.arn)).equals(g.dek)).toBe(true);
    expect((await p.unwrapDataKey(8, w.wrappedKey, key.arn)).equals(dek)).toBe(true);

    const gen = server.requests.find((r) => r.operation === 'GenerateDataKey')!;
    expect(gen.encryptionContext).toEqual({ 'alation-keys:dek-version': '7', 'alation-keys:installation': INSTALLATION });
    expect(gen.keyId).toBe(key.arn);
    expect(gen.principalArn).toMatch(/^arn:aws:sts::111122223333:assumed-role\/AlationBYOKRole\//);
    const enc = server.requests.find((r) => r.operation === 'Encrypt')!;
    expect(enc.encryptionContext).toEqual({ 'alation-keys:dek-version': '8', 'alation-keys:installation': INSTALLATION });
    // One AssumeRole served all four calls.
    expect(server.calls.AssumeRole).toBe(1);
  });

  test('a wrapped key unwrapped under another version (wrong context) is an IntegrityError naming the version', async () => {
    const key = server.createKey();
    const p = provider(key.arn);
    const g = await p.generateDataKey(3);
    const err = await rejection(p.unwrapDataKey(4, g.wrappedKey, key.arn));
    expect(err).toBeInstanceOf(IntegrityError);
    expect(err.exitCode).toBe(5);
    expect(err.message).toContain('data key v4');
    const tampered = Buffer.from(g.wrappedKey);
    tampered[tampered.length - 1] ^= 1;
    const err2 = await rejection(p.unwrapDataKey(3, tampered, key.arn));
    expect(err2).toBeInstanceOf(IntegrityError);
    expect(err2.message).toContain('data key v3');
  });

  test('assumed-role credentials are refreshed before they expire', async () => {
    await server.stop();
    server = await startFakeAws({ sessionSeconds: 2 });
    server.createRole({ arn: ROLE, requireExternalId: EXTERNAL_ID });
    useServerEnv(server);
    const key = server.createKey();
    const p = provider(key.arn);
    const first = await p.generateDataKey(1);
    // Use it across several session lifetimes; no call may fail with ExpiredToken.
    const until = Date.now() + 5000;
    let calls = 0;
    while (Date.now() < until) {
      await p.unwrapDataKey(1, first.wrappedKey, key.arn);
      calls++;
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(calls).toBeGreaterThan(10);
    expect(server.requests.filter((r) => r.errorName === 'ExpiredTokenException')).toEqual([]);
    expect(server.calls.AssumeRole).toBeGreaterThanOrEqual(3);
    expect(p.credentials.assumeCount()).toBe(server.calls.AssumeRole);
  });

  test('service-specific endpoint variables are honoured by the KMS client and the STS client of the assumed role', async () => {
    useServerEnv(server, {
      AWS_ENDPOINT_URL: 'http://127.0.0.1:9', // nothing listens here
      AWS_ENDPOINT_URL_KMS: server.endpoint,
      AWS_ENDPOINT_URL_STS: server.endpoint,
    });
    const key = server.createKey();
    const p = provider(key.arn);
    await expect(p.checkReachable()).resolves.toBeUndefined();
    expect(server.calls.AssumeRole).toBe(1);
    expect(server.calls.DescribeKey).toBe(1);

    // Only STS pointed at the dead endpoint: the AssumeRole fails, as STS unreachable.
    useServerEnv(server, { AWS_ENDPOINT_URL: server.endpoint, AWS_ENDPOINT_URL_STS: 'http://127.0.0.1:9' });
    const err = await rejection(provider(key.arn).checkReachable());
    expect(err).toBeInstanceOf(ProviderError);
    expect(err.message).toMatch(/^STS unreachable: AssumeRole/);
  });

  test('a wrong ExternalId is refused with a message about the trust policy', async () => {
    const key = server.createKey();
    const err = await rejection(provider(key.arn, { external_id: 'WrongWrongWrongWrongWrongWrongWrong00' }).generateDataKey(1));
    expect(err).toBeInstanceOf(ProviderError);
    expect(err.exitCode).toBe(4);
    expect(err.message).toContain('STS refused AssumeRole');
    expect(err.hint).toContain('sts:ExternalId');
  });

  test.each([
    ['Disabled', /is disabled \(DisabledException\)/, /enable-key/],
    ['PendingDeletion', /cannot be used for GenerateDataKey in its current state/, /cancel-key-deletion/],
    ['PendingImport', /cannot be used for GenerateDataKey in its current state/, /import its key material/],
    ['Unavailable', /cannot be used for GenerateDataKey in its current state/, /custom key store/],
  ])('a %s key is refused with what to do', async (state, message, hint) => {
    const key = server.createKey({ state });
    const err = await rejection(provider(key.arn).generateDataKey(1));
    expect(err).toBeInstanceOf(ProviderError);
    expect(err.message).toMatch(message);
    expect(err.hint).toMatch(hint);
    const reach = await rejection(provider(key.arn).checkReachable());
    expect(reach.message).toContain(`is ${state}`);
  });

  test('access denied by the key policy names both policies', async () => {
    const key = server.createKey({ keyPolicyAllows: ['arn:aws:iam::111122223333:role/SomebodyElse'] });
    const err = await rejection(provider(key.arn).wrapDataKey(1, randomBytes(32)));
    expect(err.message).toContain('KMS refused Encrypt');
    expect(err.message).toContain('permission policy or the key policy');
  });

  test('throttling past the retries fails with exit 4 after the configured attempts', async () => {
    const key = server.createKey();
    const p = provider(key.arn);
    await p.checkReachable();
    server.setThrottle('always', 'kms');
    const err = await rejection(p.generateDataKey(1));
    expect(err).toBeInstanceOf(ProviderError);
    expect(err.message).toMatch(/^KMS throttled GenerateDataKey on .* after 2 attempts \(ThrottlingException\)/);
    expect(server.requests.filter((r) => r.operation === 'GenerateDataKey').map((r) => r.attempt)).toEqual([1, 2]);
  });

  test('an outage (503, refused connection, or a hung request) is "KMS unreachable" within the timeouts', async () => {
    const key = server.createKey();
    const p = provider(key.arn);
    const g = await p.generateDataKey(1);
    for (const mode of ['503', 'refuse', 'hang'] as const) {
      server.setOutage(true, { service: 'kms', mode });
      const t0 = Date.now();
      const err = await rejection(p.unwrapDataKey(1, g.wrappedKey, key.arn));
      expect(err).toBeInstanceOf(ProviderError);
      expect(err.message).toMatch(/^KMS unreachable: Decrypt on /);
      expect(Date.now() - t0).toBeLessThan(8000);
      server.setOutage(false);
    }
    // And it works again afterwards.
    expect((await p.unwrapDataKey(1, g.wrappedKey, key.arn)).equals(g.dek)).toBe(true);
  });

  test('translateAwsError leaves typed errors alone', () => {
    const e = new UsageError('x');
    expect(translateAwsError(e, { operation: 'Encrypt' })).toBe(e);
  });
});
