import { Command } from 'commander';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { requestRollback, waitForRollback } from '../../ops/rollback.ts';
import { renderStatusTable } from '../../ops/status.ts';
import { durationFlag, type CliContext } from '../context.ts';
import { operatorSetup } from './status.ts';

interface RollbackOptions {
  cluster?: string;
  node: string;
  reason?: string;
  wait?: boolean;
  timeout: string;
  json?: boolean;
}

export function registerRollback(program: Command, ctx: () => CliContext): void {
  program
    .command('rollback')
    .description('send a node back to the version its other slot holds (after an upgrade it blessed), rebooting when the pair allows')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token')
    .requiredOption('--node <name>', 'the node to roll back')
    .option('--reason <text>', 'why, kept in the node\'s upgrade record (the version left is not re-staged automatically)')
    .option('--wait', 'ask again while the reboot is refused, and wait until the node runs the old slot blessed and the pair is healthy')
    .option('--timeout <duration>', 'how long --wait waits', '20m')
    .option('--json', 'print the result as JSON')
    .action(async (opts: RollbackOptions) => {
      const c = ctx();
      const timeout = durationFlag('--timeout', opts.timeout, '20m');
      const { cluster, secrets, fetcher } = await operatorSetup(opts.cluster, c, opts.node);
      const r = await requestRollback(cluster, secrets, opts.node, opts.reason ?? 'requested with geminik8s rollback', fetcher);
      if (!r.ok) throw new GeminiError(`${opts.node} did not roll back: ${r.reason}`, ExitCode.refused);
      c.logger.info(`${opts.node}: ${r.reason}`);
      let result: { done: boolean; reason: string } | undefined;
      if (opts.wait) {
        const w = await waitForRollback(cluster, secrets, opts.node, r.slot!, r.rebooting, fetcher, timeout, (ms) => new Promise((res) => setTimeout(res, ms)), (l) => c.logger.info(l));
        result = w;
        if (!opts.json) c.print(renderStatusTable(w.status));
        if (!w.done) {
          if (opts.json) c.print(JSON.stringify({ node: opts.node, ...r, done: false, waited: w.reason }));
          throw new GeminiError(`${opts.node}: ${w.reason}`, w.reason.startsWith('not done in time') ? ExitCode.timeout : ExitCode.commandFailed);
        }
      }
      if (opts.json) c.print(JSON.stringify({ node: opts.node, ...r, ...(result ? { done: true, waited: result.reason } : {}) }));
      else c.print(result ? result.reason : `${opts.node} goes back to ${r.version} on slot ${r.slot}${r.rebooting ? ', rebooting now' : '; its reboot waits for the pair (run again with --wait, or POST /v1/upgrade/reboot)'}`);
    });
}
