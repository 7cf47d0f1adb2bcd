import { join } from 'node:path';
import { Command } from 'commander';
import { agentLogger, createLogPort } from '#agent/adapters/log.ts';
import { DEFAULT_WITNESS_PORT, DEFAULT_WITNESS_STATE_DIR, WITNESS_TLS_FILES, parseListen, serveWitness } from '#agent/witness/serve.ts';
import { NODE_PATHS } from '#common/render/paths.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { writeWitnessCredentials, type CredentialsOptions } from '../../init/tls.ts';
import { renderTemplate } from '../../render/templates.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';

/** The systemd unit of a witness on a third box (docs/witness.md). */
export function witnessUnit(o: { listen: string; tokenFile: string; agentBundle: string; tlsDir?: string }): string {
  return renderTemplate('systemd/geminik8s-witness.service.hbs', {
    ...o,
    tlsFiles: o.tlsDir ? Object.values(WITNESS_TLS_FILES).map((name) => ({ name, path: join(o.tlsDir!, name) })) : undefined,
  });
}

export function registerWitness(program: Command, ctx: () => CliContext): void {
  const witness = program.command('witness').description('the durable arbiter that lets the pair fail over automatically (run it on a third box)');
  witness
    .command('serve')
    .description('answer lease requests; keep each cluster\'s record durably under --state-dir')
    .option('--listen <host:port>', 'address to listen on', `0.0.0.0:${DEFAULT_WITNESS_PORT}`)
    .requiredOption('--token-file <file>', 'file holding the bearer token (secrets/witness-token from init: the only credential the witness knows)')
    .option('--tls-dir <dir>', `directory with ${Object.values(WITNESS_TLS_FILES).join(', ')} (geminik8s witness credentials): mutual TLS, every client needs a certificate from the cluster CA`)
    .option('--insecure-plaintext', 'development only: plain HTTP, no certificates (for a cluster with agent.insecurePlaintext)')
    .option('--state-dir <dir>', 'where the records live', DEFAULT_WITNESS_STATE_DIR)
    .action(async (opts: { listen: string; tokenFile: string; stateDir: string; tlsDir?: string; insecurePlaintext?: boolean }) => {
      if (!parseListen(opts.listen)) throw new GeminiError(`--listen: expected HOST:PORT, got ${JSON.stringify(opts.listen)}`, ExitCode.invalidInput);
      if (!opts.tlsDir && !opts.insecurePlaintext) throw new GeminiError('the witness speaks mutual TLS: pass --tls-dir DIR (geminik8s witness credentials --out DIR), or --insecure-plaintext for development', ExitCode.invalidInput);
      await serveWitness({ ...opts, log: createLogPort(agentLogger('witness')) });
      ctx();
      await new Promise(() => undefined);
    });
  witness
    .command('credentials')
    .description("write the witness box's credentials into --out (0700): its certificate and key from the cluster CA, the CA certificate and the witness token")
    .option('--cluster <file>', 'cluster.yaml (default: --config)')
    .requiredOption('--out <dir>', 'directory to write (copy it to the witness box, e.g. as /etc/geminik8s/witness)')
    .option('--host <host>', "the witness's address the certificate covers (default: the host of witness.url)")
    .option('--rotate', 'issue a new certificate even when a valid one exists')
    .option('--force', 'replace an existing --out')
    .action(async (opts: CredentialsOptions) => {
      const c = ctx();
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const r = await writeWitnessCredentials(clusterFile, opts);
      if (r.issued) c.logger.info('issued a new witness certificate from the cluster CA');
      for (const f of r.written) c.logger.info(`wrote ${f} (0600)`);
      c.logger.info(`on the witness box: geminik8s witness serve --token-file ${join(opts.out, 'witness-token')} --tls-dir ${opts.out}`);
      c.print(opts.out);
    });
  witness
    .command('unit')
    .description('print the systemd unit that runs the witness (install it as /etc/systemd/system/geminik8s-witness.service)')
    .option('--listen <host:port>', 'address to listen on', `0.0.0.0:${DEFAULT_WITNESS_PORT}`)
    .option('--token-file <file>', 'token file, loaded as a systemd credential', '/etc/geminik8s/witness/witness-token')
    .option('--tls-dir <dir>', 'the directory from geminik8s witness credentials; its files are loaded as systemd credentials', '/etc/geminik8s/witness')
    .option('--insecure-plaintext', 'development only: no TLS')
    .option('--agent-bundle <file>', 'the agent bundle (npm run build:agent)', NODE_PATHS.agentBundle)
    .action((opts: { listen: string; tokenFile: string; agentBundle: string; tlsDir: string; insecurePlaintext?: boolean }) => {
      if (!parseListen(opts.listen)) throw new GeminiError(`--listen: expected HOST:PORT, got ${JSON.stringify(opts.listen)}`, ExitCode.invalidInput);
      const { insecurePlaintext, tlsDir, ...rest } = opts;
      ctx().print(witnessUnit({ ...rest, ...(insecurePlaintext ? {} : { tlsDir }) }).trimEnd());
    });
}
