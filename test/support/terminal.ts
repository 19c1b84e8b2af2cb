/**
 * Runs the built binary on a pseudo-terminal (util-linux `script`), so that prompts appear and
 * keys typed (Ctrl-C included) reach them as a terminal's would. stdout and stderr arrive
 * merged, as on a terminal.
 */
import { spawn } from 'node:child_process';
import { BIN } from './cli';

export interface TerminalResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  output: string;
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * Starts `alation-keys ARGS` on a terminal; when its output matches `waitFor`, types `keys`.
 * Killed after `timeoutMs`.
 */
export function runOnTerminal(
  args: string[],
  opts: { env: NodeJS.ProcessEnv; waitFor: RegExp; keys: string; timeoutMs?: number },
): Promise<TerminalResult> {
  const command = `exec ${[process.execPath, BIN, ...args].map(quote).join(' ')}`;
  const env: NodeJS.ProcessEnv = { ...process.env, TERM: 'xterm', NO_COLOR: '1', ...opts.env };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  return new Promise((resolve, reject) => {
    // -e: script exits with the command's status; -f: output is passed on as it comes.
    const child = spawn('script', ['-qefc', command, '/dev/null'], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    let typed = false;
    const onData = (d: Buffer) => {
      output += d.toString();
      if (!typed && opts.waitFor.test(output)) {
        typed = true;
        // Let the prompt finish drawing and switch the terminal to raw mode first.
        setTimeout(() => child.stdin.write(opts.keys), 300);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output: output.replace(/\r\n/g, '\n') });
    });
  });
}
