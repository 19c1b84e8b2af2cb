/** Spawns the real built binary (bin/alation-keys → dist/) and captures exit code and output. */
import { spawn, SpawnOptions, ChildProcess } from 'node:child_process';
import * as path from 'node:path';

export const BIN = path.resolve(__dirname, '../../bin/alation-keys');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  env?: NodeJS.ProcessEnv;
  input?: string;
  timeoutMs?: number;
  cwd?: string;
  /** Run this executable (e.g. the packaged single executable) instead of the source build. */
  executable?: string;
  /** Start from an empty environment instead of this process's (NO_COLOR and env still apply). */
  cleanEnv?: boolean;
}

export function spawnCli(args: string[], opts: CliOptions = {}): ChildProcess {
  const env: NodeJS.ProcessEnv = { ...(opts.cleanEnv ? {} : process.env), NO_COLOR: '1', ...opts.env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  const options: SpawnOptions = { env, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] };
  if (opts.executable) return spawn(opts.executable, args, options);
  return spawn(process.execPath, [BIN, ...args], options);
}

export function runCli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawnCli(args, opts);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin!.end(opts.input ?? '');
  });
}

/** Runs the CLI and parses its --json stdout. */
export async function runCliJson<T = any>(args: string[], opts: CliOptions = {}): Promise<CliResult & { json: T }> {
  const r = await runCli([...args, '--json'], opts);
  let json: T;
  try {
    json = JSON.parse(r.stdout);
  } catch {
    throw new Error(`stdout is not JSON (exit ${r.code}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
  return { ...r, json };
}
