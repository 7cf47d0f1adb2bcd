import { existsSync } from 'node:fs';
import { Command } from 'commander';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { LOG_LEVELS, Logger, type LogLevel } from '#common/log.ts';
import { duration } from '#common/schema/units.ts';

/** Global options, shared by every subcommand. */
export interface GlobalOptions {
  config?: string;
  logLevel: LogLevel;
  logFile?: string;
  color: boolean;
  quiet?: boolean;
  verbose?: boolean;
}

/** What every command receives: the logger and how to print results. */
export interface CliContext {
  logger: Logger;
  globals: GlobalOptions;
  /** Results go to stdout; logs and progress go to stderr. */
  print: (text: string) => void;
  /** True when progress may redraw a task list (interactive terminal, not CI). */
  interactive: boolean;
}

export function contextFrom(program: Command, io: { stdout: (t: string) => void; stderr: (t: string) => void }): CliContext {
  const g = program.opts<GlobalOptions>();
  if (!LOG_LEVELS.includes(g.logLevel)) {
    throw new GeminiError(`--log-level: expected one of ${LOG_LEVELS.join(', ')}, found ${JSON.stringify(g.logLevel)}`, ExitCode.invalidInput);
  }
  const level: LogLevel = g.quiet ? 'error' : g.verbose ? 'debug' : g.logLevel;
  const color = g.color && !process.env.NO_COLOR && Boolean(process.stderr.isTTY);
  return {
    globals: g,
    logger: new Logger({ level, file: g.logFile, color, write: (l) => io.stderr(`${l}\n`) }),
    print: (t) => io.stdout(t.endsWith('\n') ? t : `${t}\n`),
    interactive: Boolean(process.stderr.isTTY) && !process.env.CI,
  };
}

/** The cluster file: --cluster, else --config, else $GEMINIK8S_CONFIG, else ./cluster.yaml when present. */
export function resolveClusterFile(explicit: string | undefined, ctx: CliContext): string {
  const candidate = explicit ?? ctx.globals.config ?? process.env.GEMINIK8S_CONFIG ?? (existsSync('cluster.yaml') ? 'cluster.yaml' : undefined);
  if (!candidate) {
    throw new GeminiError('no cluster file: pass --cluster DIR/cluster.yaml (or the global --config)', ExitCode.invalidInput);
  }
  return candidate;
}

/** A duration flag in milliseconds, such as `--timeout 5m`; exit 2 naming the flag, an example and the least allowed. */
export function durationFlag(flag: string, value: string, example: string, minMs = 0): number {
  const d = duration.safeParse(value);
  if (!d.success || d.data < minMs) throw new GeminiError(`${flag}: expected a duration${minMs ? ` of at least ${minMs}ms` : ''} such as ${example}, found ${JSON.stringify(value)}`, ExitCode.invalidInput);
  return d.data;
}
