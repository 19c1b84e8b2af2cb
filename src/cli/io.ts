/**
 * Terminal habits (after gh's iostreams): data on stdout, everything else on stderr;
 * spinners only on a terminal; prompts only when stdin and stdout are terminals.
 */
import ora from 'ora';
import { UsageError } from '../errors';

export interface IOOptions {
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
  color?: boolean;
  yes?: boolean;
}

export interface Progress {
  /** Replace the progress text (drawn on a terminal, logged at most every few seconds elsewhere). */
  update(text: string): void;
  /** Log a line now (kept above the spinner). */
  log(text: string): void;
  succeed(text: string): void;
  fail(text: string): void;
  stop(): void;
}

export class IOStreams {
  readonly stdinIsTTY: boolean;
  readonly stdoutIsTTY: boolean;
  readonly stderrIsTTY: boolean;
  readonly color: boolean;

  constructor(
    readonly opts: IOOptions,
    private readonly stdout: NodeJS.WriteStream = process.stdout,
    private readonly stderr: NodeJS.WriteStream = process.stderr,
    stdin: NodeJS.ReadStream = process.stdin,
  ) {
    this.stdinIsTTY = !!stdin.isTTY;
    this.stdoutIsTTY = !!stdout.isTTY;
    this.stderrIsTTY = !!stderr.isTTY;
    // Painted text goes to both streams (a summary on stdout, warnings on stderr): colour only
    // when both are terminals, so that `alation-keys status | tee log` holds no escape codes.
    this.color = opts.color !== false && !process.env.NO_COLOR && this.stderrIsTTY && this.stdoutIsTTY;
  }

  get canPrompt(): boolean {
    return this.stdinIsTTY && this.stdoutIsTTY && !this.opts.json;
  }

  /** Writes human output to stdout (not in --json mode). */
  print(text: string): void {
    if (this.opts.json) return;
    this.stdout.write(text.endsWith('\n') ? text : text + '\n');
  }

  /** Writes the one JSON document of a --json run. */
  printJson(doc: unknown): void {
    this.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  }

  /** Informational line on stderr (suppressed by --quiet). */
  info(text: string): void {
    if (this.opts.quiet) return;
    this.stderr.write(text + '\n');
  }

  warn(text: string): void {
    this.stderr.write(`${this.paint('33', 'warning:')} ${text}\n`);
  }

  error(text: string): void {
    this.stderr.write(`${this.paint('31', 'error:')} ${text}\n`);
  }

  debug(text: string): void {
    if (this.opts.verbose) this.stderr.write(`${this.paint('2', 'debug:')} ${text}\n`);
  }

  paint(code: string, text: string): string {
    return this.color ? `\u001b[${code}m${text}\u001b[0m` : text;
  }

  ok(text: string): string {
    return this.paint('32', text);
  }

  bad(text: string): string {
    return this.paint('31', text);
  }

  /**
   * Asks for confirmation. Without a terminal (or with --json) it never prompts: --yes
   * confirms, anything else is exit 2.
   */
  async confirm(question: string, opts: { typeToConfirm?: string } = {}): Promise<void> {
    if (this.opts.yes) return;
    if (!this.canPrompt) {
      throw new UsageError(`${question.replace(/[?:]\s*$/, '')}: confirmation needed`, {
        hint: 'run it on a terminal to confirm, or pass --yes',
      });
    }
    const prompts = await import('@inquirer/prompts');
    if (opts.typeToConfirm) {
      const answer = await prompts.input({ message: `${question} Type ${opts.typeToConfirm} to confirm:` });
      if (answer.trim() !== opts.typeToConfirm) throw new UsageError('not confirmed; nothing was changed');
      return;
    }
    const yes = await prompts.confirm({ message: question, default: false });
    if (!yes) throw new UsageError('not confirmed; nothing was changed');
  }

  /** A spinner on a terminal; elsewhere plain progress lines on stderr every `intervalMs`. */
  progress(text: string, intervalMs = 5000): Progress {
    if (this.opts.quiet) {
      return { update() {}, log() {}, succeed() {}, fail: (t) => this.error(t), stop() {} };
    }
    if (this.stderrIsTTY) {
      const spinner = ora({ text, stream: this.stderr, color: 'cyan', isEnabled: true, discardStdin: false }).start();
      return {
        update: (t) => {
          spinner.text = t;
        },
        log: (t) => {
          spinner.clear();
          this.stderr.write(t + '\n');
          spinner.render();
        },
        succeed: (t) => spinner.succeed(t),
        fail: (t) => spinner.fail(t),
        stop: () => spinner.stop(),
      };
    }
    let last = 0;
    const stamp = () => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    this.stderr.write(`${stamp()} ${text}\n`);
    return {
      update: (t) => {
        const now = Date.now();
        if (now - last >= intervalMs) {
          last = now;
          this.stderr.write(`${stamp()} ${t}\n`);
        }
      },
      log: (t) => this.stderr.write(`${stamp()} ${t}\n`),
      succeed: (t) => this.stderr.write(`${stamp()} ${t}\n`),
      fail: (t) => this.stderr.write(`${stamp()} ${t}\n`),
      stop() {},
    };
  }
}
