/** The value after `--name` in a command line, if any. */
export function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** A line printer for subcommands; tests pass their own. */
export type Printer = (line: string) => void;
export const stdoutLine: Printer = (l) => process.stdout.write(`${l}\n`);
export const stderrLine: Printer = (l) => process.stderr.write(`${l}\n`);
