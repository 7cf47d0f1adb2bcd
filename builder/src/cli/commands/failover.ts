import { Command } from 'commander';
import { loadCluster, loadClusterSecrets } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { planFailover, planForceFailover, requestForcePromote, requestSwitchover, waitForLeader } from '../../ops/failover.ts';
import { collectStatus, renderStatusTable } from '../../ops/status.ts';
import { durationFlag, resolveClusterFile, type CliContext } from '../context.ts';
import { operatorFetcher } from './status.ts';

interface FailoverOptions {
  cluster?: string;
  to: string;
  dryRun?: boolean;
  wait?: boolean;
  force?: boolean;
  acceptDataLoss?: boolean;
  timeout: string;
}

export function registerFailover(program: Command, ctx: () => CliContext): void {
  program
    .command('failover')
    .description('planned switchover: make --to the leader, through the agents and the witness, losing no acknowledged write; --force when the leader is gone')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token')
    .requiredOption('--to <node>', 'the node that becomes the leader (the synchronous standby)')
    .option('--dry-run', 'show the status, the rule and the steps; change nothing')
    .option('--force', 'the leader is gone: make --to the leader through the witness once the old lease has expired there')
    .option('--accept-data-loss', 'with --force: go on although --to is not the recorded synchronous standby (writes only the old leader had are lost)')
    .option('--wait', 'after the handover, wait until --to leads a healthy pair again')
    .option('--timeout <duration>', 'how long --wait waits', '5m')
    .action(async (opts: FailoverOptions) => {
      const c = ctx();
      const timeout = durationFlag('--timeout', opts.timeout, '5m');
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const httpFetcher = await operatorFetcher(clusterFile, cluster);
      // A forced failover waits for the new leader only: the old one may stay off for days.
      const waitAndShow = async (to: string, healthy = true): Promise<void> => {
        const w = await waitForLeader(cluster, secrets, to, httpFetcher, timeout, (ms) => new Promise((res) => setTimeout(res, ms)), undefined, healthy);
        c.print(renderStatusTable(w.status));
        if (!w.done) throw new GeminiError(`no ${healthy ? 'healthy pair led by' : 'writable primary on'} ${to} after ${opts.timeout}: ${w.status.reasons.join('; ') || `the leader is ${w.status.leader ?? 'nobody'}`}`, ExitCode.timeout);
      };
      const status = await collectStatus(cluster, secrets, httpFetcher);
      if (opts.acceptDataLoss && !opts.force) throw new GeminiError('--accept-data-loss goes with --force only: a planned switchover never loses a write', ExitCode.invalidInput);
      const forcePlan = opts.force ? planForceFailover(status, opts.to, opts.acceptDataLoss === true) : undefined;
      const plan = forcePlan ?? planFailover(status, opts.to);
      c.logger.info(`rule: ${plan.rule}`);
      if (!plan.ok) {
        c.print(renderStatusTable(status));
        throw new GeminiError(`refusing to ${opts.force ? 'force a failover' : 'switch over'} to ${opts.to}: ${plan.rule}`, ExitCode.refused);
      }
      const lossNote = forcePlan?.dataLoss ? ' (acknowledged writes may be lost)' : '';
      c.print(`${opts.force ? 'forced failover' : 'switchover'} ${plan.from} -> ${plan.to}${lossNote}:\n${plan.steps.map((s, i) => `  ${i + 1}. ${s}`).join('\n')}`);
      if (opts.dryRun) return;
      if (forcePlan) {
        const r = await requestForcePromote(cluster, secrets, forcePlan.to, forcePlan.generation!, httpFetcher);
        if (!r.ok) throw new GeminiError(`the forced failover did not happen: ${r.reason}`, ExitCode.commandFailed);
        c.logger.info(`${plan.to} took over at generation ${r.generation ?? '?'}${r.forced ? ' (the witness revoked the old lease)' : ''}`);
        if (opts.wait) await waitAndShow(plan.to, false);
        return;
      }
      const r = await requestSwitchover(cluster, secrets, plan.from!, httpFetcher);
      if (!r.ok) throw new GeminiError(`the switchover did not happen: ${r.reason}`, ExitCode.commandFailed);
      c.logger.info(`${plan.from} handed over to ${plan.to}${r.tookMs !== undefined ? ` in ${r.tookMs} ms` : ''}: ${r.reason}`);
      if (opts.wait) await waitAndShow(plan.to);
    });
}
