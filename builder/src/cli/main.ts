import { Command, CommanderError, Option } from 'commander';
import { ExitCode, exitCodeOf, GeminiError } from '#common/errors.ts';
import { redact } from '#common/log.ts';
import { registerBuild } from './commands/build.ts';
import { registerCompletion } from './commands/completion.ts';
import { registerComponents } from './commands/components.ts';
import { registerInit } from './commands/init.ts';
import { registerQemu } from './commands/qemu.ts';
import { registerRender } from './commands/render.ts';
import { registerSeed } from './commands/seed.ts';
import { registerValidate } from './commands/validate.ts';
import { registerVersion } from './commands/version.ts';
import { registerWitness } from './commands/witness.ts';
import { registerStatus } from './commands/status.ts';
import { registerFailover } from './commands/failover.ts';
import { registerReplaceNode } from './commands/replace-node.ts';
import { registerCerts } from './commands/certs.ts';
import { registerPreflight } from './commands/preflight.ts';
import { registerDeploy } from './commands/deploy.ts';
import { registerFlash } from './commands/flash.ts';
import { registerPxe } from './commands/pxe.ts';
import { registerBackup } from './commands/backup.ts';
import { registerKeygen } from './commands/keygen.ts';
import { registerSucPlan } from './commands/suc.ts';
import { registerRollback } from './commands/rollback.ts';
import { registerUpgrade } from './commands/upgrade.ts';
import { registerPush } from './commands/push.ts';
import { contextFrom, type CliContext } from './context.ts';

export interface MainIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const defaultIo: MainIo = {
  stdout: (t) => process.stdout.write(t),
  stderr: (t) => process.stderr.write(t),
};

/** Build the command tree. Only commands that really work are registered. */
export function buildProgram(io: MainIo = defaultIo): Command {
  const program = new Command('geminik8s');
  let context: CliContext | undefined;
  const ctx = (): CliContext => (context ??= contextFrom(program, io));
  program
    .description('Build immutable A/B node OS images for two-node highly available K3s clusters')
    .option('--config <file>', 'cluster configuration file used when --cluster is not given')
    .addOption(new Option('--log-level <level>', 'log level').choices(['debug', 'info', 'warn', 'error']).default('info'))
    .option('--log-file <file>', 'also write JSON log lines to this file')
    .option('--no-color', 'disable colored output')
    .option('-q, --quiet', 'print only errors')
    .option('-v, --verbose', 'print debug logs')
    .showSuggestionAfterError(true)
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr })
    .exitOverride();
  registerInit(program, ctx);
  registerBuild(program, ctx);
  registerComponents(program, ctx);
  registerRender(program, ctx);
  registerSeed(program, ctx);
  registerQemu(program, ctx);
  registerVersion(program, ctx);
  registerValidate(program, ctx);
  registerWitness(program, ctx);
  registerStatus(program, ctx);
  registerFailover(program, ctx);
  registerReplaceNode(program, ctx);
  registerCerts(program, ctx);
  registerPreflight(program, ctx);
  registerDeploy(program, ctx);
  registerFlash(program, ctx);
  registerPxe(program, ctx);
  registerBackup(program, ctx);
  registerKeygen(program, ctx);
  registerSucPlan(program, ctx);
  registerRollback(program, ctx);
  registerUpgrade(program, ctx);
  registerPush(program, ctx);
  registerCompletion(program, ctx);
  for (const cmd of program.commands) cmd.exitOverride().configureOutput({ writeOut: io.stdout, writeErr: io.stderr });
  return program;
}

/** Run the CLI; returns the process exit code (documented in README.md). */
export async function main(argv: string[], io: MainIo = defaultIo): Promise<number> {
  const program = buildProgram(io);
  try {
    await program.parseAsync(argv);
    return ExitCode.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return ExitCode.ok;
      return ExitCode.invalidInput;
    }
    const message = err instanceof GeminiError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err);
    io.stderr(`error: ${redact(message)}\n`);
    return exitCodeOf(err);
  }
}
