/**
 * Backups around BYOK: a backup taken under aws-kms names the KMS key ARN, and `backup verify`
 * unwraps its DEKs through KMS (the fake KMS/STS server); a backup from before onboarding still
 * needs only the master key file.
 */
import * as path from 'node:path';
import { createInstallation, Installation } from './support/fixtures';
import { runCli, runCliJson } from './support/cli';
import { startFakeAws, type FakeAws } from './support/fake-aws';
import { readMasterKeyFile } from '../src/kms/master-key-file';
import { awsEnv, byokArgs, createByokRole } from './byok-support';
// Takes backups: skipped, with the reason, where no pg_dump fits the server.
import { testWithPgDump as test } from './support/pg-dump';

let server: FakeAws;
let inst: Installation;
let keyArn: string;
let out: string;

const env = () => ({ ...inst.env, ...awsEnv(server) });

beforeAll(async () => {
  server = await startFakeAws();
  inst = await createInstallation('backupbyok', { values: 60 });
  out = path.join(inst.dir, 'backups');
  await createByokRole(server, inst.db.pool);
  keyArn = server.createKey({ description: 'catalog key' }).arn;
});

afterAll(async () => {
  await inst?.cleanup();
  await server?.stop();
});

test('before and after onboarding: manifests name the master key, then the KMS key; verify checks each with its own KEK', async () => {
  const before = await runCliJson(['backup', '--out', out], { env: env() });
  expect(before.code).toBe(0);
  const mk = readMasterKeyFile(inst.masterKeyFile).keys[0].id;
  expect(before.json.manifest.keys).toMatchObject({ kek_provider: 'local', kek_ids: [mk] });

  const onboard = await runCli(['byok', 'onboard', ...byokArgs(server, keyArn), '--yes'], { env: env() });
  expect(onboard.code).toBe(0);

  const after = await runCliJson(['backup', '--out', out], { env: env() });
  expect(after.code).toBe(0);
  expect(after.json.manifest.keys).toMatchObject({ kek_provider: 'aws-kms', kek_ids: [keyArn], needed_versions: [1] });
  expect(after.json.masterKeyFile).toBeNull();
  expect(after.stderr).not.toMatch(/master key file .* is not inside the dump/);
  expect(after.stderr).toContain(`restoring needs the KMS key ${keyArn}`);

  server.resetCounters();
  const v = await runCliJson(['backup', 'verify', after.json.file], { env: env() });
  expect(v.code).toBe(0);
  expect(v.json.keys).toEqual([expect.objectContaining({ version: 1, kekProvider: 'aws-kms', kekId: keyArn, ok: true })]);
  const decrypts = server.requests.filter((q) => q.operation === 'Decrypt' && q.status === 200);
  expect(decrypts.some((q) => q.encryptionContext?.['alation-keys:dek-version'] === '1')).toBe(true);

  // The pre-onboarding backup still restores with the master key file (not KMS).
  const old = await runCliJson(['backup', 'verify', before.json.file], { env: env() });
  expect(old.code).toBe(0);
  expect(old.json.keys[0]).toMatchObject({ kekProvider: 'local', kekId: mk, ok: true });

  // A disabled KMS key: the BYOK backup can no longer be restored with today's keys.
  server.setKeyState(keyArn, 'Disabled');
  try {
    const bad = await runCliJson(['backup', 'verify', after.json.file], { env: env() });
    expect(bad.code).toBe(5);
    expect(bad.json.keys[0]).toMatchObject({ ok: false, detail: expect.stringMatching(/does not unwrap with today's keys/) });
    expect((await runCli(['backup', 'verify', before.json.file], { env: env() })).code).toBe(0);
  } finally {
    server.setKeyState(keyArn, 'Enabled');
  }
});
