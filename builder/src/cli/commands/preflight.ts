import { Command } from 'commander';
import { loadCluster, loadClusterSecrets } from '#common/config.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { runPlan, ToolMissingError } from '#common/exec.ts';
import { arpPlan, arpReplies, parseRoute, pingPlan, renderPreflight, routePlan, runPreflight, type PreflightPorts, type VipProbe } from '../../ops/preflight.ts';
import { durationFlag, resolveClusterFile, type CliContext } from '../context.ts';
import { operatorFetcher } from './status.ts';

interface PreflightOptions {
  cluster?: string;
  json?: boolean;
  maxClockOffset: string;
  timeout: string;
}

async function ping(ip: string): Promise<boolean> {
  return (await runPlan(pingPlan(ip), { allowFailure: true, timeoutMs: 15_000 })).exitCode === 0;
}

/** Look for the VIP: ARP when this machine is on its link, else ping. */
async function probeVip(address: string): Promise<VipProbe> {
  const route = parseRoute((await runPlan(routePlan(address), { allowFailure: true, timeoutMs: 10_000 })).stdout);
  if (!route) return { method: 'none', reason: `no route to ${address} from this machine` };
  if (route.local) return { method: 'local', device: route.device };
  if (route.via) return { method: 'ping', via: route.via, answered: await ping(address) };
  try {
    const r = await runPlan(arpPlan(route.device, address), { allowFailure: true, timeoutMs: 15_000 });
    const macs = arpReplies(r.stdout);
    // arping exits 1 when nothing answered, and 2 on an error such as a missing capability.
    if (macs.length === 0 && r.exitCode > 1) return { method: 'none', reason: `arping on ${route.device} failed (exit ${r.exitCode}): ${(r.stderr.trim().split('\n').pop() ?? '').slice(0, 200)} (it needs root or CAP_NET_RAW)` };
    return { method: 'arp', device: route.device, macs };
  } catch (err) {
    if (err instanceof ToolMissingError) return { method: 'none', reason: err.message };
    throw err;
  }
}

export function registerPreflight(program: Command, ctx: () => CliContext): void {
  program
    .command('preflight')
    .description('before install: both nodes and the witness answer, the VIP is free (ARP), clocks agree, and each running agent passes its memory, disk and link checks; exit 0 pass, 10 a check failed')
    .option('--cluster <file>', 'cluster.yaml (default: --config); its secrets/ hold the read-token and witness-token')
    .option('--json', 'print the report as JSON')
    .option('--max-clock-offset <duration>', 'how far a clock may be from this machine\'s, and the nodes\' from each other', '2s')
    .option('--timeout <duration>', 'how long to wait for each answer', '10s')
    .action(async (opts: PreflightOptions) => {
      const c = ctx();
      const max = durationFlag('--max-clock-offset', opts.maxClockOffset, '2s');
      const timeout = durationFlag('--timeout', opts.timeout, '10s', 100);
      const clusterFile = resolveClusterFile(opts.cluster, c);
      const cluster = await loadCluster(clusterFile);
      const secrets = await loadClusterSecrets(clusterFile, cluster);
      const ports: PreflightPorts = {
        fetch: await operatorFetcher(clusterFile, cluster),
        ping,
        vip: probeVip,
        now: Date.now,
      };
      const report = await runPreflight(cluster, secrets, ports, { maxClockOffsetMs: max, timeoutMs: timeout });
      c.print(opts.json ? JSON.stringify(report, null, 2) : renderPreflight(report));
      if (report.status === 'fail') {
        throw new GeminiError(`preflight of ${cluster.name} failed: ${report.items.filter((i) => i.status === 'fail').map((i) => `${i.name}: ${i.detail}`).join('; ')}`, ExitCode.preflightFailed);
      }
    });
}
