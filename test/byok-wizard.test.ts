/**
 * The guided `byok onboard` on a real terminal (a pty made by script(1)): it asks for the
 * region, key ARN and role ARN, shows the policy snippets, tests, and asks for the key id.
 */
import { spawn, ChildProcess } from 'node:child_process';
import { BIN } from './support/cli';
import { createInstallation, Installation } from './support/fixtures';
import { startFakeAws, type FakeAws } from './support/fake-aws';
import { readKeyring } from '../src/core/keyring';
import { readSettings } from '../src/core/settings';
import { awsEnv, createByokRole, ROLE_ARN } from './byok-support';

let server: FakeAws;
let inst: Installation;

beforeAll(async () => {
  server = await startFakeAws();
  inst = await createInstallation('byokwizard', { values: 20 });
  await createByokRole(server, inst.db.pool);
});

afterAll(async () => {
  await inst?.cleanup();
  await server?.stop();
});

/** Runs the CLI on a pseudo-terminal; `expect` waits for output, `send` types. */
function onTerminal(args: string[]) {
  const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1', TERM: 'dumb', ...inst.env, ...awsEnv(server) };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  const command = [process.execPath, BIN, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const child: ChildProcess = spawn('script', ['-qfec', command, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let output = '';
  let seen = 0;
  child.stdout!.on('data', (d) => (output += d.toString()));
  child.stderr!.on('data', (d) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  // Strip terminal control sequences so assertions read plain text.
  const plain = () => output.replace(/\u001b\[[0-9;?]*[A-Za-z]/g, '').replace(/\r/g, '');
  return {
    async expect(pattern: RegExp, timeoutMs = 30_000): Promise<void> {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const text = plain();
        const rest = text.slice(seen);
        const m = pattern.exec(rest);
        if (m) {
          seen += m.index + m[0].length;
          return;
        }
        if (Date.now() > until) throw new Error(`timed out waiting for ${pattern}; output so far:\n${text}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    send(text: string) {
      child.stdin!.write(text);
    },
    exited,
    output: plain,
    kill: () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      child.stdin!.destroy();
      child.stdout!.destroy();
      child.stderr!.destroy();
    },
  };
}

test('on a terminal, a mistyped key id is not a confirmation: exit 2, nothing changed', async () => {
  const key = server.createKey();
  const keyId = key.arn.split('/').pop()!;
  const t = onTerminal(['byok', 'onboard', '--region', server.region, '--key-arn', key.arn, '--role-arn', ROLE_ARN]);
  try {
    await t.expect(new RegExp(`Type\\s+${keyId}\\s+to confirm`));
    t.send(`${keyId.slice(0, -1)}x\r`);
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([t.exited, new Promise<number>((r) => (timer = setTimeout(() => r(-1), 30_000)))]);
    clearTimeout(timer);
    expect(code).toBe(2);
    expect(t.output()).toContain('not confirmed; nothing was changed');
  } finally {
    t.kill();
  }
  expect((await readSettings(inst.db.pool)).kek_provider).toBe('local');
  expect((await readKeyring(inst.db.pool)).every((k) => k.kek_provider === 'local')).toBe(true);
});

test('on a terminal with flags missing, the wizard asks, shows the snippets, tests, and onboards after the key id is typed', async () => {
  const key = server.createKey();
  const keyId = key.arn.split('/').pop()!;
  const t = onTerminal(['byok', 'onboard']);
  try {
    await t.expect(/AWS region of the KMS key/);
    t.send('us-east-1\r');
    await t.expect(/KMS key ARN/);
    t.send(`${key.arn}\r`);
    await t.expect(/IAM role ARN/);
    t.send(`${ROLE_ARN}\r`);
    await t.expect(/"sts:ExternalId"/);
    await t.expect(/Are the three policies in place\?/);
    t.send('\r');
    await t.expect(/✓ KMS latency/);
    await t.expect(new RegExp(`Type\\s+${keyId}\\s+to confirm`));
    t.send(`${keyId}\r`);
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([t.exited, new Promise<number>((r) => (timer = setTimeout(() => r(-1), 30_000)))]);
    clearTimeout(timer);
    expect({ code, output: code === 0 ? '' : t.output() }).toEqual({ code: 0, output: '' });
    expect(t.output()).toContain(`BYOK enabled with ${key.arn}`);
  } finally {
    t.kill();
  }
  const settings = await readSettings(inst.db.pool);
  expect(settings.kek_provider).toBe('aws-kms');
  expect(settings.aws?.key_arn).toBe(key.arn);
  expect((await readKeyring(inst.db.pool)).every((k) => k.kek_provider === 'aws-kms' && k.kek_id === key.arn)).toBe(true);
});
