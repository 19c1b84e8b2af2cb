import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import {
  DecryptCommand,
  DescribeKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  KMSClient,
  type KMSClientConfig,
} from '@aws-sdk/client-kms';
import { AssumeRoleCommand, GetCallerIdentityCommand, STSClient, type STSClientConfig } from '@aws-sdk/client-sts';
import { fakeAwsAdmin, startFakeAws, type FakeAws, type StartFakeAwsOptions } from './support/fake-aws';

interface Creds {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

const ACCOUNT = '111122223333';
const ROLE_ARN = 'arn:aws:iam::444455556666:role/alation/byok/AlationKeysRole';
const EXTERNAL_ID = 'alation-ext-123';

let server: FakeAws;
const clients: Array<{ destroy(): void }> = [];

async function start(opts?: StartFakeAwsOptions): Promise<FakeAws> {
  await server?.stop();
  server = await startFakeAws(opts);
  return server;
}

function kms(credentials: Creds = server.baseCredentials, extra: Partial<KMSClientConfig> = {}): KMSClient {
  const client = new KMSClient({ region: server.region, endpoint: server.endpoint, credentials, maxAttempts: 1, ...extra });
  clients.push(client);
  return client;
}

function sts(credentials: Creds = server.baseCredentials, extra: Partial<STSClientConfig> = {}): STSClient {
  const client = new STSClient({ region: server.region, endpoint: server.endpoint, credentials, maxAttempts: 1, ...extra });
  clients.push(client);
  return client;
}

/** AssumeRole through the real STS client; returns credentials ready for KMSClient. */
async function assume(roleArn = ROLE_ARN, externalId: string | undefined = EXTERNAL_ID, sessionName = 'keys-test'): Promise<Creds> {
  const out = await sts().send(new AssumeRoleCommand({ RoleArn: roleArn, RoleSessionName: sessionName, ExternalId: externalId }));
  const c = out.Credentials!;
  return { accessKeyId: c.AccessKeyId!, secretAccessKey: c.SecretAccessKey!, sessionToken: c.SessionToken! };
}

/** Resolves with the rejection of `p` (fails the test if it resolves). */
async function rejection(p: Promise<unknown>): Promise<Error & { $metadata?: { httpStatusCode?: number }; code?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected the call to fail, but it succeeded');
}

beforeEach(async () => {
  await start();
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await server.stop();
});

describe('STS', () => {
  beforeEach(() => server.createRole({ arn: ROLE_ARN, requireExternalId: EXTERNAL_ID }));

  test('GetCallerIdentity returns the operator for base credentials and the assumed role for sessions', async () => {
    const me = await sts().send(new GetCallerIdentityCommand({}));
    expect(me).toMatchObject({ Account: ACCOUNT, Arn: `arn:aws:iam::${ACCOUNT}:user/operator` });
    expect(me.UserId).toMatch(/^AIDA[A-Z2-7]{17}$/);

    const session = await sts(await assume()).send(new GetCallerIdentityCommand({}));
    expect(session.Arn).toBe('arn:aws:sts::444455556666:assumed-role/AlationKeysRole/keys-test');
    expect(session.Account).toBe('444455556666');
    expect(session.UserId).toMatch(/^AROA[A-Z2-7]{17}:keys-test$/);
  });

  test('AssumeRole with the right ExternalId returns session credentials (role path stripped in the ARN)', async () => {
    const before = Date.now();
    const out = await sts().send(new AssumeRoleCommand({ RoleArn: ROLE_ARN, RoleSessionName: 'sess-1', ExternalId: EXTERNAL_ID }));
    expect(out.Credentials?.AccessKeyId).toMatch(/^ASIA[A-Z2-7]{16}$/);
    expect(out.Credentials?.SecretAccessKey).toHaveLength(40);
    expect(out.Credentials?.SessionToken?.length).toBeGreaterThan(100);
    expect(out.Credentials?.Expiration).toBeInstanceOf(Date);
    const lifetime = out.Credentials!.Expiration!.getTime() - before;
    expect(lifetime).toBeGreaterThan(3590_000);
    expect(lifetime).toBeLessThanOrEqual(3601_000);
    expect(out.AssumedRoleUser?.Arn).toBe('arn:aws:sts::444455556666:assumed-role/AlationKeysRole/sess-1');
  });

  test('AssumeRole with a wrong or missing ExternalId, of an unknown role, or by an untrusted caller is AccessDenied', async () => {
    const client = sts();
    const wrong = await rejection(client.send(new AssumeRoleCommand({ RoleArn: ROLE_ARN, RoleSessionName: 'ss', ExternalId: 'nope' })));
    expect(wrong.name).toBe('AccessDenied');
    expect(wrong.$metadata?.httpStatusCode).toBe(403);
    expect(wrong.message).toBe(
      `User: arn:aws:iam::${ACCOUNT}:user/operator is not authorized to perform: sts:AssumeRole on resource: ${ROLE_ARN}`);

    const missing = await rejection(client.send(new AssumeRoleCommand({ RoleArn: ROLE_ARN, RoleSessionName: 'ss' })));
    expect(missing.name).toBe('AccessDenied');

    const unknownRole = 'arn:aws:iam::444455556666:role/Nope';
    const unknown = await rejection(client.send(new AssumeRoleCommand({ RoleArn: unknownRole, RoleSessionName: 'ss' })));
    expect(unknown.name).toBe('AccessDenied');
    expect(unknown.message).toContain(`on resource: ${unknownRole}`);

    const trusting = 'arn:aws:iam::444455556666:role/OnlyOperator';
    server.createRole({ arn: trusting, requireExternalId: null, trustedPrincipals: [`arn:aws:iam::${ACCOUNT}:user/operator`] });
    const stranger = server.createCredentials(`arn:aws:iam::${ACCOUNT}:user/stranger`);
    const untrusted = await rejection(sts(stranger).send(new AssumeRoleCommand({ RoleArn: trusting, RoleSessionName: 'ss' })));
    expect(untrusted.name).toBe('AccessDenied');
    expect(untrusted.message).toContain('User: arn:aws:iam::111122223333:user/stranger is not authorized');
    await expect(client.send(new AssumeRoleCommand({ RoleArn: trusting, RoleSessionName: 'ss' }))).resolves.toBeDefined();
  });

  test('a role without an ExternalId condition can be assumed without one', async () => {
    const open = 'arn:aws:iam::444455556666:role/NoCondition';
    server.createRole({ arn: open, requireExternalId: null });
    const out = await sts().send(new AssumeRoleCommand({ RoleArn: open, RoleSessionName: 'free' }));
    expect(out.AssumedRoleUser?.Arn).toBe('arn:aws:sts::444455556666:assumed-role/NoCondition/free');
  });

  test('DurationSeconds is honoured when shorter than the server maximum, capped otherwise', async () => {
    const client = sts();
    const t0 = Date.now();
    const short = await client.send(new AssumeRoleCommand({ RoleArn: ROLE_ARN, RoleSessionName: 'ss', ExternalId: EXTERNAL_ID, DurationSeconds: 900 }));
    expect(short.Credentials!.Expiration!.getTime() - t0).toBeLessThanOrEqual(901_000);
    expect(short.Credentials!.Expiration!.getTime() - t0).toBeGreaterThan(890_000);
    const long = await client.send(new AssumeRoleCommand({ RoleArn: ROLE_ARN, RoleSessionName: 'ss', ExternalId: EXTERNAL_ID, DurationSeconds: 43200 }));
    expect(long.Credentials!.Expiration!.getTime() - t0).toBeLessThanOrEqual(3601_000);
  });

  test('unknown access keys and session keys with the wrong token are rejected', async () => {
    const bogus = { accessKeyId: 'AKIANOTAREALKEY00000', secretAccessKey: 'x' };
    expect((await rejection(sts(bogus).send(new GetCallerIdentityCommand({})))).name).toBe('InvalidClientTokenId');
    expect((await rejection(kms(bogus).send(new DescribeKeyCommand({ KeyId: server.createKey().arn })))).name)
      .toBe('UnrecognizedClientException');
    const session = await assume();
    const forged = { ...session, sessionToken: 'forged' };
    expect((await rejection(sts(forged).send(new GetCallerIdentityCommand({})))).name).toBe('InvalidClientTokenId');
  });
});

describe('KMS', () => {
  test('DescribeKey returns the key metadata (by key id, ARN or alias)', async () => {
    const { keyId, arn } = server.createKey();
    server.createAlias('alias/alation-master', arn);
    const client = kms();
    const { KeyMetadata: md } = await client.send(new DescribeKeyCommand({ KeyId: arn }));
    expect(md).toMatchObject({
      KeyId: keyId,
      Arn: `arn:aws:kms:us-east-1:${ACCOUNT}:key/${keyId}`,
      AWSAccountId: ACCOUNT,
      KeySpec: 'SYMMETRIC_DEFAULT',
      KeyUsage: 'ENCRYPT_DECRYPT',
      KeyState: 'Enabled',
      Enabled: true,
      KeyManager: 'CUSTOMER',
      Origin: 'AWS_KMS',
    });
    expect(md?.CreationDate).toBeInstanceOf(Date);
    expect(Math.abs(md!.CreationDate!.getTime() - Date.now())).toBeLessThan(10_000);
    expect((await client.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata?.Arn).toBe(arn);
    expect((await client.send(new DescribeKeyCommand({ KeyId: 'alias/alation-master' }))).KeyMetadata?.Arn).toBe(arn);
  });

  test('unknown keys, and keys of another region, are NotFoundException', async () => {
    const client = kms();
    const missing = `arn:aws:kms:us-east-1:${ACCOUNT}:key/00000000-0000-0000-0000-000000000000`;
    const err = await rejection(client.send(new DescribeKeyCommand({ KeyId: missing })));
    expect(err.name).toBe('NotFoundException');
    expect(err.message).toBe(`Key '${missing}' does not exist`);
    expect(err.$metadata?.httpStatusCode).toBe(400);
    const west = server.createKey({ region: 'us-west-2' });
    expect((await rejection(client.send(new DescribeKeyCommand({ KeyId: west.arn })))).name).toBe('NotFoundException');
    const westClient = kms(server.baseCredentials, { region: 'us-west-2' });
    expect((await westClient.send(new DescribeKeyCommand({ KeyId: west.arn }))).KeyMetadata?.Arn).toBe(west.arn);
  });

  test('GenerateDataKey -> Decrypt round trip with an EncryptionContext; a different context is InvalidCiphertextException', async () => {
    const { arn } = server.createKey();
    const client = kms();
    const context = { table: 'rosemeta.secrets', purpose: 'dek' };
    const dk = await client.send(new GenerateDataKeyCommand({ KeyId: arn, KeySpec: 'AES_256', EncryptionContext: context }));
    expect(dk.KeyId).toBe(arn);
    expect(dk.Plaintext).toHaveLength(32);
    expect(Buffer.from(dk.CiphertextBlob!).includes(Buffer.from(dk.Plaintext!))).toBe(false);

    // KeyId is optional (the blob names the key) and context key order does not matter.
    const back = await client.send(new DecryptCommand({
      CiphertextBlob: dk.CiphertextBlob, EncryptionContext: { purpose: 'dek', table: 'rosemeta.secrets' },
    }));
    expect(back.KeyId).toBe(arn);
    expect(Buffer.from(back.Plaintext!).equals(Buffer.from(dk.Plaintext!))).toBe(true);

    const wrong = await rejection(client.send(new DecryptCommand({
      CiphertextBlob: dk.CiphertextBlob, EncryptionContext: { ...context, purpose: 'other' },
    })));
    expect(wrong.name).toBe('InvalidCiphertextException');
    const none = await rejection(client.send(new DecryptCommand({ CiphertextBlob: dk.CiphertextBlob })));
    expect(none.name).toBe('InvalidCiphertextException');

    const tampered = Buffer.from(dk.CiphertextBlob!);
    tampered[tampered.length - 1] ^= 1;
    const bad = await rejection(client.send(new DecryptCommand({ CiphertextBlob: tampered, EncryptionContext: context })));
    expect(bad.name).toBe('InvalidCiphertextException');

    const small = await client.send(new GenerateDataKeyCommand({ KeyId: arn, NumberOfBytes: 16 }));
    expect(small.Plaintext).toHaveLength(16);
  });

  test('Encrypt/Decrypt round trip; ciphertexts are randomised; Decrypt with another KeyId is IncorrectKeyException', async () => {
    const a = server.createKey();
    const b = server.createKey();
    const client = kms();
    const plaintext = Buffer.from('the master key material');
    const one = await client.send(new EncryptCommand({ KeyId: a.keyId, Plaintext: plaintext, EncryptionContext: { v: '1' } }));
    const two = await client.send(new EncryptCommand({ KeyId: a.keyId, Plaintext: plaintext, EncryptionContext: { v: '1' } }));
    expect(one.KeyId).toBe(a.arn);
    expect(Buffer.from(one.CiphertextBlob!).equals(Buffer.from(two.CiphertextBlob!))).toBe(false);
    const out = await client.send(new DecryptCommand({ KeyId: a.arn, CiphertextBlob: one.CiphertextBlob, EncryptionContext: { v: '1' } }));
    expect(Buffer.from(out.Plaintext!).toString()).toBe('the master key material');
    const wrongKey = await rejection(client.send(new DecryptCommand({
      KeyId: b.arn, CiphertextBlob: one.CiphertextBlob, EncryptionContext: { v: '1' },
    })));
    expect(wrongKey.name).toBe('IncorrectKeyException');
  });

  test('a disabled key refuses cryptographic operations with DisabledException, but can be described and re-enabled', async () => {
    const { arn } = server.createKey();
    const client = kms();
    const blob = (await client.send(new EncryptCommand({ KeyId: arn, Plaintext: Buffer.from('x') }))).CiphertextBlob;
    server.setKeyState(arn, 'Disabled');
    for (const cmd of [
      new GenerateDataKeyCommand({ KeyId: arn, KeySpec: 'AES_256' }),
      new EncryptCommand({ KeyId: arn, Plaintext: Buffer.from('x') }),
      new DecryptCommand({ CiphertextBlob: blob }),
    ]) {
      const err = await rejection(client.send(cmd as GenerateDataKeyCommand));
      expect(err.name).toBe('DisabledException');
      expect(err.message).toBe(`${arn} is disabled.`);
    }
    const md = (await client.send(new DescribeKeyCommand({ KeyId: arn }))).KeyMetadata;
    expect(md).toMatchObject({ KeyState: 'Disabled', Enabled: false });
    server.setKeyState(arn, 'Enabled');
    await expect(client.send(new DecryptCommand({ CiphertextBlob: blob }))).resolves.toBeDefined();
  });

  test('keys pending deletion or import are KMSInvalidStateException', async () => {
    const client = kms();
    const doomed = server.createKey();
    server.setKeyState(doomed.arn, 'PendingDeletion');
    const err = await rejection(client.send(new GenerateDataKeyCommand({ KeyId: doomed.arn, KeySpec: 'AES_256' })));
    expect(err.name).toBe('KMSInvalidStateException');
    expect(err.message).toBe(`${doomed.arn} is pending deletion.`);
    const md = (await client.send(new DescribeKeyCommand({ KeyId: doomed.arn }))).KeyMetadata;
    expect(md?.KeyState).toBe('PendingDeletion');
    expect(md?.DeletionDate).toBeInstanceOf(Date);

    const importing = server.createKey({ state: 'PendingImport' });
    const err2 = await rejection(client.send(new EncryptCommand({ KeyId: importing.arn, Plaintext: Buffer.from('x') })));
    expect(err2.name).toBe('KMSInvalidStateException');
    expect((await client.send(new DescribeKeyCommand({ KeyId: importing.arn }))).KeyMetadata?.Origin).toBe('EXTERNAL');
  });

  test('asymmetric keys refuse GenerateDataKey with InvalidKeyUsageException but can be described', async () => {
    const client = kms();
    const rsa = server.createKey({ keySpec: 'RSA_2048', keyUsage: 'ENCRYPT_DECRYPT' });
    const err = await rejection(client.send(new GenerateDataKeyCommand({ KeyId: rsa.arn, KeySpec: 'AES_256' })));
    expect(err.name).toBe('InvalidKeyUsageException');
    expect(err.message).toContain('KeySpec value of the KMS key is RSA_2048');
    const md = (await client.send(new DescribeKeyCommand({ KeyId: rsa.arn }))).KeyMetadata;
    expect(md).toMatchObject({ KeySpec: 'RSA_2048', KeyUsage: 'ENCRYPT_DECRYPT', Enabled: true });

    const signing = server.createKey({ keySpec: 'RSA_2048', keyUsage: 'SIGN_VERIFY' });
    expect((await rejection(client.send(new GenerateDataKeyCommand({ KeyId: signing.arn, NumberOfBytes: 32 })))).name)
      .toBe('InvalidKeyUsageException');
    expect((await client.send(new DescribeKeyCommand({ KeyId: signing.arn }))).KeyMetadata?.KeyUsage).toBe('SIGN_VERIFY');
  });

  test('GenerateDataKey validates its arguments', async () => {
    const { arn } = server.createKey();
    const err = await rejection(kms().send(new GenerateDataKeyCommand({ KeyId: arn })));
    expect(err.name).toBe('ValidationException');
  });
});

describe('KMS authorization', () => {
  test('an assumed role works when the key policy names it and is AccessDenied when it does not', async () => {
    server.createRole({ arn: ROLE_ARN, requireExternalId: EXTERNAL_ID });
    const mine = server.createKey({ keyPolicyAllows: [ROLE_ARN] });
    const theirs = server.createKey({ keyPolicyAllows: ['arn:aws:iam::444455556666:role/SomebodyElse'] });
    const client = kms(await assume());
    await expect(client.send(new GenerateDataKeyCommand({ KeyId: mine.arn, KeySpec: 'AES_256' }))).resolves.toBeDefined();
    const err = await rejection(client.send(new GenerateDataKeyCommand({ KeyId: theirs.arn, KeySpec: 'AES_256' })));
    expect(err.name).toBe('AccessDeniedException');
    expect(err.message).toBe(
      'User: arn:aws:sts::444455556666:assumed-role/AlationKeysRole/keys-test is not authorized to perform: ' +
      `kms:GenerateDataKey on resource: ${theirs.arn} because no resource-based policy allows the kms:GenerateDataKey action`);
    expect(server.requests.at(-1)).toMatchObject({
      service: 'kms', operation: 'GenerateDataKey', keyId: theirs.arn, status: 400, errorName: 'AccessDeniedException',
      principalArn: 'arn:aws:sts::444455556666:assumed-role/AlationKeysRole/keys-test',
    });
  });

  test("the role's allowedActions and allowedKeyArns are enforced", async () => {
    const a = server.createKey();
    const b = server.createKey();
    server.createRole({
      arn: ROLE_ARN, requireExternalId: EXTERNAL_ID,
      allowedActions: ['kms:Encrypt', 'kms:DescribeKey'], allowedKeyArns: [a.arn],
    });
    const client = kms(await assume());
    const { CiphertextBlob } = await client.send(new EncryptCommand({ KeyId: a.arn, Plaintext: Buffer.from('x') }));
    const noDecrypt = await rejection(client.send(new DecryptCommand({ CiphertextBlob })));
    expect(noDecrypt.name).toBe('AccessDeniedException');
    expect(noDecrypt.message).toContain('kms:Decrypt on resource');
    expect(noDecrypt.message).toContain('no identity-based policy');
    const otherKey = await rejection(client.send(new DescribeKeyCommand({ KeyId: b.arn })));
    expect(otherKey.name).toBe('AccessDeniedException');
  });

  test('base credentials may use KMS unless baseCredentialsMayUseKms is false', async () => {
    await start({ baseCredentialsMayUseKms: false });
    const { arn } = server.createKey();
    const err = await rejection(kms().send(new DescribeKeyCommand({ KeyId: arn })));
    expect(err.name).toBe('AccessDeniedException');
    expect(err.message).toContain(`User: arn:aws:iam::${ACCOUNT}:user/operator is not authorized to perform: kms:DescribeKey`);
    server.createRole({ arn: ROLE_ARN, requireExternalId: null });
    await expect(kms(await assume(ROLE_ARN, undefined)).send(new DescribeKeyCommand({ KeyId: arn }))).resolves.toBeDefined();
  });

  test('expired session credentials are rejected by KMS and STS', async () => {
    await start({ sessionSeconds: 1 });
    server.createRole({ arn: ROLE_ARN, requireExternalId: EXTERNAL_ID });
    const { arn } = server.createKey();
    const creds = await assume();
    await expect(kms(creds).send(new DescribeKeyCommand({ KeyId: arn }))).resolves.toBeDefined();
    await new Promise((r) => setTimeout(r, 1100));
    const err = await rejection(kms(creds).send(new DescribeKeyCommand({ KeyId: arn })));
    expect(err.name).toBe('ExpiredTokenException');
    expect(err.$metadata?.httpStatusCode).toBe(400);
    expect((await rejection(sts(creds).send(new GetCallerIdentityCommand({})))).name).toBe('ExpiredToken');
  });
});

describe('fault injection', () => {
  test('throttling: maxAttempts 1 sees ThrottlingException; the default retry strategy rides over one throttle', async () => {
    const { arn } = server.createKey();
    server.setThrottle(1);
    const err = await rejection(kms().send(new DescribeKeyCommand({ KeyId: arn })));
    expect(err.name).toBe('ThrottlingException');
    await expect(kms().send(new DescribeKeyCommand({ KeyId: arn }))).resolves.toBeDefined();

    server.resetCounters();
    server.setThrottle(1, 'kms');
    const retrying = kms(server.baseCredentials, { maxAttempts: 3 });
    const out = await retrying.send(new DescribeKeyCommand({ KeyId: arn }));
    expect(out.$metadata.attempts).toBe(2);
    expect(server.calls.DescribeKey).toBe(2);
    expect(server.requests.map((r) => [r.attempt, r.errorName])).toEqual([[1, 'ThrottlingException'], [2, undefined]]);

    server.setThrottle('always', 'sts');
    expect((await rejection(sts().send(new GetCallerIdentityCommand({})))).name).toBe('Throttling');
    expect((await rejection(sts().send(new GetCallerIdentityCommand({})))).name).toBe('Throttling');
    await expect(kms().send(new DescribeKeyCommand({ KeyId: arn }))).resolves.toBeDefined();
    server.clearFaults();
    await expect(sts().send(new GetCallerIdentityCommand({}))).resolves.toBeDefined();
  });

  test("outage '503' fails only the chosen service; the admin API keeps working", async () => {
    server.setOutage(true, { service: 'kms' });
    const created = await fakeAwsAdmin<{ keyId: string; arn: string }>(server.endpoint, 'createKey', {});
    expect(created.arn).toMatch(/^arn:aws:kms:us-east-1:111122223333:key\//);
    const err = await rejection(kms().send(new DescribeKeyCommand({ KeyId: created.arn })));
    expect(err.name).toBe('ServiceUnavailableException');
    expect(err.$metadata?.httpStatusCode).toBe(503);
    await expect(sts().send(new GetCallerIdentityCommand({}))).resolves.toBeDefined();
    server.setOutage(false);
    await expect(kms().send(new DescribeKeyCommand({ KeyId: created.arn }))).resolves.toBeDefined();
  });

  test("outage 'refuse' destroys the connection", async () => {
    const { arn } = server.createKey();
    server.setOutage(true, { mode: 'refuse' });
    const err = await rejection(kms().send(new DescribeKeyCommand({ KeyId: arn })));
    // Outside jest this is a TimeoutError with code ECONNRESET. Inside jest the socket error comes from
    // another realm (not `instanceof Error`), so the SDK's retry middleware wraps it into a plain Error
    // whose message is all that is left.
    expect(`${err.code ?? ''} ${err.message}`).toMatch(/ECONNRESET|socket hang up/);
    expect(err.$metadata?.httpStatusCode).toBeUndefined();
    expect(server.requests.at(-1)).toMatchObject({ operation: 'DescribeKey', status: 0, errorName: 'ConnectionReset' });
  });

  test("outage 'hang' never answers, so a client with a request timeout gives up", async () => {
    const { arn } = server.createKey();
    server.setOutage(true, { service: 'kms', mode: 'hang' });
    // NB: with this SDK, `requestTimeout` alone only logs a warning; throwOnRequestTimeout makes it an error.
    const client = kms(server.baseCredentials, { requestHandler: { requestTimeout: 500, throwOnRequestTimeout: true } });
    const t0 = Date.now();
    const err = await rejection(client.send(new DescribeKeyCommand({ KeyId: arn })));
    expect(err.name).toBe('TimeoutError');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(450);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(server.requests.at(-1)).toMatchObject({ operation: 'DescribeKey', errorName: 'Hang' });
    expect(server.requests.at(-1)?.status).toBeUndefined();
  });

  test('latency can be injected per key or globally', async () => {
    const slow = server.createKey();
    const fast = server.createKey();
    const client = kms();
    server.setLatency(400, slow.arn);
    const timed = async (keyId: string): Promise<number> => {
      const t0 = Date.now();
      await client.send(new DescribeKeyCommand({ KeyId: keyId }));
      return Date.now() - t0;
    };
    expect(await timed(slow.keyId)).toBeGreaterThanOrEqual(390);
    expect(await timed(fast.arn)).toBeLessThan(300);
    server.setLatency(400);
    expect(await timed(fast.arn)).toBeGreaterThanOrEqual(390);
    server.clearFaults();
    expect(await timed(slow.arn)).toBeLessThan(300);
  });

  test('failAfter lets N calls through, then fails every later one until cleared', async () => {
    const { arn } = server.createKey();
    const client = kms();
    server.failAfter('Encrypt', 2, 'KMSInternalException');
    const encrypt = () => client.send(new EncryptCommand({ KeyId: arn, Plaintext: Buffer.from('x') }));
    await expect(encrypt()).resolves.toBeDefined();
    await expect(encrypt()).resolves.toBeDefined();
    const third = await rejection(encrypt());
    expect(third.name).toBe('KMSInternalException');
    expect(third.$metadata?.httpStatusCode).toBe(500);
    expect((await rejection(encrypt())).name).toBe('KMSInternalException');
    await expect(client.send(new DescribeKeyCommand({ KeyId: arn }))).resolves.toBeDefined();
    expect(server.calls.Encrypt).toBe(4);
    server.clearFaults();
    await expect(encrypt()).resolves.toBeDefined();

    server.createRole({ arn: ROLE_ARN, requireExternalId: EXTERNAL_ID });
    server.failAfter('AssumeRole', 0, 'AccessDenied');
    expect((await rejection(assume())).name).toBe('AccessDenied');
  });
});

describe('request log and endpoint configuration', () => {
  test('requests are logged with operation, access key id, key id and encryption context', async () => {
    const { arn } = server.createKey();
    await kms().send(new GenerateDataKeyCommand({ KeyId: arn, KeySpec: 'AES_256', EncryptionContext: { tenant: 't1' } }));
    expect(server.requests).toEqual([{
      service: 'kms', operation: 'GenerateDataKey', accessKeyId: server.baseCredentials.accessKeyId, attempt: 1,
      keyId: arn, keyArn: arn, encryptionContext: { tenant: 't1' },
      principalArn: `arn:aws:iam::${ACCOUNT}:user/operator`, status: 200,
    }]);
    expect(server.calls).toEqual({ GenerateDataKey: 1 });
  });

  test('clients find the server through AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL_STS', async () => {
    const saved = { ...process.env };
    try {
      process.env.AWS_ENDPOINT_URL_KMS = server.endpoint;
      process.env.AWS_ENDPOINT_URL_STS = server.endpoint;
      const { arn } = server.createKey();
      const k = new KMSClient({ region: 'us-east-1', credentials: server.baseCredentials });
      const s = new STSClient({ region: 'us-east-1', credentials: server.baseCredentials });
      clients.push(k, s);
      expect((await k.send(new DescribeKeyCommand({ KeyId: arn }))).KeyMetadata?.Arn).toBe(arn);
      expect((await s.send(new GetCallerIdentityCommand({}))).Arn).toBe(`arn:aws:iam::${ACCOUNT}:user/operator`);
    } finally {
      process.env = saved;
    }
  });
});

describe('standalone server (fake-aws-server)', () => {
  test('prints its endpoint and credentials, is driven through /__admin, and exits on SIGTERM', async () => {
    // Transpile the two support files to a temp dir so the test does not depend on `npm run build`.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const ts = require('typescript') as typeof import('typescript');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-aws-'));
    for (const name of ['fake-aws', 'fake-aws-server']) {
      const src = fs.readFileSync(path.join(__dirname, 'support', `${name}.ts`), 'utf8');
      const { outputText } = ts.transpileModule(src, {
        compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
      });
      fs.writeFileSync(path.join(dir, `${name}.js`), outputText);
    }
    const child = spawn(process.execPath, [path.join(dir, 'fake-aws-server.js'), '--port', '0', '--keys', '1'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout! }).once('line', resolve);
        child.once('exit', () => reject(new Error('fake-aws-server exited before printing')));
      });
      const info = JSON.parse(line) as { endpoint: string; accessKeyId: string; secretAccessKey: string; keyArns: string[] };
      expect(info.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(info.keyArns).toHaveLength(1);

      const creds = { accessKeyId: info.accessKeyId, secretAccessKey: info.secretAccessKey };
      const client = new KMSClient({ region: 'us-east-1', endpoint: info.endpoint, credentials: creds, maxAttempts: 1 });
      clients.push(client);
      await fakeAwsAdmin(info.endpoint, 'setKeyState', { keyId: info.keyArns[0], state: 'Disabled' });
      const err = await rejection(client.send(new EncryptCommand({ KeyId: info.keyArns[0], Plaintext: Buffer.from('x') })));
      expect(err.name).toBe('DisabledException');
      expect(await fakeAwsAdmin(info.endpoint, 'calls')).toEqual({ Encrypt: 1 });
      await expect(fakeAwsAdmin(info.endpoint, 'setKeyState', { keyId: 'nope', state: 'Disabled' }))
        .rejects.toThrow('unknown key nope');
    } finally {
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
