/**
 * `alation-keys completion bash|zsh`: scripts generated from the command tree. The bash script
 * is checked with `bash -n` and driven the way bash drives it (COMP_WORDS, COMP_CWORD, then the
 * completion function fills COMPREPLY through compgen).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { runCli } from './support/cli';
import { tempDir } from './support/fixtures';

const run = promisify(execFile);
let dir: string;
let bashScript: string;

beforeAll(async () => {
  dir = tempDir('completion');
  const r = await runCli(['completion', 'bash']);
  expect(r.code).toBe(0);
  expect(r.stderr).toBe('');
  bashScript = path.join(dir, 'alation-keys.bash');
  fs.writeFileSync(bashScript, r.stdout);
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** What bash offers for the command line `words` (the last word is the one being completed). */
async function complete(...words: string[]): Promise<string[]> {
  const script = `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _alation_keys; printf '%s\\n' "\${COMPREPLY[@]}"`;
  const { stdout } = await run('bash', ['-c', script, 'complete', bashScript, 'alation-keys', ...words], { cwd: dir });
  return stdout.split('\n').filter(Boolean);
}

describe('completion bash', () => {
  test('is valid bash and registers the completion function for alation-keys', async () => {
    await run('bash', ['-n', bashScript]);
    const { stdout } = await run('bash', ['-c', 'source "$1"; complete -p alation-keys', 'check', bashScript]);
    expect(stdout.trim()).toBe('complete -o default -F _alation_keys alation-keys');
  });

  test('completes rot to rotate and rotate --if- to --if-older-than', async () => {
    expect(await complete('rot')).toEqual(['rotate']);
    expect(await complete('rotate', '--if-')).toEqual(['--if-older-than']);
    expect(await complete('ver')).toEqual(['verify']);
    expect(await complete('verify', '--sc')).toEqual(['--scan-limit']);
    expect(await complete('enc')).toEqual(['encrypt']);
    expect(await complete('decr')).toEqual(['decrypt']);
    expect(await complete('encrypt', '--skip-u')).toEqual(['--skip-undecryptable']);
  });

  test('follows the command tree: subcommands, their own options, global options after them, and option values', async () => {
    expect(await complete('columns', '')).toEqual(['list', 'add', 'remove']);
    expect(await complete('--json', 'byok', 'onb')).toEqual(['onboard']);
    expect(await complete('backup', '--o')).toEqual(['--out']);
    expect(await complete('rotate', '--quiet', '--data')).toEqual(['--data-dir', '--database-url']);
    // The word after an option that takes a value is that value (here a file name), not a command.
    fs.writeFileSync(path.join(dir, 'rotate-notes'), '');
    expect(await complete('--master-key-file', 'rot')).toEqual(['rotate-notes']);
    expect(await complete('--master-key-file', 'x.key', 'rot')).toEqual(['rotate']);
    expect(await complete('completion', '')).toEqual(['bash', 'zsh']);
  });

  test('never drifts: every command of --help is offered', async () => {
    const help = await runCli(['--help']);
    const commands = help.stdout
      .split('Commands:')[1]
      .split('\n')
      .map((l) => l.match(/^  ([a-z-]+)/)?.[1])
      .filter((c): c is string => !!c && c !== 'help');
    expect(commands.length).toBeGreaterThan(5);
    expect((await complete('')).sort()).toEqual(commands.sort());
  });
});

describe('completion zsh', () => {
  test('prints a #compdef script for alation-keys offering the same commands', async () => {
    const r = await runCli(['completion', 'zsh']);
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe('#compdef alation-keys');
    expect(r.stdout).toContain(`'rotate:`);
    expect(r.stdout).toContain(`'--if-older-than:`);
  });

  test('is valid zsh, and its function completes rot to rotate and rotate --if- to --if-older-than', async () => {
    const zsh = await run('sh', ['-c', 'command -v zsh']).then((r) => r.stdout.trim()).catch(() => '');
    if (!zsh) {
      console.log('skipped: zsh is not installed on this machine (apt-get install zsh provides it)');
      return;
    }
    const script = path.join(dir, '_alation-keys');
    fs.writeFileSync(script, (await runCli(['completion', 'zsh'])).stdout);
    await run(zsh, ['-n', script]);
    // The completion system's _describe and _files stand in as printers of what is offered,
    // so the script's own walk of the command line is what is tested.
    const driver = [
      'compdef() { :; }',
      'source "$1"; shift',
      '_describe() { local i; for i in "${(@P)4}"; do [[ ${i%%:*} == ${PREFIX}* ]] && print -r -- "${i%%:*}"; done; return 0; }',
      "_files() { print -r -- '(files)'; }",
      'words=("$@"); CURRENT=$#; PREFIX=${words[CURRENT]}',
      '_alation-keys; true',
    ].join('\n');
    const offered = async (...words: string[]) =>
      (await run(zsh, ['-f', '-c', driver, 'complete', script, 'alation-keys', ...words])).stdout.split('\n').filter(Boolean);
    expect(await offered('rot')).toEqual(['rotate']);
    expect(await offered('rotate', '--if-')).toEqual(['--if-older-than']);
    expect(await offered('--json', 'columns', '')).toEqual(['list', 'add', 'remove']);
    expect(await offered('--master-key-file', 'rot')).toEqual(['(files)']);
  });

  test('an unknown shell is a usage error naming the choices', async () => {
    const r = await runCli(['completion', 'fish']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Allowed choices are bash, zsh');
    expect(r.stdout).toBe('');
  });
});
