import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Command, Option } from 'commander';
import { ExitCode, GeminiError, ValidationError } from '#common/errors.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { readSource } from '#common/source.ts';
import { clusterYamlText } from '../../init/cluster-file.ts';
import { buildClusterInput, validateClusterInput, type InitFlags } from '../../init/options.ts';
import { writeSecrets } from '../../init/secrets.ts';
import { writeClusterTls } from '../../init/tls.ts';
import type { CliContext } from '../context.ts';

interface InitOptions extends InitFlags {
  configDir: string;
  template?: string;
  interactive?: boolean;
  dryRun?: boolean;
  force?: boolean;
  rotateSecrets?: boolean;
  rotateCerts?: boolean;
}

const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** The values --interactive asks for, in order, with the flag each one fills. */
const PROMPTS: { key: keyof InitFlags; flag: string; question: string; fallback?: string }[] = [
  { key: 'name', flag: '--name', question: 'Cluster name', fallback: 'site' },
  { key: 'node1Ip', flag: '--node1-ip', question: 'IP of node1' },
  { key: 'node2Ip', flag: '--node2-ip', question: 'IP of node2' },
  { key: 'vip', flag: '--vip', question: 'Virtual IP of the control plane' },
  { key: 'prefix', flag: '--prefix', question: 'Subnet prefix length', fallback: '24' },
  { key: 'gateway', flag: '--gateway', question: 'Gateway (empty for none)' },
  { key: 'interface', flag: '--interface', question: 'Network interface', fallback: 'eth0' },
  { key: 'witness', flag: '--witness', question: 'Witness HOST[:PORT] on a third box for automatic failover, or none for manual failover', fallback: 'none' },
];

export function registerInit(program: Command, ctx: () => CliContext): void {
  program
    .command('init')
    .description('describe a new two-node cluster: writes DIR/cluster.yaml (commented) and DIR/secrets/')
    .option('--name <name>', 'cluster name (DNS label)')
    .option('--node1-ip <ip>', 'IP of the first node (bootstrap leader)')
    .option('--node2-ip <ip>', 'IP of the second node')
    .option('--node1-name <name>', 'name of the first node', undefined)
    .option('--node2-name <name>', 'name of the second node', undefined)
    .option('--node1-mac <mac>', 'MAC address of the first node (match the NIC by MAC)')
    .option('--node2-mac <mac>', 'MAC address of the second node')
    .option('--vip <ip>', 'virtual IP of the control plane and PostgreSQL')
    .option('--interface <name>', 'network interface (default eth0)')
    .option('--prefix <len>', 'subnet prefix length (default 24)')
    .option('--gateway <ip>', 'default gateway')
    .option('--dns <ip>', 'DNS server (repeat, or comma-separated)', collect)
    .option('--witness <spec>', 'failover arbiter: HOST[:PORT] or http(s)://URL of a geminik8s witness on a third box (port 7444 by default; automatic failover), or none (manual failover; the default)')
    .addOption(new Option('--sync-policy <policy>', 'what the leader does when the standby is lost').choices(['degrade', 'strict']))
    .option('--config-dir <dir>', 'where to write cluster.yaml and secrets/', '.')
    .option('--template <file>', 'a partial cluster.yaml whose values are defaults for the flags')
    .option('--interactive', 'ask for missing values (needs a terminal)')
    .option('--dry-run', 'validate and print cluster.yaml; write nothing')
    .option('--force', 'overwrite an existing cluster.yaml (secrets are kept unless --rotate-secrets)')
    .option('--rotate-secrets', 'with --force: generate new secrets even when secret files exist')
    .option('--rotate-certs', 'with --force: reissue every node and witness certificate from the kept cluster CA (the pair keeps trusting both the old and the new ones)')
    .option('--insecure-plaintext', 'development only: no cluster CA, no TLS; agents and witness speak plain HTTP with bearer tokens in the clear')
    .action(async (opts: InitOptions, command: Command) => {
      const c = ctx();
      const given = new Set(
        command.options.filter((o) => command.getOptionValueSource(o.attributeName()) === 'cli').map((o) => o.long ?? ''),
      );
      if (opts.interactive) await askMissing(opts, given);

      let template;
      let templateData: Record<string, unknown> | undefined;
      if (opts.template) {
        const r = await readSource(opts.template);
        if (!r.source) throw new ValidationError(r.issues);
        if (typeof r.source.data !== 'object' || r.source.data === null || Array.isArray(r.source.data)) {
          throw new ValidationError([{ file: opts.template, line: 1, col: 1, path: '', message: 'a template must be a mapping (a partial cluster.yaml)' }]);
        }
        template = r.source;
        templateData = r.source.data as Record<string, unknown>;
      }
      const { input, flagIssues } = buildClusterInput(opts, templateData);
      const { cluster, issues } = validateClusterInput(input, given, template);
      if (flagIssues.length || !cluster) throw new ValidationError([...flagIssues, ...issues]);

      const text = clusterYamlText(input);
      const clusterFile = join(opts.configDir, 'cluster.yaml');
      const secretsDir = join(opts.configDir, cluster.secretsDir);
      if (opts.dryRun) {
        c.print(text);
        c.logger.info(`dry run: ${clusterFile} is valid; nothing written (secrets would go to ${secretsDir}/)`);
        return;
      }
      if (existsSync(clusterFile) && !opts.force) {
        throw new GeminiError(`${clusterFile} already exists; pass --force to overwrite it (existing secrets are kept)`, ExitCode.refused);
      }
      for (const flag of ['rotateSecrets', 'rotateCerts'] as const) {
        if (opts[flag] && !opts.force) {
          throw new GeminiError(`--${flag === 'rotateSecrets' ? 'rotate-secrets' : 'rotate-certs'} changes the credentials of a running cluster; it needs --force too`, ExitCode.invalidInput);
        }
      }
      // Secrets and certificates first: cluster.yaml under its final name means init finished.
      const secrets = await writeSecrets(secretsDir, { rotate: Boolean(opts.rotateSecrets) });
      const tls = await writeClusterTls(secretsDir, cluster, { rotate: Boolean(opts.rotateCerts) });
      await writeFileAtomic(clusterFile, text, 0o644);
      c.logger.info(`wrote ${clusterFile}`);
      for (const f of [...secrets.written, ...tls.written]) c.logger.info(`wrote ${f} (0600)`);
      for (const f of [...secrets.kept, ...tls.kept]) c.logger.info(`kept existing ${f}`);
      if (cluster.agent.insecurePlaintext) c.logger.warn('agent.insecurePlaintext: no TLS; bearer tokens cross the network in the clear (development only)');
      else if (cluster.witness.type === 'lease') c.logger.info(`the witness's credentials: geminik8s witness credentials --cluster ${clusterFile} --out DIR`);
      c.logger.info(`next: geminik8s validate ${clusterFile}`);
    });
}

async function askMissing(opts: InitOptions, given: Set<string>): Promise<void> {
  if (!process.stdin.isTTY) {
    throw new GeminiError('--interactive needs a terminal on stdin; pass the values as flags instead (see geminik8s init --help)', ExitCode.invalidInput);
  }
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  // Read answers through the line iterator: it buffers lines typed (or pasted) ahead of a prompt.
  const lines = rl[Symbol.asyncIterator]();
  try {
    for (const p of PROMPTS) {
      if (opts[p.key] !== undefined) continue;
      rl.setPrompt(`${p.question}${p.fallback ? ` [${p.fallback}]` : ''}: `);
      rl.prompt();
      const next = await lines.next();
      if (next.done) throw new GeminiError('--interactive: input ended before every value was given', ExitCode.invalidInput);
      const value = String(next.value).trim() || p.fallback;
      if (value !== undefined) {
        (opts as unknown as Record<string, string>)[p.key] = value;
        given.add(p.flag);
      }
    }
  } finally {
    rl.close();
  }
}
