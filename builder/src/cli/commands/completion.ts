import { Argument, Command } from 'commander';
import { bashCompletion, fishCompletion, zshCompletion } from '../completion.ts';
import type { CliContext } from '../context.ts';

export function registerCompletion(program: Command, ctx: () => CliContext): void {
  program
    .command('completion')
    .description('print a shell completion script (bash, zsh or fish)')
    .addArgument(new Argument('<shell>', 'shell to complete for').choices(['bash', 'zsh', 'fish']))
    .addHelpText('after', '\nExamples:\n  source <(geminik8s completion bash)\n  geminik8s completion zsh > "${fpath[1]}/_geminik8s"\n  geminik8s completion fish > ~/.config/fish/completions/geminik8s.fish')
    .action((shell: 'bash' | 'zsh' | 'fish') => {
      const generate = { bash: bashCompletion, zsh: zshCompletion, fish: fishCompletion }[shell];
      ctx().print(generate(program));
    });
}
