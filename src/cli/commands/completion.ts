import { Argument, Command } from 'commander';
import { Runner } from '../context';
import { COMPLETION_SHELLS, CompletionShell, completionScript } from '../completion';

export function register(program: Command, run: Runner): void {
  const cmd = program
    .command('completion')
    .description('print a shell completion script (bash or zsh) for the commands of this version')
    .addArgument(new Argument('<shell>', 'bash or zsh').choices(COMPLETION_SHELLS));
  cmd.action(
    run('completion', cmd, async (ctx, [shell]) => {
      ctx.io.print(completionScript(program, shell as CompletionShell));
    }),
  );
}
