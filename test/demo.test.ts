/**
 * `npm run demo` at a small size (--rows), output piped: the dry run comes before the rotation,
 * the short settle time is explained, the values really encrypted are counted (NULLs apart), no
 * escape codes, and with --keep it ends with what to try next, which works (--serve).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runCliJson } from './support/cli';
import { tempDir } from './support/fixtures';
import { IOStreams } from '../src/cli/io';

const DEMO = path.resolve(__dirname, '../dist/scripts/demo.js');
const ROWS = 200;

let dir: string;
let out: { code: number | null; stdout: string; stderr: string };

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [DEMO, ...args], { env: { ...process.env, NO_COLOR: undefined, FORCE_COLOR: undefined }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  const parent = tempDir('demo');
  // Run as root, the embedded PostgreSQL runs as another user, who must reach its data directory.
  fs.chmodSync(parent, 0o755);
  dir = path.join(parent, 'kept');
  out = await run(['--rows', String(ROWS), '--keep', '--dir', dir]);
  if (out.code !== 0) throw new Error(`demo exited ${out.code}:\n${out.stdout}\n${out.stderr}`);
}, 300_000);

afterAll(() => {
  if (dir) fs.rmSync(path.dirname(dir), { recursive: true, force: true });
});

test('piped, the output holds no escape codes', () => {
  expect(out.stdout + out.stderr).not.toMatch(/\u001b\[/);
});

test('rotate --dry-run is shown before the rotation, and the short settle time is explained', () => {
  const dry = out.stdout.indexOf('$ alation-keys rotate --dry-run');
  const rotation = out.stdout.indexOf('$ alation-keys rotate --settle-time 5s');
  expect(dry).toBeGreaterThan(0);
  expect(rotation).toBeGreaterThan(dry);
  expect(out.stdout).toMatch(/dry run: would create data key v2/);
  const why = out.stdout.slice(dry, rotation);
  expect(why).toMatch(/Every rotation ends with a settle wait/);
  expect(why).toMatch(/--settle-time 35s/);
  expect(why).toMatch(/No application runs beside this demo, so it passes --settle-time 5s/);
});

test('it counts the values really encrypted and the NULLs apart', () => {
  const generated = /^  (\d+) values encrypted; (\d+) NULLs .*stay NULL and are not encrypted$/m.exec(out.stdout);
  expect(generated).not.toBeNull();
  const [values, nulls] = [Number(generated![1]), Number(generated![2])];
  expect(values + nulls).toBe(ROWS);
  expect(nulls).toBeGreaterThan(0);
  expect(out.stdout).toContain(`  ${values} values decrypted and matched, ${nulls} NULLs kept, 0 problems`);
});

test('with --keep it ends with what to try next, and that works against the kept database', async () => {
  const tail = out.stdout.slice(out.stdout.lastIndexOf('== what to try next'));
  expect(tail).toContain(`npm run demo -- --serve --dir ${dir}`);
  expect(tail).toMatch(/^  bin\/alation-keys status$/m);
  expect(tail).toMatch(/^  bin\/alation-keys rotate --dry-run$/m);

  const serve = spawn(process.execPath, [DEMO, '--serve', '--dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  let printed = '';
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`--serve printed no settings:\n${printed}`)), 60_000);
      serve.stdout.on('data', (d) => {
        printed += d;
        if (/^  export .*\n/m.test(printed)) {
          clearTimeout(timer);
          resolve();
        }
      });
      serve.on('close', () => reject(new Error(`--serve exited:\n${printed}`)));
    });
    const exported = /^  export (.*)$/m.exec(printed)![1];
    const env = Object.fromEntries(exported.split(' ').map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
    const jobs = await runCliJson(['jobs', 'list', '--kind', 'rotate'], { env });
    expect(jobs.code).toBe(0);
    expect(jobs.json.jobs[0]).toMatchObject({ kind: 'rotate', state: 'succeeded', to_version: 2 });
  } finally {
    serve.kill('SIGINT');
    await new Promise((r) => serve.on('close', r));
  }
}, 120_000);

test('colour only when stdout and stderr are both terminals', () => {
  const stream = (isTTY: boolean) => ({ isTTY, write: () => true }) as unknown as NodeJS.WriteStream;
  const stdin = { isTTY: true } as unknown as NodeJS.ReadStream;
  const saved = process.env.NO_COLOR;
  delete process.env.NO_COLOR;
  try {
    expect(new IOStreams({}, stream(false), stream(true), stdin).color).toBe(false);
    expect(new IOStreams({}, stream(true), stream(true), stdin).color).toBe(true);
  } finally {
    if (saved !== undefined) process.env.NO_COLOR = saved;
  }
});
