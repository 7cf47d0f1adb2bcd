import { Command } from 'commander';
import { loadCluster, loadClusterCa, loadClusterSecrets, secretsDirOf, tlsFiles } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { reissueNodeCert } from '../../init/tls.ts';
import { planCertRotation, requestTlsRotation, servedFingerprint } from '../../ops/certs.ts';
import { waitForLeader } from '../../ops/failover.ts';
import { collectStatus, renderStatusTable } from '../../ops/status.ts';
import { durationFlag, resolveClusterFile, type CliContext } from '../context.ts';
import { operatorFetcher } from './status.ts';

interface RotateOptions {
  cluster?: string;
  node?: string;
  dryRun?: boolean;
  k3s: boolean;
  timeout: string;
  json?: boolean;
}

export function registerCerts(program: Command, ctx: () => CliContext): void {
  const certs = program.command('certs').description("the pair's certificates");
  certs
    .command('rotate')
    .description("a new key and certificate for each node from the kept cluster CA, swapped in by the running agents one node at a time (the leader last), and K3s's own certificates: no restart, the VIP stays")
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token and the CA')
    .option('--node <name>', 'rotate this node only (a node that is down gets its certificate with a new seed)')
    .option('--no-k3s', "leave K3s's own certificates alone (rotating them restarts K3s on the node; Kine, PostgreSQL and the VIP stay)")
    .option('--dry-run', 'show the status, the rule and the steps; change nothing')
    .option('--timeout <duration>', 'how long to wait, after each node, for the pair to be as healthy as before', '5m')
    .option('--json', 'print the result as JSON')
    .action(async (opts: RotateOptions) => {
      const c = ctx();
      const timeout = durationFlag('--timeout', opts.timeout, '5m');
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      if (cluster.agent.insecurePlaintext) throw new GeminiError(`${clusterFile}: agent.insecurePlaintext is set: the pair has no certificates to rotate`, ExitCode.refused);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const fetcher = await operatorFetcher(clusterFile, cluster);
      const status = await collectStatus(cluster, secrets, fetcher);
      const plan = planCertRotation(status, opts.node, opts.k3s);
      c.logger.info(`rule: ${plan.rule}`);
      if (!plan.ok) {
        c.print(renderStatusTable(status));
        throw new GeminiError(`refusing to rotate: ${plan.rule}`, ExitCode.refused);
      }
      if (!opts.json) c.print(`rotate ${plan.order.join(', then ')}:\n${plan.steps.map((s, i) => `  ${i + 1}. ${s}`).join('\n')}`);
      if (opts.dryRun) return;
      const before = status.health;
      const leader = status.leader;
      const secretsDir = secretsDirOf(clusterFile, cluster);
      const ca = (await loadClusterCa(clusterFile, cluster))!;
      const results: { node: string; fingerprint: string; notAfter?: string; k3s?: string }[] = [];
      for (const node of plan.order) {
        const { cert, key } = await reissueNodeCert(secretsDir, cluster, node);
        c.logger.info(`${node}: a new certificate from the cluster CA (${tlsFiles(secretsDir, node).cert}); handing it to its agent`);
        const r = await requestTlsRotation(cluster, secrets, node, { cert, key, k3s: opts.k3s }, fetcher);
        // The new files stay in secrets/: the node keeps trusting its peer's old or new one, and its next seed carries the new one.
        if (!r.ok) throw new GeminiError(`${node} did not take its new certificate: ${r.reason}${results.length ? ` (rotated before it: ${results.map((x) => x.node).join(', ')})` : ''}`, ExitCode.refused);
        const ip = cluster.nodes.find((n) => n.name === node)!.ip;
        const served = await servedFingerprint(ip, cluster.agent.port, ca);
        if (served !== r.fingerprint) throw new GeminiError(`${node} answered that it uses the new certificate (${r.fingerprint}), but its API serves ${served}`, ExitCode.commandFailed);
        c.logger.info(`${node}: ${r.reason}; its API serves sha256 ${served}${r.k3s ? `; K3s: ${r.k3s}` : ''}`);
        results.push({ node, fingerprint: served, ...(r.notAfter ? { notAfter: r.notAfter } : {}), ...(r.k3s ? { k3s: r.k3s } : {}) });
        // The next node only once the pair is back where it was (the leader unchanged).
        const w = await waitForLeader(cluster, secrets, leader, fetcher, timeout, (ms) => new Promise((res) => setTimeout(res, ms)), undefined, before === 'healthy');
        if (!w.done) {
          c.print(renderStatusTable(w.status));
          throw new GeminiError(`after ${node}'s rotation the pair is not ${before} under ${leader ?? 'no leader'} within ${opts.timeout}: ${w.status.reasons.join('; ') || `the leader is ${w.status.leader ?? 'nobody'}`}`, ExitCode.timeout);
        }
      }
      if (opts.json) c.print(JSON.stringify({ cluster: cluster.name, rotated: results }, null, 2));
      else c.print(results.map((x) => `${x.node}: sha256 ${x.fingerprint}, valid until ${x.notAfter ?? '?'}${x.k3s ? `; K3s: ${x.k3s}` : ''}`).join('\n'));
    });
}
