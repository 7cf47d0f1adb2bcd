import { Command } from 'commander';
import { loadCluster, loadClusterSecrets } from '../../../../common/config.ts';
import { ExitCode, GeminiError } from '../../../../common/errors.ts';
import { planFailover, requestSwitchover, waitForLeader } from '../../ops/failover.ts';
import { collectStatus, renderStatusTable } from '../../ops/status.ts';
import { durationFlag, resolveClusterFile, type CliContext } from '../context.ts';
import { operatorFetcher } from './status.ts';

interface FailoverOptions {
  cluster?: string;
  to: string;
  dryRun?: boolean;
  wait?: boolean;
  timeout: string;
}

export function registerFailover(program: Command, ctx: () => CliContext): void {
  program
    .command('failover')
    .description('planned switchover: make --to the leader, through the agents and the witness, losing no acknowledged write')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token')
    .requiredOption('--to <node>', 'the node that becomes the leader (the synchronous standby)')
    .option('--dry-run', 'show the status, the rule and the steps; change nothing')
    .option('--wait', 'after the handover, wait until --to leads a healthy pair again')
    .option('--timeout <duration>', 'how long --wait waits', '5m')
    .action(async (opts: FailoverOptions) => {
      const c = ctx();
      const timeout = durationFlag('--timeout', opts.timeout, '5m');
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const httpFetcher = await operatorFetcher(clusterFile, cluster);
      const status = await collectStatus(cluster, secrets, httpFetcher);
      const plan = planFailover(status, opts.to);
      c.logger.info(`rule: ${plan.rule}`);
      if (!plan.ok) {
        c.print(renderStatusTable(status));
        throw new GeminiError(`refusing to switch over to ${opts.to}: ${plan.rule}`, ExitCode.refused);
      }
      c.print(`switchover ${plan.from} -> ${plan.to}:\n${plan.steps.map((s, i) => `  ${i + 1}. ${s}`).join('\n')}`);
      if (opts.dryRun) return;
      const r = await requestSwitchover(cluster, secrets, plan.from!, httpFetcher);
      if (!r.ok) throw new GeminiError(`the switchover did not happen: ${r.reason}`, ExitCode.commandFailed);
      c.logger.info(`${plan.from} handed over to ${plan.to}${r.tookMs !== undefined ? ` in ${r.tookMs} ms` : ''}: ${r.reason}`);
      if (!opts.wait) return;
      const w = await waitForLeader(cluster, secrets, plan.to, httpFetcher, timeout, (ms) => new Promise((res) => setTimeout(res, ms)));
      c.print(renderStatusTable(w.status));
      if (!w.done) throw new GeminiError(`no healthy pair led by ${plan.to} after ${opts.timeout}: ${w.status.reasons.join('; ') || `the leader is ${w.status.leader ?? 'nobody'}`}`, ExitCode.timeout);
    });
}
