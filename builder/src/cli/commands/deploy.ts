import { Command } from 'commander';
import { Listr } from 'listr2';
import { loadCluster, loadClusterSecrets } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { collectChecks } from '../../ops/check.ts';
import { deployChanges, deployDone, deploySteps, type DeployStep } from '../../ops/deploy.ts';
import { collectStatus, renderStatusTable, type ClusterStatus } from '../../ops/status.ts';
import { durationFlag, resolveClusterFile, type CliContext } from '../context.ts';
import { operatorFetcher } from './status.ts';
import { writingTo } from '../tasklist.ts';

interface DeployOptions {
  cluster?: string;
  watch?: boolean;
  json?: boolean;
  timeout: string;
  refresh: string;
}

const MARK = { done: 'done', skipped: 'skipped', waiting: 'waiting' } as const;

export function registerDeploy(program: Command, ctx: () => CliContext): void {
  program
    .command('deploy')
    .description('follow freshly flashed boxes until the pair is up: first boot, PostgreSQL init, clone, sync, VIP, witness, K3s Ready; exit 0 when every step is done')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the read-token and witness-token')
    .option('--watch', 'wait, showing each step as it happens (a task list on a terminal, one line per change otherwise), until all are done or --timeout')
    .option('--json', 'one JSON object per step change ({at, id, title, state, detail})')
    .option('--timeout <duration>', 'how long --watch waits', '30m')
    .option('--refresh <duration>', 'how often the nodes are asked', '1s')
    .action(async (opts: DeployOptions) => {
      const c = ctx();
      const timeout = durationFlag('--timeout', opts.timeout, '30m');
      const refresh = durationFlag('--refresh', opts.refresh, '1s', 200);
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const fetcher = await operatorFetcher(clusterFile, cluster);
      const look = async (): Promise<{ status: ClusterStatus; steps: DeployStep[] }> => {
        const [status, checks] = await Promise.all([collectStatus(cluster, secrets, fetcher), collectChecks(cluster, secrets, fetcher, 5000)]);
        return { status, steps: deploySteps(cluster, status, checks) };
      };
      const started = Date.now();
      const line = (s: DeployStep): string =>
        opts.json ? JSON.stringify({ at: new Date().toISOString(), id: s.id, title: s.title, state: s.state, detail: s.detail }) : `[+${((Date.now() - started) / 1000).toFixed(1)}s] ${MARK[s.state].padEnd(7)} ${s.title}: ${s.detail}`;
      const pending = (steps: DeployStep[]): string => steps.filter((s) => s.state === 'waiting').map((s) => `${s.title} (${s.detail})`).join('; ');

      if (!opts.watch) {
        const { status, steps } = await look();
        for (const s of steps) c.print(line(s));
        if (!deployDone(steps)) throw new GeminiError(`cluster ${cluster.name} is not up yet: ${pending(steps)}`, ExitCode.degraded);
        if (!opts.json) c.print(renderStatusTable(status));
        return;
      }

      let latest = await look();
      const deadline = started + timeout;
      const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
      if (c.interactive && !opts.json) {
        // A task per step; each finishes the first time its step is done. The loop below keeps looking.
        let finished = false;
        const poller = (async () => {
          while (!finished && Date.now() < deadline) {
            await sleep(refresh);
            latest = await look();
          }
        })();
        const tasks = new Listr(
          latest.steps.map((first) => ({
            title: first.title,
            task: async (_: unknown, task: { output: string; skip: (m: string) => void }) => {
              for (;;) {
                const s = latest.steps.find((x) => x.id === first.id) ?? first;
                task.output = s.detail;
                if (s.state === 'done') return;
                if (s.state === 'skipped') return task.skip(`${s.title}: ${s.detail}`);
                if (Date.now() >= deadline) throw new Error(`not done after ${opts.timeout}: ${s.detail}`);
                await sleep(250);
              }
            },
            rendererOptions: { persistentOutput: true },
          })),
          // Progress goes to stderr, like every log; stdout keeps the result (the status table).
          { concurrent: true, exitOnError: false, rendererOptions: { collapseSubtasks: false, ...writingTo(process.stderr) } },
        );
        await tasks.run().catch(() => undefined);
        finished = true;
        await poller;
      } else {
        let shown: DeployStep[] | undefined;
        for (;;) {
          for (const s of deployChanges(shown, latest.steps)) c.print(line(s));
          shown = latest.steps;
          if (deployDone(latest.steps) || Date.now() >= deadline) break;
          await sleep(refresh);
          latest = await look();
        }
      }
      // The pair may have moved on since a task finished: done means every step at one look.
      while (!deployDone(latest.steps) && Date.now() < deadline) {
        await sleep(refresh);
        latest = await look();
      }
      if (!deployDone(latest.steps)) throw new GeminiError(`cluster ${cluster.name} is not up after ${opts.timeout}: ${pending(latest.steps)}`, ExitCode.timeout);
      if (!opts.json) c.print(`cluster ${cluster.name} is up in ${((Date.now() - started) / 1000).toFixed(1)} s\n${renderStatusTable(latest.status)}`);
    });
}
