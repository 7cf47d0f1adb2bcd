import { existsSync } from 'node:fs';
import { Command } from 'commander';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { readBundle } from '#common/upgrade/bundle.ts';
import { renderStatusTable, collectStatus } from '../../ops/status.ts';
import { planRollingUpgrade, runRollingUpgrade } from '../../ops/upgrade.ts';
import { durationFlag, type CliContext } from '../context.ts';
import { operatorSetup } from './status.ts';

interface UpgradeOptions {
  cluster?: string;
  bundle: string;
  node?: string;
  retry?: boolean;
  dryRun?: boolean;
  timeout: string;
  json?: boolean;
}

export function registerUpgrade(program: Command, ctx: () => CliContext): void {
  program
    .command('upgrade')
    .description('upgrade the pair through the agents, one node at a time: stage a signed bundle, reboot when the pair allows, wait for the blessing, then the other node')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the admin-token')
    .requiredOption('--bundle <file>', 'the signed upgrade bundle (build --output upgrade)')
    .option('--node <name>', 'upgrade this node only')
    .option('--retry', 'stage a bundle that failed its health gate on a node before')
    .option('--dry-run', 'print the order and what each node runs; stage nothing')
    .option('--timeout <duration>', 'for each node, from its staging to its blessing with the pair healthy', '30m')
    .option('--json', 'print the result as JSON')
    .action(async (opts: UpgradeOptions) => {
      const c = ctx();
      const timeout = durationFlag('--timeout', opts.timeout, '30m');
      if (!existsSync(opts.bundle)) throw new GeminiError(`--bundle ${opts.bundle}: no such file`, ExitCode.invalidInput);
      // The node checks the signature against its own trusted keys; here only what the plan needs.
      const { manifest, signature } = await readBundle(opts.bundle).catch((err: Error) => {
        throw new GeminiError(`--bundle ${opts.bundle}: ${err.message}`, ExitCode.invalidInput);
      });
      if (!signature) throw new GeminiError(`--bundle ${opts.bundle}: unsigned; nodes refuse it (sign with build --sign-key)`, ExitCode.refused);
      const { cluster, secrets, tls, fetcher } = await operatorSetup(opts.cluster, c, opts.node);
      const before = await collectStatus(cluster, secrets, fetcher);
      const plan = planRollingUpgrade(before, manifest.version, opts.node);
      const summary = plan.steps.map((s) => `${s.node}: ${s.action} (${s.reason})`).join('; ');
      if (plan.refusal) {
        if (opts.json) c.print(JSON.stringify({ version: manifest.version, plan, done: false }));
        else c.print(renderStatusTable(before));
        throw new GeminiError(`not upgrading to ${manifest.version}: ${plan.refusal}`, ExitCode.refused);
      }
      if (opts.dryRun) {
        if (opts.json) c.print(JSON.stringify({ version: manifest.version, plan, dryRun: true }));
        else c.print(`dry run: ${manifest.image} ${manifest.version} (${manifest.arch}) in this order: ${summary}; nothing staged`);
        return;
      }
      c.logger.info(`upgrading ${cluster.name} to ${manifest.image} ${manifest.version}: ${summary}`);
      const r = await runRollingUpgrade(cluster, secrets, plan, { file: opts.bundle, version: manifest.version, retry: Boolean(opts.retry), timeoutMs: timeout, tls, fetcher, progress: (l) => c.logger.info(l) });
      const failed = r.outcomes.find((o) => !o.done);
      if (opts.json) c.print(JSON.stringify({ version: manifest.version, outcomes: r.outcomes, done: !failed, health: r.status.health }));
      else c.print(renderStatusTable(r.status));
      if (failed) {
        const code = failed.reason.startsWith('staging refused') ? ExitCode.refused : failed.reason.startsWith('not done in time') ? ExitCode.timeout : ExitCode.commandFailed;
        throw new GeminiError(`${failed.node}: ${failed.reason}${r.outcomes.length < plan.steps.length ? `; ${plan.steps.slice(r.outcomes.length).map((s) => s.node).join(', ')} left as it was` : ''}`, code);
      }
      if (!opts.json) c.print(`upgraded to ${manifest.version}: ${r.outcomes.map((o) => `${o.node} ${o.action === 'skip' ? 'already there' : `staged in ${o.stageSeconds} s, blessed ${o.blessSeconds} s later`}`).join('; ')}`);
    });
}
