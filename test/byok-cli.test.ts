/**
 * `byok policy` and `byok test` (and onboarding's refusals) through the built binary, with
 * the real SDK reaching the fake KMS/STS server through AWS_ENDPOINT_URL.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInstallation, Installation } from './support/fixtures';
import { acquireAdvisoryLock } from '../src/db/transaction';
import { runCli, runCliJson } from './support/cli';
import { startFakeAws, type FakeAws } from './support/fake-aws';
import { readKeyring } from '../src/core/keyring';
import { readSettings } from '../src/core/settings';
import { EXTERNAL_ID_SETTING, PLACEHOLDER_PRINCIPAL } from '../src/core/byok';
import { awsEnv, byokArgs, createByokRole, ROLE_ARN } from './byok-support';

let server: FakeAws;
let inst: Installation;
let externalId: string;

const env = (extra: Record<string, string | undefined> = {}) => ({ ...inst.env, ...awsEnv(server, extra) });

beforeAll(async () => {
  server = await startFakeAws();
  inst = await createInstallation('byokcli', { values: 30 });
  externalId = await createByokRole(server, inst.db.pool);
});

afterAll(async () => {
  await inst?.cleanup();
  await server?.stop();
});

beforeEach(async () => {
  server.clearFaults();
  server.resetCounters();
  server.createRole({ arn: ROLE_ARN, requireExternalId: externalId });
});

describe('byok policy', () => {
  test('--json prints the three snippets as valid JSON with exactly the four actions on exactly the key', async () => {
    const key = server.createKey();
    const r = await runCliJson(['byok', 'policy', '--key-arn', key.arn, '--role-arn', ROLE_ARN], { env: env() });
    expect(r.code).toBe(0);
    const doc = r.json;
    expect(doc.externalId).toBe(externalId);
    expect(doc.externalId).toMatch(/^[A-Za-z0-9]{32,}$/);
    // Principal: the caller, from sts:GetCallerIdentity.
    expect(doc.principal).toBe('arn:aws:iam::111122223333:user/operator');
    expect(doc.principalSource).toBe('caller');
    expect(server.calls.GetCallerIdentity).toBe(1);

    const perm = doc.permissionPolicy.Statement;
    expect(perm).toHaveLength(1);
    expect(perm[0].Effect).toBe('Allow');
    expect([...perm[0].Action].sort()).toEqual(['kms:Decrypt', 'kms:DescribeKey', 'kms:Encrypt', 'kms:GenerateDataKey']);
    expect(perm[0].Resource).toBe(key.arn);

    const trust = doc.trustPolicy.Statement;
    expect(trust).toHaveLength(1);
    expect(trust[0].Principal).toEqual({ AWS: 'arn:aws:iam::111122223333:user/operator' });
    expect(trust[0].Action).toBe('sts:AssumeRole');
    expect(trust[0].Condition).toEqual({ StringEquals: { 'sts:ExternalId': externalId } });

    expect(doc.keyPolicyStatement.Principal).toEqual({ AWS: ROLE_ARN });
    expect([...doc.keyPolicyStatement.Action].sort()).toEqual(['kms:Decrypt', 'kms:DescribeKey', 'kms:Encrypt', 'kms:GenerateDataKey']);
    expect(doc.keyPolicyStatement.Effect).toBe('Allow');
  });

  test('the human output holds three parseable JSON snippets; --principal skips GetCallerIdentity; the ExternalId never changes', async () => {
    const key = server.createKey();
    const r = await runCli(['byok', 'policy', '--key-arn', key.arn, '--role-arn', ROLE_ARN, '--principal', '210987654321'], { env: env() });
    expect(r.code).toBe(0);
    expect(server.calls.GetCallerIdentity).toBeUndefined();
    const blocks = r.stdout.split(/\n(?=\d\. )/).slice(1).map((b) => JSON.parse(b.slice(b.indexOf('\n') + 1)));
    expect(blocks).toHaveLength(3);
    expect(blocks[1].Statement[0].Principal).toEqual({ AWS: 'arn:aws:iam::210987654321:root' });
    expect(blocks[1].Statement[0].Condition.StringEquals['sts:ExternalId']).toBe(externalId);
    expect(r.stdout).toContain(`ExternalId of this installation: ${externalId}`);
    const settings = await readSettings(inst.db.pool);
    expect(settings[EXTERNAL_ID_SETTING]).toBe(externalId);
  });

  test('without AWS credentials and without --principal it prints the snippets with a marked placeholder principal and one warning line, exit 0', async () => {
    const key = server.createKey();
    const noCredentials = env({ AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined });
    const r = await runCli(['byok', 'policy', '--key-arn', key.arn, '--role-arn', ROLE_ARN], { env: noCredentials });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Trusted principal: ${PLACEHOLDER_PRINCIPAL} (A PLACEHOLDER: replace it`);
    const blocks = r.stdout.split(/\n(?=\d\. )/).slice(1).map((b) => JSON.parse(b.slice(b.indexOf('\n') + 1)));
    expect(blocks).toHaveLength(3);
    expect(blocks[1].Statement[0].Principal).toEqual({ AWS: PLACEHOLDER_PRINCIPAL });
    expect(blocks[1].Statement[0].Condition.StringEquals['sts:ExternalId']).toBe(externalId);
    const warnings = r.stderr.split('\n').filter((l) => l.startsWith('warning: '));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^warning: cannot tell who you are for the trust policy: .*; the trust policy names a placeholder principal, REPLACE-[A-Z-]+: replace it before use, or run again with --principal ARN$/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);

    const j = await runCliJson(['byok', 'policy', '--key-arn', key.arn, '--role-arn', ROLE_ARN], { env: noCredentials });
    expect(j.code).toBe(0);
    expect(j.json).toMatchObject({ principal: PLACEHOLDER_PRINCIPAL, principalSource: 'placeholder', principalProblem: expect.stringContaining('cannot tell who you are') });
  });

  test("README's first BYOK step works as written on a machine without AWS credentials", async () => {
    const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
    const block = /```sh\n(KEY=.*?)```/s.exec(readme)![1];
    const vars = Object.fromEntries([...block.matchAll(/^(KEY|ROLE)=(\S+)$/gm)].map((m) => [m[1], m[2]]));
    const line = /^alation-keys (byok policy [^#\n]*?)\s*#/m.exec(block)![1];
    const args = line.split(/\s+/).map((a) => a.replace(/^\$(KEY|ROLE)$/, (_m, v) => vars[v]));
    expect(args).toEqual(['byok', 'policy', '--key-arn', vars.KEY, '--role-arn', vars.ROLE]);
    const r = await runCli(args, { env: env({ AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined }) });
    expect({ code: r.code, placeholder: r.stdout.includes(PLACEHOLDER_PRINCIPAL) }).toEqual({ code: 0, placeholder: true });
  });

  test('malformed ARNs are exit 2 with a one-line message', async () => {
    const key = server.createKey();
    const wrongCase = await runCli(['byok', 'policy', '--key-arn', key.arn, '--role-arn', 'arn:aws:iam::111122223333:role/AlationByokRole'], { env: env() });
    expect(wrongCase.code).toBe(2);
    expect(wrongCase.stderr).toMatch(/^error: --role-arn: the role name must be exactly AlationBYOKRole \(case-sensitive\), got AlationByokRole/m);
    const alias = await runCli(['byok', 'policy', '--key-arn', 'arn:aws:kms:us-east-1:111122223333:alias/prod', '--role-arn', ROLE_ARN], { env: env() });
    expect(alias.code).toBe(2);
    expect(alias.stderr).toContain('an alias can be re-pointed');
  });
});

describe('byok test', () => {
  test('a good set-up passes every check with ✓ and changes nothing', async () => {
    const key = server.createKey();
    const before = await readKeyring(inst.db.pool);
    const r = await runCli(['byok', 'test', ...byokArgs(server, key.arn)], { env: env() });
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.filter((l) => l.startsWith('✓ '))).toHaveLength(6);
    expect(r.stdout).toContain('✓ AssumeRole AlationBYOKRole with the ExternalId');
    expect(r.stdout).toContain('✓ AssumeRole without the ExternalId is refused');
    expect(r.stdout).toMatch(/✓ KMS latency: Decrypt median [\d.]+ ms, p95 [\d.]+ ms over 10 calls/);
    expect(r.stdout).not.toContain('✗');
    // The round trip used an encryption context, and both AssumeRoles happened.
    const ops = server.requests.map((q) => q.operation);
    expect(ops).toEqual(expect.arrayContaining(['AssumeRole', 'DescribeKey', 'GenerateDataKey', 'Encrypt', 'Decrypt']));
    expect(server.requests.filter((q) => q.operation === 'AssumeRole').map((q) => q.status)).toEqual([200, 403]);
    for (const q of server.requests.filter((q) => q.service === 'kms' && q.operation !== 'DescribeKey')) {
      expect(q.encryptionContext?.['alation-keys:purpose']).toBe('byok-test');
    }
    expect(await readKeyring(inst.db.pool)).toEqual(before);
    expect((await readSettings(inst.db.pool)).kek_provider).toBe('local');
  });

  test('--json reports the checks and latency; a key in another region than the service warns but passes', async () => {
    const key = server.createKey();
    server.setLatency(25, key.arn);
    const r = await runCliJson(['byok', 'test', ...byokArgs(server, key.arn), '--service-region', 'eu-west-1'], { env: env() });
    expect(r.code).toBe(0);
    expect(r.json.ok).toBe(true);
    expect(r.json.checks.map((c: any) => [c.id, c.status])).toEqual([
      ['arns', 'pass'],
      ['assume-role', 'pass'],
      ['external-id-enforced', 'pass'],
      ['describe-key', 'pass'],
      ['round-trip', 'pass'],
      ['latency', 'warn'],
    ]);
    expect(r.json.latency.medianMs).toBeGreaterThanOrEqual(25);
    expect(r.json.latency.p95Ms).toBeGreaterThanOrEqual(r.json.latency.medianMs);
    const latency = r.json.checks.find((c: any) => c.id === 'latency');
    expect(latency.detail).toContain('the key is in us-east-1 but the service runs in eu-west-1');
  });

  const refusals: Array<{
    name: string;
    setup: () => { args: string[]; env?: Record<string, string | undefined> };
    code: number;
    message: RegExp;
  }> = [
    {
      name: 'a role name in the wrong case',
      setup: () => ({ args: byokArgs(server, server.createKey().arn, 'arn:aws:iam::111122223333:role/alationbyokrole') }),
      code: 2,
      message: /the role name must be exactly AlationBYOKRole \(case-sensitive\), got alationbyokrole/,
    },
    {
      name: 'an alias ARN',
      setup: () => ({ args: byokArgs(server, 'arn:aws:kms:us-east-1:111122223333:alias/catalog') }),
      code: 2,
      message: /--key-arn is an alias ARN \(alias\/catalog\).*an alias can be re-pointed/,
    },
    {
      name: 'a key ARN in another region than --region',
      setup: () => ({ args: ['--region', 'eu-west-1', '--key-arn', server.createKey().arn, '--role-arn', ROLE_ARN] }),
      code: 2,
      message: /the key ARN is in region us-east-1 but --region is eu-west-1/,
    },
    {
      name: 'an asymmetric key',
      setup: () => ({ args: byokArgs(server, server.createKey({ keySpec: 'RSA_2048' }).arn) }),
      code: 4,
      message: /✗ KMS key is symmetric, ENCRYPT_DECRYPT and Enabled: the key is asymmetric or not an encryption key \(KeySpec RSA_2048\)/,
    },
    {
      name: 'a disabled key',
      setup: () => ({ args: byokArgs(server, server.createKey({ state: 'Disabled' }).arn) }),
      code: 4,
      message: /✗ KMS key is symmetric, ENCRYPT_DECRYPT and Enabled: the key is Disabled, not Enabled\n\s+fix: enable the key/,
    },
    {
      name: 'a key pending deletion',
      setup: () => ({ args: byokArgs(server, server.createKey({ state: 'PendingDeletion' }).arn) }),
      code: 4,
      message: /the key is PendingDeletion \(deletion on [^)]+\), not Enabled\n\s+fix: .*cancel-key-deletion/,
    },
    {
      name: 'a key pending import',
      setup: () => ({ args: byokArgs(server, server.createKey({ state: 'PendingImport' }).arn) }),
      code: 4,
      message: /the key is PendingImport, not Enabled\n\s+fix: .*import its key material/,
    },
    {
      name: 'a wrong ExternalId in the trust policy',
      setup: () => {
        server.createRole({ arn: ROLE_ARN, requireExternalId: 'SomeOtherInstallationsExternalId0123456' });
        return { args: byokArgs(server, server.createKey().arn) };
      },
      code: 4,
      message: /✗ AssumeRole AlationBYOKRole with the ExternalId: STS refused AssumeRole of .*AlationBYOKRole \(AccessDenied\)[^\n]*\n\s+fix: fix the trust policy.*"sts:ExternalId"/,
    },
    {
      name: 'a trust policy without the ExternalId condition',
      setup: () => {
        server.createRole({ arn: ROLE_ARN, requireExternalId: null });
        return { args: byokArgs(server, server.createKey().arn) };
      },
      code: 4,
      message: /✗ AssumeRole without the ExternalId is refused: the role can be assumed WITHOUT the ExternalId[^\n]*\n\s+fix: add to the trust policy statement: "Condition": \{"StringEquals": \{"sts:ExternalId": "/,
    },
    {
      name: 'a key policy that does not name the role',
      setup: () => ({ args: byokArgs(server, server.createKey({ keyPolicyAllows: ['arn:aws:iam::111122223333:role/Other'] }).arn) }),
      code: 4,
      message: /KMS refused DescribeKey .*\(AccessDeniedException\): the role's permission policy or the key policy/,
    },
    {
      name: 'KMS throttling past the retries',
      setup: () => {
        server.setThrottle('always', 'kms');
        return { args: byokArgs(server, server.createKey().arn) };
      },
      code: 4,
      message: /KMS throttled DescribeKey on .* after 2 attempts \(ThrottlingException\)/,
    },
    {
      name: 'a KMS outage',
      setup: () => {
        server.setOutage(true, { service: 'kms' });
        return { args: byokArgs(server, server.createKey().arn) };
      },
      code: 4,
      message: /KMS unreachable: DescribeKey on .* failed after 2 attempts/,
    },
    {
      name: 'a hung KMS (request timeout)',
      setup: () => {
        server.setOutage(true, { service: 'kms', mode: 'hang' });
        return { args: byokArgs(server, server.createKey().arn), env: { ALATION_KEYS_AWS_REQUEST_TIMEOUT_MS: '400' } };
      },
      code: 4,
      message: /KMS unreachable: DescribeKey on .* failed after 2 attempts \(TimeoutError/,
    },
    {
      name: 'an STS outage',
      setup: () => {
        server.setOutage(true, { service: 'sts', mode: 'refuse' });
        return { args: byokArgs(server, server.createKey().arn) };
      },
      code: 4,
      message: /✗ AssumeRole AlationBYOKRole with the ExternalId: STS unreachable: AssumeRole/,
    },
  ];

  test.each(refusals.map((r) => [r.name, r] as const))('refuses %s', async (_name, refusal) => {
    const { args, env: extra } = refusal.setup();
    const t0 = Date.now();
    const r = await runCli(['byok', 'test', ...args], { env: env(extra), timeoutMs: 60_000 });
    expect({ code: r.code, out: r.stdout + r.stderr }).toEqual({ code: refusal.code, out: expect.stringMatching(refusal.message) });
    expect(Date.now() - t0).toBeLessThan(30_000);
    if (refusal.code === 4) expect(r.stderr).toMatch(/^error: (1 BYOK check|\d+ BYOK checks) failed/m);
  });

  test('a failed check in --json mode prints one document and exits 4', async () => {
    const key = server.createKey({ state: 'Disabled' });
    const r = await runCliJson(['byok', 'test', ...byokArgs(server, key.arn)], { env: env() });
    expect(r.code).toBe(4);
    expect(r.json.ok).toBe(false);
    const byId = Object.fromEntries(r.json.checks.map((c: any) => [c.id, c.status]));
    expect(byId).toEqual({ arns: 'pass', 'assume-role': 'pass', 'external-id-enforced': 'pass', 'describe-key': 'fail', 'round-trip': 'skip', latency: 'skip' });
  });
});

describe('byok onboard refusals that change nothing', () => {
  test('without --yes and without a terminal it is exit 2 after the test passed; nothing changed', async () => {
    const key = server.createKey();
    const before = await readKeyring(inst.db.pool);
    const r = await runCli(['byok', 'onboard', ...byokArgs(server, key.arn)], { env: env() });
    expect(r.code).toBe(2);
    expect(r.stdout).toContain('This is irreversible:');
    expect(r.stdout).toContain('There is no way back to the local master key');
    expect(r.stderr).toContain('confirmation needed');
    expect(server.calls.Encrypt).toBe(1); // the test's round trip only
    expect(await readKeyring(inst.db.pool)).toEqual(before);
    expect((await readSettings(inst.db.pool)).kek_provider).toBe('local');
  });

  test('missing flags without a terminal are exit 2 naming them', async () => {
    const r = await runCli(['byok', 'onboard', '--region', 'us-east-1'], { env: env() });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('byok onboard needs --key-arn, --role-arn');
  });

  test('--replace before any onboarding is exit 3', async () => {
    const r = await runCli(['byok', 'onboard', ...byokArgs(server, server.createKey().arn), '--replace', '--yes'], { env: env() });
    expect(r.code).toBe(3);
    expect(r.stderr).toContain('still uses the local master key');
    expect(server.requests).toEqual([]);
  });

  test('a failed check stops onboarding with exit 4 before any confirmation', async () => {
    const r = await runCli(['byok', 'onboard', ...byokArgs(server, server.createKey({ keySpec: 'ECC_NIST_P256' }).arn), '--yes'], { env: env() });
    expect(r.code).toBe(4);
    expect(r.stdout).not.toContain('This is irreversible');
    expect(server.calls.Encrypt).toBeUndefined();
    expect((await readSettings(inst.db.pool)).kek_provider).toBe('local');
  });

  test('offboard on a local installation has nothing to do', async () => {
    const r = await runCli(['byok', 'offboard'], { env: env() });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('uses the local master key; nothing to do');
  });
});

describe('credentials and locking', () => {
  test('--profile takes base credentials (and the endpoint) from the shared config files', async () => {
    const creds = server.createCredentials('arn:aws:iam::111122223333:user/profile-operator');
    const config = path.join(inst.dir, 'aws-config');
    const credentials = path.join(inst.dir, 'aws-credentials');
    fs.writeFileSync(config, `[profile byok-ops]\nregion = ${server.region}\nendpoint_url = ${server.endpoint}\n`);
    fs.writeFileSync(credentials, `[byok-ops]\naws_access_key_id = ${creds.accessKeyId}\naws_secret_access_key = ${creds.secretAccessKey}\n`);
    const profileEnv = env({
      AWS_ACCESS_KEY_ID: undefined,
      AWS_SECRET_ACCESS_KEY: undefined,
      AWS_ENDPOINT_URL: undefined,
      AWS_CONFIG_FILE: config,
      AWS_SHARED_CREDENTIALS_FILE: credentials,
    });
    const key = server.createKey();
    const policy = await runCliJson(['--profile', 'byok-ops', 'byok', 'policy', '--key-arn', key.arn, '--role-arn', ROLE_ARN], { env: profileEnv });
    expect({ code: policy.code, stderr: policy.stderr }).toEqual({ code: 0, stderr: '' });
    expect(policy.json.principal).toBe('arn:aws:iam::111122223333:user/profile-operator');

    const test = await runCli(['--profile', 'byok-ops', 'byok', 'test', ...byokArgs(server, key.arn)], { env: profileEnv });
    expect({ code: test.code, stderr: test.stderr }).toEqual({ code: 0, stderr: '' });
    expect(server.requests.filter((q) => q.operation === 'AssumeRole').every((q) => q.accessKeyId === creds.accessKeyId)).toBe(true);

    // Without the profile there are no credentials at all (and no endpoint): exit 4, saying so.
    const none = await runCli(['byok', 'test', ...byokArgs(server, key.arn)], {
      env: { ...profileEnv, AWS_ENDPOINT_URL: server.endpoint },
    });
    expect(none.code).toBe(4);
    expect(none.stdout).toContain('no AWS credentials found for STS AssumeRole');
  });

  test('onboarding while another job holds the maintenance lock is exit 3 and changes nothing', async () => {
    const lock = await acquireAdvisoryLock(inst.db.pool, async () => 'a test');
    try {
      const before = await readKeyring(inst.db.pool);
      const r = await runCli(['byok', 'onboard', ...byokArgs(server, server.createKey().arn), '--yes'], { env: env() });
      expect(r.code).toBe(3);
      expect(r.stderr).toContain('another alation-keys job holds the maintenance lock');
      expect(await readKeyring(inst.db.pool)).toEqual(before);
      expect((await readSettings(inst.db.pool)).kek_provider).toBe('local');
      expect(server.calls.Encrypt).toBe(1); // the pre-flight round trip only
    } finally {
      await lock.release();
    }
  });
});
