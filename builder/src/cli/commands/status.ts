import { Command, Option } from 'commander';
import { stringify } from 'yaml';
import { loadCluster, loadClusterCa, loadClusterSecrets } from '#common/config.ts';
import { httpCall, type ClientTls } from '#common/httpclient.ts';
import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { ExitCode, GeminiError, type ExitCodeValue } from '#common/errors.ts';
import { collectStatus, renderStatusTable, type ClusterStatus, type Fetcher, type Health } from '../../ops/status.ts';
import { durationFlag, resolveClusterFile, type CliContext } from '../context.ts';
import { assessChecks, collectChecks, renderChecks } from '../../ops/check.ts';

interface StatusOptions {
  cluster?: string;
  output: 'table' | 'json' | 'yaml';
  watch?: boolean;
  refresh: string;
}

/** Exit code per health (README: exit codes). */
export const HEALTH_EXIT: Record<Health, ExitCodeValue> = { healthy: ExitCode.ok, degraded: ExitCode.degraded, down: ExitCode.down };

/**
 * The operator's Fetcher: https verified against the cluster CA (the operator authenticates
 * with its tokens), or plain http for a development cluster. The body as JSON when it is JSON,
 * else its text.
 */
export function httpFetcher(tls: ClientTls | undefined): Fetcher {
  return async (url, init) => {
    const res = await httpCall(url, { method: init.method ?? 'GET', headers: init.headers, ...(init.body !== undefined ? { body: init.body } : {}), timeoutMs: init.timeoutMs, ...(tls ? { tls } : {}) });
    let body: unknown = res.text;
    try {
      body = JSON.parse(res.text);
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body, ...(typeof res.headers.date === 'string' ? { date: res.headers.date } : {}) };
  };
}

/**
 * What an operator's command loads: the cluster (and its file), its secrets, and how to reach its
 * agents (the CA). A `--node` it is given is checked first, before any secret is read.
 */
export async function operatorSetup(explicit: string | undefined, c: CliContext, node?: string): Promise<{ clusterFile: string; cluster: Cluster; secrets: Secrets; tls: ClientTls | undefined; fetcher: Fetcher }> {
  const clusterFile = resolveClusterFile(explicit, c);
  const cluster = await loadCluster(clusterFile);
  if (node !== undefined && !cluster.nodes.some((n) => n.name === node)) {
    throw new GeminiError(`--node: ${JSON.stringify(node)} is not a node of ${clusterFile} (expected ${cluster.nodes.map((n) => n.name).join(' or ')})`, ExitCode.invalidInput);
  }
  const secrets = await loadClusterSecrets(clusterFile, cluster);
  const tls = await operatorTls(clusterFile, cluster);
  return { clusterFile, cluster, secrets, tls, fetcher: httpFetcher(tls) };
}

/** How an operator reaches the agents of `cluster`: the CA certificate from secrets/tls/ (none in development plaintext). */
async function operatorTls(clusterFile: string, cluster: Cluster): Promise<ClientTls | undefined> {
  const ca = await loadClusterCa(clusterFile, cluster);
  return ca === undefined ? undefined : { ca };
}

/** The operator's Fetcher for `cluster`: the CA certificate from secrets/tls/. */
export async function operatorFetcher(clusterFile: string, cluster: Cluster): Promise<Fetcher> {
  return httpFetcher(await operatorTls(clusterFile, cluster));
}

function render(s: ClusterStatus, output: StatusOptions['output']): string {
  if (output === 'json') return JSON.stringify(s, null, 2);
  if (output === 'yaml') return stringify(s).trimEnd();
  return renderStatusTable(s);
}

export function registerStatus(program: Command, ctx: () => CliContext): void {
  program
    .command('status')
    .description('show both nodes and the witness: roles, generation, PostgreSQL state, sync, VIP, slots; the exit code says healthy (0), degraded (8) or down (9)')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the read-token and witness-token')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json', 'yaml']).default('table'))
    .option('--watch', 'show the status again every --refresh until interrupted')
    .option('--refresh <duration>', 'interval for --watch, such as 2s', '2s')
    .action(async (opts: StatusOptions) => {
      const c = ctx();
      const refresh = durationFlag('--refresh', opts.refresh, '2s', 200);
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const fetcher = await operatorFetcher(clusterFile, cluster);
      for (;;) {
        const s = await collectStatus(cluster, secrets, fetcher);
        if (opts.watch && c.interactive && opts.output === 'table') c.print(`\x1b[2J\x1b[H${render(s, opts.output)}`);
        else c.print(render(s, opts.output));
        if (!opts.watch) {
          if (s.health !== 'healthy') throw new GeminiError(`cluster ${s.cluster} is ${s.health}: ${s.reasons.join('; ')}`, HEALTH_EXIT[s.health]);
          return;
        }
        if (!c.interactive) c.print('---');
        await new Promise((r) => setTimeout(r, refresh));
      }
    });

  program
    .command('check')
    .description('run the health gate of an upgrade\'s bless on both nodes now, item by item (pair, witness, K3s, checks.d); exit 0 all pass, 8 degraded, 9 down')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the read-token')
    .option('--json', 'print the reports as JSON')
    .action(async (opts: { cluster?: string; json?: boolean }) => {
      const c = ctx();
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const nodes = await collectChecks(cluster, secrets, await operatorFetcher(clusterFile, cluster));
      const health = assessChecks(nodes);
      c.print(opts.json ? JSON.stringify({ cluster: cluster.name, health, nodes }, null, 2) : renderChecks(cluster.name, nodes));
      if (health !== 'healthy') throw new GeminiError(`cluster ${cluster.name} is ${health}: ${nodes.flatMap((n) => (n.reachable ? (n.checks ?? []).filter((x) => !x.ok).map((x) => `${n.name} ${x.name}: ${x.detail}`) : [`${n.name} does not answer`])).join('; ')}`, HEALTH_EXIT[health]);
    });
}
