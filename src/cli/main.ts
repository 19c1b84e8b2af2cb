/**
 * The command line. Parses global options, dispatches to src/cli/commands/*, and is the only
 * place that sets exit codes (SPEC section 6).
 */
import { Command, CommanderError, Option } from 'commander';
import { ExitCode, normaliseError } from '../errors';
import { CommandAction, CommandContext, GlobalOptions, Runner } from './context';
import { registerCommands } from './commands';
import { VERSION } from '../version';

let active: CommandContext | undefined;
let signalsSeen = 0;
let wantsJson = false;

/** The document every failing `--json` run prints on stdout (README: Exit codes). */
function printJsonError(message: string, hint: string | null, exitCode: number): void {
  process.stdout.write(JSON.stringify({ ok: false, error: { message, hint, exitCode } }, null, 2) + '\n');
}

function onSignal(signal: NodeJS.Signals): void {
  signalsSeen++;
  if (active && signalsSeen === 1 && active.interrupt()) {
    process.stderr.write(`\n${signal}: stopping cleanly at the next checkpoint (send again to stop at once)\n`);
    return;
  }
  process.stderr.write(`\ninterrupted by ${signal}\n`);
  if (wantsJson) printJsonError(`interrupted by ${signal}`, null, ExitCode.interrupted);
  process.exit(ExitCode.interrupted);
}

/**
 * Process warnings — the AWS SDK's NodeVersionSupportWarning, Node's ExperimentalWarning and
 * DeprecationWarning — are for developers, not for an operator's terminal or cron mail: Node's
 * own printer is removed and they are shown only with --verbose, as debug lines.
 */
function routeProcessWarnings(verbose: boolean): void {
  process.removeAllListeners('warning');
  process.on('warning', (w: Error) => {
    if (verbose) process.stderr.write(`debug: process warning ${w.name}: ${w.message}\n`);
  });
}

export function buildProgram(): Command {
  const program = new Command('alation-keys');
  program
    .description('Encryption keys of the rosemeta database: envelope encryption, rotation, backups and AWS KMS BYOK')
    .version(VERSION, '--version', 'print the version and exit')
    .helpOption('-h, --help', 'show help')
    .option('--database-url <url>', 'PostgreSQL URL (else $ALATION_KEYS_DATABASE_URL, else PG* variables; database rosemeta)')
    .option('--master-key-file <path>', 'local master key file (else $ALATION_KEYS_MASTER_KEY_FILE, else /etc/alation-keys/master.key)')
    .option('--profile <name>', 'AWS shared-config profile for BYOK commands')
    .option('--json', 'print one JSON document on stdout')
    .option('-y, --yes', 'confirm actions without prompting')
    .option('-q, --quiet', 'print only errors and data')
    .option('-v, --verbose', 'print debug lines and stack traces')
    .addOption(new Option('--no-color', 'no colour (also NO_COLOR)'))
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  program.configureOutput({
    writeErr: (s) => process.stderr.write(s),
    outputError: (s, write) => write(s.replace(/^error: /, 'error: ')),
  });
  const runner: Runner = <F extends object>(name: string, _cmd: Command, action: CommandAction<F>) => async (...args: unknown[]) => {
    const command = args[args.length - 1] as Command;
    const opts = command.opts() as F;
    const positional = args.slice(0, -2).flat().filter((a) => a !== undefined) as string[];
    const globals = command.optsWithGlobals() as GlobalOptions;
    const ctx = new CommandContext(name, globals);
    active = ctx;
    try {
      await action(ctx, positional, opts);
    } finally {
      await ctx.close();
      active = undefined;
    }
  };
  registerCommands(program, runner);
  for (const sub of program.commands) {
    sub.exitOverride();
    for (const s of sub.commands) s.exitOverride();
  }
  return program;
}

export async function main(argv: string[]): Promise<number> {
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const program = buildProgram();
  wantsJson = argv.includes('--json');
  const verbose = argv.includes('--verbose') || argv.includes('-v');
  routeProcessWarnings(verbose);
  try {
    if (argv.length <= 2) {
      program.outputHelp({ error: true });
      return ExitCode.usage;
    }
    await program.parseAsync(argv);
    return ExitCode.ok;
  } catch (raw) {
    if (raw instanceof CommanderError) {
      if (raw.code === 'commander.helpDisplayed' || raw.code === 'commander.version' || raw.code === 'commander.help') return ExitCode.ok;
      // Commander already printed the message on stderr; --json also gets the error document.
      if (wantsJson) printJsonError(raw.message.replace(/^error: /, ''), 'run with --help for usage', ExitCode.usage);
      return ExitCode.usage;
    }
    const err = normaliseError(raw);
    const color = !!process.stderr.isTTY && !process.env.NO_COLOR && !argv.includes('--no-color');
    const label = color ? '\u001b[31merror:\u001b[0m' : 'error:';
    process.stderr.write(`${label} ${err.message}\n`);
    if (err.hint) process.stderr.write(`  hint: ${err.hint}\n`);
    if (verbose) process.stderr.write(`${(raw as Error)?.stack ?? String(raw)}\n`);
    if (wantsJson && !err.reported) {
      printJsonError(err.message, err.hint ?? null, err.exitCode);
    }
    return err.exitCode;
  }
}

if (require.main === module) {
  main(process.argv).then((code) => process.exit(code));
}
