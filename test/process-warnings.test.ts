/**
 * No process warning reaches an operator's terminal or cron mail: the AWS SDK's
 * NodeVersionSupportWarning (emitted under a Node.js older than 22), Node's own
 * Deprecation/ExperimentalWarning. They are shown only with --verbose, as debug lines.
 * Through the built binary.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInstallation, Installation } from './support/fixtures';
import { BIN, runCli } from './support/cli';

let inst: Installation;
let dir: string;

beforeAll(async () => {
  inst = await createInstallation('process-warnings');
  dir = inst.dir;
});

afterAll(async () => {
  await inst?.cleanup();
});

const KEY = 'arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab';
const ROLE = 'arn:aws:iam::111122223333:role/AlationBYOKRole';

/** No AWS credentials anywhere: byok policy prints its placeholder without reaching AWS. */
const noAws = {
  AWS_ACCESS_KEY_ID: undefined,
  AWS_SECRET_ACCESS_KEY: undefined,
  AWS_SESSION_TOKEN: undefined,
  AWS_PROFILE: undefined,
  AWS_CONFIG_FILE: '/nonexistent/aws-config',
  AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/aws-credentials',
  AWS_EC2_METADATA_DISABLED: 'true',
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: undefined,
};

/** A Node.js older than 22 on PATH (the AWS SDK warns under it), or undefined. */
function oldNode(): string | undefined {
  for (const candidate of ['/usr/bin/node', '/usr/local/bin/node', '/bin/node']) {
    try {
      const v = execFileSync(candidate, ['--version'], { encoding: 'utf8' }).trim();
      if (Number(/^v(\d+)\./.exec(v)?.[1]) < 22) return candidate;
    } catch {
      /* not there */
    }
  }
  return undefined;
}

const old = oldNode();
const testOnOldNode = old ? test : test.skip;
if (!old) console.warn('no Node.js older than 22 here: the NodeVersionSupportWarning case is skipped');

testOnOldNode('the AWS SDK NodeVersionSupportWarning is not printed, only with --verbose', async () => {
  const args = [BIN, 'byok', 'policy', '--key-arn', KEY, '--role-arn', ROLE];
  const quietRun = await runCli(args, { executable: old, env: { ...inst.env, ...noAws } });
  expect(quietRun.code).toBe(0);
  expect(quietRun.stderr).not.toMatch(/NodeVersionSupportWarning|\(node:\d+\)|--trace-warnings/);
  // The one line it has to say: the placeholder principal.
  expect(quietRun.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^warning: cannot tell who you are/)]);

  const verbose = await runCli([...args, '--verbose'], { executable: old, env: { ...inst.env, ...noAws } });
  expect(verbose.code).toBe(0);
  expect(verbose.stderr).toMatch(/^debug: process warning Warning: NodeVersionSupportWarning: The AWS SDK/m);
  expect(verbose.stderr).not.toMatch(/\(node:\d+\)/);
});

test('a warning emitted while a command runs stays off stderr (cron mail) unless --verbose', async () => {
  // Stands in for any Node.js or dependency warning, on whatever runtime runs the tests.
  const preload = path.join(dir, 'emit-warning.js');
  fs.writeFileSync(preload, `setImmediate(() => process.emitWarning('planted for the test', 'DeprecationWarning', 'DEP0999'));\n`);
  const env = { ...inst.env, NODE_OPTIONS: `--require ${preload}` };
  const plain = await runCli(['jobs', 'list', '--quiet'], { env });
  expect(plain.code).toBe(0);
  expect(plain.stderr).toBe('');
  const verbose = await runCli(['jobs', 'list', '--quiet', '--verbose'], { env });
  expect(verbose.code).toBe(0);
  expect(verbose.stderr).toContain('debug: process warning DeprecationWarning: planted for the test');
});
