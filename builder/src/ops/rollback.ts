import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { agentAnswer, agentUrl, collectStatus, type ClusterStatus, type Fetcher } from './status.ts';

/** The agent's answer to POST /v1/upgrade/rollback. */
export interface RollbackAnswer {
  ok: boolean;
  reason: string;
  /** The slot and version the node goes back to, when the rollback was armed. */
  slot?: string;
  version?: string;
  leaving?: string;
  /** Whether the agent accepted the reboot right away (a leader switches over first). */
  rebooting: boolean;
}

const nodeOf = (cluster: Cluster, name: string) => cluster.nodes.find((n) => n.name === name)!;

/** Ask `node`'s agent to roll back to its other slot (admin-token). */
export async function requestRollback(cluster: Cluster, secrets: Secrets, node: string, reason: string, fetcher: Fetcher): Promise<RollbackAnswer> {
  const url = agentUrl(cluster, nodeOf(cluster, node).ip, '/v1/upgrade/rollback');
  // A leader switches over before it reboots: that can take the switchover's own deadlines.
  const r = await fetcher(url, { method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ reason }), timeoutMs: 60_000 });
  const answer = agentAnswer(r);
  const { body } = answer;
  const rb = (body.rollback ?? {}) as { slot?: unknown; version?: unknown; leaving?: unknown };
  return {
    ok: answer.ok,
    reason: answer.reason,
    ...(typeof rb.slot === 'string' ? { slot: rb.slot } : {}),
    ...(typeof rb.version === 'string' ? { version: rb.version } : {}),
    ...(typeof rb.leaving === 'string' ? { leaving: rb.leaving } : {}),
    rebooting: (body.reboot as { ok?: unknown } | undefined)?.ok === true,
  };
}

/** Until `node` runs `slot` blessed again (a rollback): see waitForSlot. */
export function waitForRollback(
  cluster: Cluster, secrets: Secrets, node: string, slot: string, rebooting: boolean, fetcher: Fetcher,
  timeoutMs: number, sleep: (ms: number) => Promise<void>, progress: (line: string) => void, now: () => number = () => performance.now(),
): Promise<{ done: boolean; reason: string; status: ClusterStatus }> {
  return waitForSlot(cluster, secrets, node, { slot }, rebooting, fetcher, timeoutMs, sleep, progress, now);
}

/**
 * Until `node` runs `target.slot` blessed (and `target.version` on it, when given) with the pair
 * healthy: while its reboot is refused (its peer is unhealthy or upgrading), ask again; stop
 * when the try falls back, or at the deadline.
 */
export async function waitForSlot(
  cluster: Cluster, secrets: Secrets, node: string, target: { slot: string; version?: string }, rebooting: boolean, fetcher: Fetcher,
  timeoutMs: number, sleep: (ms: number) => Promise<void>, progress: (line: string) => void, now: () => number = () => performance.now(),
): Promise<{ done: boolean; reason: string; status: ClusterStatus }> {
  const { slot, version } = target;
  const deadline = now() + timeoutMs;
  let last = '';
  const say = (line: string): void => {
    if (line !== last) progress(line);
    last = line;
  };
  for (;;) {
    const status = await collectStatus(cluster, secrets, fetcher);
    const v = status.nodes.find((n) => n.name === node);
    if (v?.reachable && v.slot?.booted === slot && v.slot.state === 'steady' && status.health === 'healthy' && (version === undefined || v.version === version)) {
      return { done: true, reason: `${node} runs ${v.version ?? '?'} on slot ${slot}, blessed, and the pair is healthy`, status };
    }
    if (v?.reachable && v.upgrade?.state === 'fell-back' && v.slot?.booted !== slot) {
      return { done: false, reason: `the try of slot ${slot} fell back: ${v.upgrade.reason ?? 'no reason recorded'}`, status };
    }
    if (!rebooting && v?.reachable) {
      const r = await fetcher(agentUrl(cluster, nodeOf(cluster, node).ip, '/v1/upgrade/reboot'), { method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}` }, timeoutMs: 60_000 });
      const answer = agentAnswer(r);
      if (answer.ok) {
        rebooting = true;
        say(`${node} reboots: ${answer.reason}`);
      } else say(`${node} does not reboot yet: ${answer.reason}`);
    } else if (!v?.reachable) say(`${node} does not answer (rebooting)`);
    else say(`${node}: slot ${v.slot?.booted ?? '?'} ${v.slot?.state ?? '?'}; the pair is ${status.health}`);
    if (now() >= deadline) return { done: false, reason: `not done in time: ${last}`, status };
    await sleep(5000);
  }
}
