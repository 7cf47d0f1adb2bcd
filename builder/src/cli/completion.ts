import type { Command, Option } from 'commander';

/** What completion needs to know about one command. */
interface CommandSpec {
  name: string;
  description: string;
  options: { flags: string[]; takesValue: boolean; choices?: string[]; description: string; file: boolean }[];
  /** True when positional arguments are files. */
  fileArgs: boolean;
}

const FILE_OPTION = /file|dir|image|cluster|out|template|seed|artifacts|log-file|config|into/;

function optionSpec(o: Option): CommandSpec['options'][number] {
  const flags = [o.short, o.long].filter((f): f is string => Boolean(f));
  return {
    flags,
    takesValue: o.required || o.optional,
    choices: o.argChoices,
    description: o.description,
    file: (o.required || o.optional) && !o.argChoices && FILE_OPTION.test(o.long ?? ''),
  };
}

export function describeProgram(program: Command): { globals: CommandSpec['options']; commands: CommandSpec[] } {
  const commands = program.commands
    .filter((c) => c.name() !== 'help')
    .map((c) => ({
      name: c.name(),
      description: c.description(),
      options: c.options.map(optionSpec),
      fileArgs: c.registeredArguments.some((a) => /file|image|path/.test(a.name())),
    }));
  return { globals: program.options.map(optionSpec), commands };
}

const sq = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`;

export function bashCompletion(program: Command): string {
  const { globals, commands } = describeProgram(program);
  const name = program.name();
  const fn = `_${name.replace(/[^A-Za-z0-9]/g, '_')}_complete`;
  const valueCases = (opts: CommandSpec['options']): string =>
    opts
      .filter((o) => o.takesValue)
      .map((o) => `      ${o.flags.join('|')}) ${o.choices ? `COMPREPLY=( $(compgen -W ${sq(o.choices.join(' '))} -- "$cur") )` : o.file ? 'COMPREPLY=( $(compgen -f -- "$cur") )' : 'COMPREPLY=()'}; return 0 ;;`)
      .join('\n');
  const perCommand = commands
    .map((c) => `    ${c.name})\n      case "$prev" in\n${valueCases([...c.options, ...globals])}\n      esac\n      if [[ "$cur" == -* ]]; then COMPREPLY=( $(compgen -W ${sq([...c.options, ...globals].flatMap((o) => o.flags).join(' '))} -- "$cur") ); else ${c.name === 'completion' ? `COMPREPLY=( $(compgen -W 'bash zsh fish' -- "$cur") )` : c.fileArgs ? 'COMPREPLY=( $(compgen -f -- "$cur") )' : 'COMPREPLY=()'}; fi\n      return 0 ;;`)
    .join('\n');
  return `# bash completion for ${name}: source it, or install as /usr/share/bash-completion/completions/${name}
${fn}() {
  local cur prev cmd i
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  cmd=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "\${COMP_WORDS[i]}" in
      -*) ;;
      *) cmd="\${COMP_WORDS[i]}"; break ;;
    esac
  done
  case "$cmd" in
${perCommand}
  esac
  case "$prev" in
${valueCases(globals)}
  esac
  if [[ "$cur" == -* ]]; then
    COMPREPLY=( $(compgen -W ${sq(globals.flatMap((o) => o.flags).join(' '))} -- "$cur") )
  else
    COMPREPLY=( $(compgen -W ${sq(commands.map((c) => c.name).join(' '))} -- "$cur") )
  fi
}
complete -F ${fn} ${name}
complete -F ${fn} gemin_k8s
`;
}

export function zshCompletion(program: Command): string {
  const { globals, commands } = describeProgram(program);
  const name = program.name();
  const optLine = (o: CommandSpec['options'][number]): string => {
    const desc = o.description.replaceAll("'", "'\\''").replaceAll('[', '(').replaceAll(']', ')').replaceAll(':', ' ');
    const action = !o.takesValue ? '' : o.choices ? `:value:(${o.choices.join(' ')})` : o.file ? ':file:_files' : ':value: ';
    const spec = o.flags.length > 1 ? `{${o.flags.join(',')}}` : o.flags[0];
    return `    ${o.flags.length > 1 ? spec : `'${spec}`}${o.flags.length > 1 ? "'" : ''}[${desc}]${action}'`;
  };
  const sub = commands
    .map((c) => `    (${c.name})\n      _arguments \\\n${[...c.options, ...globals].map(optLine).join(' \\\n')}${c.fileArgs ? " \\\n    '*:file:_files'" : c.name === 'completion' ? " \\\n    '1:shell:(bash zsh fish)'" : ''}\n      ;;`)
    .join('\n');
  return `#compdef ${name} gemin_k8s
# zsh completion for ${name}: put this file in a directory on $fpath as _${name}
_${name}() {
  local -a subcommands
  subcommands=(
${commands.map((c) => `    ${sq(`${c.name}:${c.description.replaceAll(':', ' ')}`)}`).join('\n')}
  )
  _arguments -C \\
${globals.map(optLine).join(' \\\n')} \\
    '1:command:->command' \\
    '*::arg:->args'
  case $state in
    (command) _describe 'command' subcommands ;;
    (args)
      case $words[1] in
${sub}
      esac
      ;;
  esac
}
_${name} "$@"
`;
}

export function fishCompletion(program: Command): string {
  const { globals, commands } = describeProgram(program);
  const lines: string[] = [`# fish completion for ${program.name()}: save as ~/.config/fish/completions/${program.name()}.fish`];
  for (const bin of [program.name(), 'gemin_k8s']) {
    const noSub = `not __fish_seen_subcommand_from ${commands.map((c) => c.name).join(' ')}`;
    lines.push(`complete -c ${bin} -f`);
    for (const c of commands) lines.push(`complete -c ${bin} -n ${sq(noSub)} -a ${c.name} -d ${sq(c.description)}`);
    const optLines = (opts: CommandSpec['options'], cond: string): void => {
      for (const o of opts) {
        const short = o.flags.find((f) => /^-[^-]/.test(f));
        const long = o.flags.find((f) => f.startsWith('--'));
        const parts = [`complete -c ${bin}`];
        if (cond) parts.push(`-n ${sq(cond)}`);
        if (short) parts.push(`-s ${short.slice(1)}`);
        if (long) parts.push(`-l ${long.slice(2)}`);
        if (o.takesValue) parts.push(o.choices ? `-x -a ${sq(o.choices.join(' '))}` : o.file ? '-r -F' : '-x');
        parts.push(`-d ${sq(o.description)}`);
        lines.push(parts.join(' '));
      }
    };
    optLines(globals, '');
    for (const c of commands) {
      optLines(c.options, `__fish_seen_subcommand_from ${c.name}`);
      if (c.fileArgs) lines.push(`complete -c ${bin} -n ${sq(`__fish_seen_subcommand_from ${c.name}`)} -F`);
      if (c.name === 'completion') lines.push(`complete -c ${bin} -n ${sq('__fish_seen_subcommand_from completion')} -a 'bash zsh fish'`);
    }
  }
  return `${lines.join('\n')}\n`;
}
