import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { agentUrl, type Fetcher, type Health } from './status.ts';

/** One node's answer to GET /v1/check, or why there was none. */
export interface NodeCheck {
  name: string;
  ip: string;
  reachable: boolean;
  error?: string;
  role?: string;
  ok?: boolean;
  checks?: { name: string; ok: boolean; detail: string }[];
}

/** Ask both agents for their health report (read-token). */
export async function collectChecks(cluster: Cluster, secrets: Secrets, fetcher: Fetcher, timeoutMs = 15_000): Promise<NodeCheck[]> {
  return Promise.all(cluster.nodes.map(async (n): Promise<NodeCheck> => {
    try {
      const r = await fetcher(agentUrl(cluster, n.ip, '/v1/check'), { headers: { authorization: `Bearer ${secrets.readToken}` }, timeoutMs });
      const b = (r.body ?? {}) as { role?: string; ok?: boolean; checks?: NodeCheck['checks']; error?: string };
      if (r.status !== 200 || !Array.isArray(b.checks)) return { name: n.name, ip: n.ip, reachable: false, error: `HTTP ${r.status}${b.error ? `: ${b.error}` : ''}` };
      return { name: n.name, ip: n.ip, reachable: true, role: b.role, ok: b.ok === true, checks: b.checks };
    } catch (err) {
      return { name: n.name, ip: n.ip, reachable: false, error: (err as Error).message };
    }
  }));
}

/**
 * Healthy: both nodes answer and every item passes. Down: no node is a leader whose pair check
 * passes. Degraded: anything in between.
 */
export function assessChecks(nodes: NodeCheck[]): Health {
  if (nodes.every((n) => n.reachable && n.ok)) return 'healthy';
  const leaderOk = nodes.some((n) => n.role === 'leader' && n.checks?.find((c) => c.name === 'pair')?.ok);
  return leaderOk ? 'degraded' : 'down';
}

export function renderChecks(cluster: string, nodes: NodeCheck[]): string {
  const lines: string[] = [];
  for (const n of nodes) {
    if (!n.reachable) {
      lines.push(`${n.name} (${n.ip}): FAIL: does not answer (${n.error})`);
      continue;
    }
    lines.push(`${n.name} (${n.role}): ${n.ok ? 'PASS' : 'FAIL'}`);
    for (const c of n.checks ?? []) lines.push(`  [${c.ok ? ' ok ' : 'FAIL'}] ${c.name}: ${c.detail}`);
  }
  lines.push(`cluster ${cluster}: ${assessChecks(nodes).toUpperCase()}`);
  return lines.join('\n');
}
