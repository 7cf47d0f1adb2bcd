import { Command, Option } from 'commander';
import { stringify } from 'yaml';
import { loadCluster, loadClusterSecrets } from '../../../../common/config.ts';
import { ExitCode, GeminiError, type ExitCodeValue } from '../../../../common/errors.ts';
import { duration } from '../../../../common/schema/units.ts';
import { collectStatus, renderStatusTable, type ClusterStatus, type Fetcher, type Health } from '../../ops/status.ts';
import { resolveClusterFile, type CliContext } from '../context.ts';

interface StatusOptions {
  cluster?: string;
  output: 'table' | 'json' | 'yaml';
  watch?: boolean;
  refresh: string;
}

/** Exit code per health (README: exit codes). */
export const HEALTH_EXIT: Record<Health, ExitCodeValue> = { healthy: ExitCode.ok, degraded: ExitCode.degraded, down: ExitCode.down };

/** Plain fetch with a deadline; the body as JSON when it is JSON, else its text. */
export const httpFetcher: Fetcher = async (url, init) => {
  const res = await fetch(url, { method: init.method ?? 'GET', headers: init.headers, body: init.body, signal: AbortSignal.timeout(init.timeoutMs) });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body };
};

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
      const refresh = duration.safeParse(opts.refresh);
      if (!refresh.success || refresh.data < 200) throw new GeminiError(`--refresh: expected a duration of at least 200ms such as 2s, found ${JSON.stringify(opts.refresh)}`, ExitCode.invalidInput);
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      for (;;) {
        const s = await collectStatus(cluster, secrets, httpFetcher);
        if (opts.watch && c.interactive && opts.output === 'table') c.print(`\x1b[2J\x1b[H${render(s, opts.output)}`);
        else c.print(render(s, opts.output));
        if (!opts.watch) {
          if (s.health !== 'healthy') throw new GeminiError(`cluster ${s.cluster} is ${s.health}: ${s.reasons.join('; ')}`, HEALTH_EXIT[s.health]);
          return;
        }
        if (!c.interactive) c.print('---');
        await new Promise((r) => setTimeout(r, refresh.data));
      }
    });
}
