import { Command } from 'commander';
import { agentLogger, createLogPort } from '../../../../agent/src/adapters/log.ts';
import { DEFAULT_WITNESS_PORT, DEFAULT_WITNESS_STATE_DIR, parseListen, serveWitness } from '../../../../agent/src/witness/serve.ts';
import { NODE_PATHS } from '../../../../common/render/paths.ts';
import { ExitCode, GeminiError } from '../../../../common/errors.ts';
import { renderTemplate } from '../../render/templates.ts';
import type { CliContext } from '../context.ts';

/** The systemd unit of a witness on a third box (docs/witness.md). */
export function witnessUnit(o: { listen: string; tokenFile: string; agentBundle: string }): string {
  return renderTemplate('systemd/geminik8s-witness.service.hbs', o);
}

export function registerWitness(program: Command, ctx: () => CliContext): void {
  const witness = program.command('witness').description('the durable arbiter that lets the pair fail over automatically (run it on a third box)');
  witness
    .command('serve')
    .description('answer lease requests; keep each cluster\'s record durably under --state-dir')
    .option('--listen <host:port>', 'address to listen on', `0.0.0.0:${DEFAULT_WITNESS_PORT}`)
    .requiredOption('--token-file <file>', 'file holding the bearer token (secrets/witness-token from init: the only credential the witness knows)')
    .option('--state-dir <dir>', 'where the records live', DEFAULT_WITNESS_STATE_DIR)
    .action(async (opts: { listen: string; tokenFile: string; stateDir: string }) => {
      if (!parseListen(opts.listen)) throw new GeminiError(`--listen: expected HOST:PORT, got ${JSON.stringify(opts.listen)}`, ExitCode.invalidInput);
      await serveWitness({ ...opts, log: createLogPort(agentLogger('witness')) });
      ctx();
      await new Promise(() => undefined);
    });
  witness
    .command('unit')
    .description('print the systemd unit that runs the witness (install it as /etc/systemd/system/geminik8s-witness.service)')
    .option('--listen <host:port>', 'address to listen on', `0.0.0.0:${DEFAULT_WITNESS_PORT}`)
    .option('--token-file <file>', 'token file, loaded as a systemd credential', '/etc/geminik8s/witness-token')
    .option('--agent-bundle <file>', 'the agent bundle (npm run build:agent)', NODE_PATHS.agentBundle)
    .action((opts: { listen: string; tokenFile: string; agentBundle: string }) => {
      if (!parseListen(opts.listen)) throw new GeminiError(`--listen: expected HOST:PORT, got ${JSON.stringify(opts.listen)}`, ExitCode.invalidInput);
      ctx().print(witnessUnit(opts).trimEnd());
    });
}
