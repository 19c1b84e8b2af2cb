/**
 * `byok onboard` end to end on a 500-value installation: all-or-nothing re-wrapping, the
 * switch to aws-kms, what is refused afterwards, rotation with KMS-made DEKs, a KMS outage,
 * and --replace. The real SDK reaches the fake KMS/STS server through AWS_ENDPOINT_URL.
 */
import * as fs from 'node:fs';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { startFakeAws, type FakeAws } from './support/fake-aws';
import { verifyRosemeta } from '../scripts/lib/rosemeta';
import { addPrimaryDataKeyInTransaction, readKeyring, KeyringRow } from '../src/core/keyring';
import { readSettings } from '../src/core/settings';
import { listJobs } from '../src/core/jobs';
import { openKeyring, Keyring } from '../src/core/keyring-client';
import { LocalKeyProvider } from '../src/kms/local';
import { ProviderError } from '../src/errors';
import { applyAwsEnv, awsEnv, byokArgs, createByokRole, ROLE_ARN } from './byok-support';

let server: FakeAws;
let inst: Installation;
let externalId: string;
let installationId: string;
let keyArn: string;
const openedKeyrings: Keyring[] = [];
const savedEnv = { ...process.env };

const env = (extra: Record<string, string | undefined> = {}) => ({ ...inst.env, ...awsEnv(server, extra) });

async function freshKeyring(): Promise<Keyring> {
  const k = await openKeyring({ pool: inst.db.pool, refreshSeconds: 3600 });
  openedKeyrings.push(k);
  return k;
}

async function expectAllValuesDecrypt(keyring: Keyring) {
  const report = await verifyRosemeta(inst.db.pool, keyring, inst.shape!);
  expect(report.mismatched).toEqual([]);
  expect(report.missing).toEqual([]);
  expect(report.checked + report.nulls).toBe(500);
  expect(report.checked).toBeGreaterThan(400);
  return report;
}

/** Keyring rows as comparable plain data (wrapped keys as hex). */
const snapshot = (rows: KeyringRow[]) => rows.map((r) => ({ ...r, wrapped_key: r.wrapped_key?.toString('hex') ?? null }));

beforeAll(async () => {
  server = await startFakeAws();
  inst = await createInstallation('byokonboard', { values: 500 });
  externalId = await createByokRole(server, inst.db.pool);
  installationId = (await readSettings(inst.db.pool)).installation_id!;
  keyArn = server.createKey({ description: 'catalog key' }).arn;
  applyAwsEnv(server);
});

afterAll(async () => {
  for (const k of openedKeyrings) await k.close().catch(() => undefined);
  await inst?.cleanup();
  await server?.stop();
  process.env = { ...savedEnv };
});

beforeEach(() => {
  server.clearFaults();
  server.resetCounters();
});

describe('byok onboard', () => {
  test('a KMS failure after some DEKs were re-wrapped leaves the keyring and settings unchanged and records a failed job', async () => {
    // Two DEKs, so that one can be re-wrapped before the failure.
    await addPrimaryDataKeyInTransaction(inst.db.pool, new LocalKeyProvider(inst.masterKeyFile));
    const keysBefore = snapshot(await readKeyring(inst.db.pool));
    expect(keysBefore.map((k) => [k.version, k.state, k.kek_provider])).toEqual([
      [1, 'active', 'local'],
      [2, 'primary', 'local'],
    ]);
    const settingsBefore = await readSettings(inst.db.pool);

    // The pre-flight round trip makes one Encrypt; the next one (DEK v1) succeeds; DEK v2's fails.
    server.failAfter('Encrypt', 2, 'KMSInternalException');
    const r = await runCli(['byok', 'onboard', ...byokArgs(server, keyArn), '--yes'], { env: env() });
    expect(r.code).toBe(4);
    expect(r.stderr).toMatch(/error: KMS unreachable: Encrypt on .* failed after 2 attempts \(KMSInternalException/);

    const encrypts = server.requests.filter((q) => q.operation === 'Encrypt' && q.encryptionContext?.['alation-keys:dek-version']);
    expect(encrypts.find((q) => q.encryptionContext!['alation-keys:dek-version'] === '1')?.status).toBe(200);
    expect(encrypts.filter((q) => q.encryptionContext!['alation-keys:dek-version'] === '2').every((q) => q.status === 500)).toBe(true);

    expect(snapshot(await readKeyring(inst.db.pool))).toEqual(keysBefore);
    expect(await readSettings(inst.db.pool)).toEqual(settingsBefore);
    expect(settingsBefore.kek_provider).toBe('local');
    expect(settingsBefore.aws).toBeUndefined();
    const jobs = await listJobs(inst.db.pool, { kind: 'byok-onboard' });
    expect(jobs).toHaveLength(1);
    expect(jobs[0].state).toBe('failed');
    expect(jobs[0].error).toContain('rolled back: keyring and settings unchanged');
    expect(JSON.stringify(jobs[0].detail)).not.toContain(externalId);
  });

  test('onboarding re-wraps every DEK with KMS Encrypt, switches the settings, and every value still decrypts without the master key file', async () => {
    const before = await readKeyring(inst.db.pool);
    const r = await runCliJson(['byok', 'onboard', ...byokArgs(server, keyArn), '--yes'], { env: env() });
    expect(r.code).toBe(0);
    expect(r.json.ok).toBe(true);
    expect(r.json.result).toMatchObject({ keyArn, roleArn: ROLE_ARN, region: server.region, rewrapped: 2, versions: [1, 2], replace: false });

    const after = await readKeyring(inst.db.pool);
    expect(after.map((k) => [k.version, k.state, k.kek_provider, k.kek_id])).toEqual([
      [1, 'active', 'aws-kms', keyArn],
      [2, 'primary', 'aws-kms', keyArn],
    ]);
    for (let i = 0; i < after.length; i++) expect(after[i].wrapped_key!.equals(before[i].wrapped_key!)).toBe(false);

    const contexts = server.requests
      .filter((q) => q.operation === 'Encrypt' && q.status === 200 && q.encryptionContext?.['alation-keys:dek-version'])
      .map((q) => q.encryptionContext);
    expect(contexts).toEqual([
      { 'alation-keys:dek-version': '1', 'alation-keys:installation': installationId },
      { 'alation-keys:dek-version': '2', 'alation-keys:installation': installationId },
    ]);

    const settings = await readSettings(inst.db.pool);
    expect(settings.kek_provider).toBe('aws-kms');
    expect(settings.aws).toEqual({ region: server.region, key_arn: keyArn, role_arn: ROLE_ARN, external_id: externalId });
    expect(Date.now() - Date.parse(settings.byok_enabled_at!)).toBeLessThan(60_000);

    const jobs = await listJobs(inst.db.pool, { kind: 'byok-onboard' });
    expect(jobs.map((j) => j.state)).toEqual(['succeeded', 'failed']);
    expect(jobs[0].detail).toMatchObject({ keyArn, rewrapped: 2, versions: [1, 2] });

    // The local master key is no longer involved: move it away and read every value.
    fs.renameSync(inst.masterKeyFile, `${inst.masterKeyFile}.gone`);
    server.resetCounters();
    const keyring = await freshKeyring();
    await expectAllValuesDecrypt(keyring);
    expect(server.calls.Decrypt).toBe(2);
  });

  test('onboarding again to the same region, key and role exits 0 and changes nothing (no job, no re-wrap, no AWS call), with or without --replace', async () => {
    const keysBefore = snapshot(await readKeyring(inst.db.pool));
    const settingsBefore = await readSettings(inst.db.pool);
    const jobsBefore = await listJobs(inst.db.pool, {});

    const again = await runCli(['byok', 'onboard', ...byokArgs(server, keyArn), '--yes'], { env: env() });
    expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: '' });
    expect(again.stdout).toContain('already onboarded to this key; nothing to do');
    const json = await runCliJson(['byok', 'onboard', ...byokArgs(server, keyArn)], { env: env() });
    expect(json.code).toBe(0);
    expect(json.json).toEqual({ ok: true, onboarded: true, changed: false, keyArn, roleArn: ROLE_ARN, region: server.region });
    const replace = await runCli(['byok', 'onboard', ...byokArgs(server, keyArn), '--replace', '--yes'], { env: env() });
    expect(replace.code).toBe(0);
    expect(replace.stdout).toContain('already onboarded to this key; nothing to do');

    expect(snapshot(await readKeyring(inst.db.pool))).toEqual(keysBefore);
    expect(await readSettings(inst.db.pool)).toEqual(settingsBefore);
    expect((await listJobs(inst.db.pool, {})).map((j) => j.id)).toEqual(jobsBefore.map((j) => j.id));
    expect(server.requests).toEqual([]);
  });

  test('afterwards onboarding another key without --replace and going back to local are refused with exit 3; status shows BYOK', async () => {
    const otherKey = server.createKey({ description: 'another key' }).arn;
    const again = await runCli(['byok', 'onboard', ...byokArgs(server, otherKey), '--yes'], { env: env() });
    expect(again.code).toBe(3);
    expect(again.stderr).toContain(`BYOK is already onboarded: data keys are wrapped by ${keyArn}`);
    expect(again.stderr).toContain('--replace');
    const otherRole = await runCli(['byok', 'onboard', ...byokArgs(server, keyArn, ROLE_ARN.replace('111122223333', '444455556666')), '--yes'], { env: env() });
    expect(otherRole.code).toBe(3);
    expect(otherRole.stderr).toContain('--replace');

    const back = await runCli(['byok', 'offboard'], { env: env() });
    expect(back.code).toBe(3);
    expect(back.stderr).toContain('BYOK cannot be undone');
    expect(server.requests).toEqual([]);

    const status = await runCliJson(['status'], { env: env() });
    expect(status.json.provider).toMatchObject({
      kind: 'aws-kms',
      kekId: keyArn,
      reachable: true,
      aws: { region: server.region, keyArn, roleArn: ROLE_ARN, externalId },
    });
    expect(status.json.provider.byokEnabledAt).toBe((await readSettings(inst.db.pool)).byok_enabled_at);
    const human = await runCli(['status'], { env: env() });
    expect(human.stdout).toContain(keyArn);
    expect(human.stdout).toContain(`ExternalId ${externalId}`);
  });

  test('a rotation after onboarding makes a KMS-wrapped DEK with GenerateDataKey and re-encrypts every value', async () => {
    const r = await runCli(['rotate', '--skip-backup-check', '--skip-disk-check', '--settle-time', '0'], { env: env() });
    expect({ code: r.code, stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stderr: '' });
    const keys = await readKeyring(inst.db.pool);
    const primary = keys.find((k) => k.state === 'primary')!;
    expect(primary.version).toBe(3);
    expect(primary.kek_provider).toBe('aws-kms');
    expect(primary.kek_id).toBe(keyArn);
    const gen = server.requests.filter((q) => q.operation === 'GenerateDataKey' && q.status === 200);
    expect(gen.map((q) => q.encryptionContext)).toEqual([{ 'alation-keys:dek-version': '3', 'alation-keys:installation': installationId }]);
    expect(server.calls.Encrypt ?? 0).toBe(0);
    const report = await expectAllValuesDecrypt(await freshKeyring());
    for (const versions of Object.values(report.versions)) expect(Object.keys(versions)).toEqual(['3']);
  });

  test('during a KMS outage the library keeps working from cached DEKs; commands that need KMS fail with exit 4 and change nothing', async () => {
    const keyring = await freshKeyring();
    const keysBefore = snapshot(await readKeyring(inst.db.pool));
    server.setOutage(true, { service: 'kms' });
    try {
      await expectAllValuesDecrypt(keyring);
      await keyring.refresh();
      const sealed = await keyring.encrypt('written during the outage', 'public.credentials.secret');
      expect(await keyring.decrypt(sealed, 'public.credentials.secret')).toBe('written during the outage');

      // A process starting now cannot unwrap its keys.
      const err = await openKeyring({ pool: inst.db.pool }).then(
        () => undefined,
        (e) => e,
      );
      expect(err).toBeInstanceOf(ProviderError);
      expect(err.exitCode).toBe(4);
      expect(err.message).toMatch(/^KMS unreachable: Decrypt on /);

      const rotate = await runCli(['rotate', '--skip-backup-check', '--skip-disk-check', '--settle-time', '0'], { env: env() });
      expect(rotate.code).toBe(4);
      expect(rotate.stderr).toContain('KMS unreachable');

      const check = await runCliJson(['status', '--check'], { env: env() });
      expect(check.code).not.toBe(0);
      expect(check.json.provider.reachable).toBe(false);
      expect(check.json.provider.error).toContain('KMS unreachable');

      const replace = await runCli(['byok', 'onboard', ...byokArgs(server, server.createKey().arn), '--replace', '--yes'], { env: env() });
      expect(replace.code).toBe(4);
      expect(replace.stdout).toMatch(/✗ KMS key is symmetric, ENCRYPT_DECRYPT and Enabled: KMS unreachable/);

      expect(snapshot(await readKeyring(inst.db.pool))).toEqual(keysBefore);
      expect((await readSettings(inst.db.pool)).aws?.key_arn).toBe(keyArn);
    } finally {
      server.setOutage(false);
    }
  });

  test('--replace moves every DEK to another customer key, after which the old key is not needed', async () => {
    const enabledAt = (await readSettings(inst.db.pool)).byok_enabled_at;
    const newKey = server.createKey({ description: 'new catalog key' }).arn;
    const r = await runCli(['byok', 'onboard', ...byokArgs(server, newKey), '--replace', '--yes'], { env: env() });
    expect({ code: r.code, stderr: r.code === 0 ? '' : r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.stdout).toContain('BYOK moved to');
    const keys = await readKeyring(inst.db.pool);
    expect(keys.map((k) => [k.version, k.kek_provider, k.kek_id])).toEqual([
      [1, 'aws-kms', newKey],
      [2, 'aws-kms', newKey],
      [3, 'aws-kms', newKey],
    ]);
    const settings = await readSettings(inst.db.pool);
    expect(settings.aws?.key_arn).toBe(newKey);
    expect(settings.aws?.external_id).toBe(externalId);
    expect(settings.byok_enabled_at).toBe(enabledAt);
    expect(settings.byok_replaced_at).toBeDefined();

    server.setKeyState(keyArn, 'Disabled');
    await expectAllValuesDecrypt(await freshKeyring());
    // The replaced key is recorded: DEKs in backups taken before may still name it.
    expect(settings.aws_previous_key_arns).toEqual([keyArn]);
    server.setKeyState(keyArn, 'Enabled');
  });

  test('a keyring row naming a KMS key that is neither the configured one nor a replaced one is never sent to KMS (exit 5)', async () => {
    const v1 = (await readKeyring(inst.db.pool)).find((k) => k.version === 1)!;
    const foreign = server.createKey({ description: 'someone else\'s key' }).arn;
    server.resetCounters();
    try {
      await inst.db.query('UPDATE alation_keys.keyring SET kek_id = $1 WHERE version = 1', [foreign]);
      const err = await openKeyring({ pool: inst.db.pool, refreshSeconds: 3600 }).catch((e) => e);
      expect(err.exitCode).toBe(5);
      expect(err.message).toContain(`data key v1 names KMS key ${foreign}, which is neither the configured key`);
      const r = await runCli(['rotate', '--dry-run'], { env: env() });
      expect(r.code).toBe(5);
      expect(server.requests.filter((q) => q.operation === 'Decrypt' && JSON.stringify(q).includes(foreign))).toEqual([]);
      // A key replaced before is still accepted (old backups name it).
      await inst.db.query('UPDATE alation_keys.keyring SET kek_id = $1 WHERE version = 1', [keyArn]);
      const old = await openKeyring({ pool: inst.db.pool, refreshSeconds: 3600 }).catch((e) => e);
      // Sent to KMS this time, which refuses: v1 is wrapped under the new key, not the old one.
      expect(old).toBeInstanceOf(Error);
      expect(old.message).not.toContain('neither the configured key');
      expect(server.requests.some((q) => q.operation === 'Decrypt' && JSON.stringify(q).includes(keyArn))).toBe(true);
    } finally {
      await inst.db.query('UPDATE alation_keys.keyring SET kek_id = $1 WHERE version = 1', [v1.kek_id]);
    }
  });

  test('a keyring row KMS cannot decrypt is an integrity error (exit 5) naming the version; nothing changes', async () => {
    const before = snapshot(await readKeyring(inst.db.pool));
    const settingsBefore = await readSettings(inst.db.pool);
    const v1 = (await readKeyring(inst.db.pool)).find((k) => k.version === 1)!;
    const tampered = Buffer.from(v1.wrapped_key!);
    tampered[tampered.length - 1] ^= 0x01;
    await inst.db.query('UPDATE alation_keys.keyring SET wrapped_key = $1 WHERE version = 1', [tampered]);
    try {
      const r = await runCli(['byok', 'onboard', ...byokArgs(server, server.createKey().arn), '--replace', '--yes'], { env: env() });
      expect(r.code).toBe(5);
      expect(r.stderr).toMatch(/error: data key v1 in alation_keys.keyring could not be decrypted by KMS key .* \(InvalidCiphertextException\)/);
      const after = snapshot(await readKeyring(inst.db.pool));
      expect(after.filter((k) => k.version !== 1)).toEqual(before.filter((k) => k.version !== 1));
      expect(after.find((k) => k.version === 1)!.wrapped_key).toBe(tampered.toString('hex'));
      expect(await readSettings(inst.db.pool)).toEqual(settingsBefore);
    } finally {
      await inst.db.query('UPDATE alation_keys.keyring SET wrapped_key = $1 WHERE version = 1', [v1.wrapped_key]);
    }
  });
});
