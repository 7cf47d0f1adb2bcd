import { Command } from 'commander';
import { stringify } from 'yaml';
import { loadCluster } from '#common/config.ts';
import { ValidationError } from '#common/errors.ts';
import { writeFileAtomic } from '#common/fsutil.ts';
import { checkSucOptions, SUC_DEFAULTS, sucPlan, type SucPlanOptions } from '#common/upgrade/suc.ts';
import { durationFlag, resolveClusterFile, type CliContext } from '../context.ts';

interface SucPlanFlags {
  cluster?: string;
  image: string;
  version: string;
  namespace: string;
  serviceAccount: string;
  deadline: string;
  out?: string;
}

/** The Plan as a YAML document, with a header saying what applies it and what it leaves out. */
export function sucPlanYaml(plan: Record<string, unknown>): string {
  return `# geminik8s: System Upgrade Controller Plan for the pair's OS (kubectl apply -f).\n${stringify(plan)}`;
}

export function registerSucPlan(program: Command, ctx: () => CliContext): void {
  program
    .command('suc-plan')
    .description("render the System Upgrade Controller Plan that upgrades the pair's OS, one node at a time, ordered by the agents")
    .option('--cluster <file>', 'cluster.yaml (default: --config)')
    .requiredOption('--image <repository>', 'upgrade image repository, without a tag (SUC tags it with --version)')
    .requiredOption('--version <version>', 'the bundle version the pair converges to; changing it starts a new run')
    .option('--namespace <name>', "SUC's namespace", SUC_DEFAULTS.namespace)
    .option('--service-account <name>', "SUC's service account for the job", SUC_DEFAULTS.serviceAccount)
    .option('--deadline <duration>', 'job deadline per node: waiting for the peer, writing, rebooting, blessing', `${SUC_DEFAULTS.deadlineSeconds / 60}m`)
    .option('--out <file>', 'write the Plan here instead of stdout')
    .action(async (flags: SucPlanFlags) => {
      const c = ctx();
      const deadline = durationFlag('--deadline', flags.deadline, '1h or 45m');
      const options: SucPlanOptions = {
        image: flags.image,
        version: flags.version,
        namespace: flags.namespace,
        serviceAccount: flags.serviceAccount,
        deadlineSeconds: Math.round(deadline / 1000),
      };
      const clusterFile = resolveClusterFile(flags.cluster, c);
      const issues = checkSucOptions(options);
      if (issues.length) throw new ValidationError(issues);
      const cluster = await loadCluster(clusterFile);
      const text = sucPlanYaml(sucPlan(cluster, options));
      if (flags.out) {
        await writeFileAtomic(flags.out, text, 0o644);
        c.logger.info(`wrote ${flags.out}: kubectl apply -f ${flags.out}`);
      } else c.print(text);
    });
}
