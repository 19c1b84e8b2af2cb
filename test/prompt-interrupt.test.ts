/**
 * Ctrl-C at a prompt (the byok wizard, a confirmation) is an interruption like Ctrl-C anywhere
 * else: exit 130 and our one line, not the prompt library's "User force closed the prompt with
 * SIGINT" and exit 1. On a real pseudo-terminal, so the prompt library reads the key itself.
 */
import { createInstallation, Installation } from './support/fixtures';
import { runOnTerminal } from './support/terminal';
import { findColumn } from '../src/core/columns';
import { normaliseError, InterruptedError, PROMPT_INTERRUPTED } from '../src/errors';

const CTRL_C = '\x03';

let inst: Installation;

beforeAll(async () => {
  inst = await createInstallation('prompt-interrupt', { values: 20 });
});

afterAll(async () => {
  await inst?.cleanup();
});

function expectOurInterruption(r: { code: number | null; output: string }) {
  expect(r.output).not.toMatch(/force closed/i);
  expect(r.output).toContain(`error: ${PROMPT_INTERRUPTED}`);
  expect(r.output).not.toMatch(/\n\s+at /);
  expect(r.code).toBe(130);
}

test('Ctrl-C at the byok wizard prompt exits 130 with our one line', async () => {
  const r = await runOnTerminal(['byok', 'onboard'], { env: inst.env, waitFor: /AWS region of the KMS key/, keys: CTRL_C });
  expectOurInterruption(r);
});

test('Ctrl-C at a confirmation exits 130 and changes nothing', async () => {
  const r = await runOnTerminal(['columns', 'remove', 'public.credentials.secret', '--force'], {
    env: inst.env,
    waitFor: /Unregister public\.credentials\.secret\?/,
    keys: CTRL_C,
  });
  expectOurInterruption(r);
  expect((await findColumn(inst.db.pool, 'public.credentials.secret'))?.state).toBe('encrypted');
});

test("the prompt library's ExitPromptError maps to an InterruptedError (exit 130)", () => {
  class ExitPromptError extends Error {
    override name = 'ExitPromptError';
  }
  const e = normaliseError(new ExitPromptError('User force closed the prompt with SIGINT'));
  expect(e).toBeInstanceOf(InterruptedError);
  expect({ code: e.exitCode, message: e.message }).toEqual({ code: 130, message: PROMPT_INTERRUPTED });
});
