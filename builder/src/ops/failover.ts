import type { Cluster } from '../../../common/schema/cluster.ts';
import type { Secrets } from '../../../common/schema/seed.ts';
import { agentAnswer, agentUrl, collectStatus, type ClusterStatus, type Fetcher } from './status.ts';

/** What a planned switchover to `to` would do, or why it may not (pure). */
export interface FailoverPlan {
  ok: boolean;
  from?: string;
  to: string;
  /** The rule the decision rests on, said to the operator. */
  rule: string;
  steps: string[];
}

export function planFailover(s: ClusterStatus, to: string): FailoverPlan {
  const target = s.nodes.find((n) => n.name === to);
  if (!target) return { ok: false, to, rule: `${to} is not a node of cluster ${s.cluster} (${s.nodes.map((n) => n.name).join(', ')})`, steps: [] };
  if (s.leader === to) return { ok: false, to, rule: `${to} is already the leader: nothing to do`, steps: [] };
  if (!s.leader) return { ok: false, to, rule: `no node is a leader with a writable primary (${s.reasons.join('; ')}); a planned switchover needs one. A dead leader is the witness's to replace, not an operator's`, steps: [] };
  const leader = s.leader;
  const refuse = (rule: string): FailoverPlan => ({ ok: false, from: leader, to, rule, steps: [] });
  if (!target.reachable) return refuse(`${to} does not answer (${target.error ?? 'no answer'})`);
  if (target.role !== 'follower' || !target.pg?.up || target.pg.role !== 'standby') return refuse(`${to} is ${target.role ?? 'unknown'} with PostgreSQL ${target.pg?.up ? target.pg.role : 'down'}: only a running standby can take over`);
  const leaderView = s.nodes.find((n) => n.name === leader)!;
  if (leaderView.pg?.syncState !== 'sync') return refuse(`the standby is ${leaderView.pg?.syncState ?? 'not connected'}: only a synchronous standby holds every acknowledged write`);
  if (s.witness.kind === 'lease' && s.witness.reachable && s.witness.promotable !== to) return refuse(`the witness records ${s.witness.promotable ?? 'nobody'} as promotable, not ${to}: it would refuse ${to} the lease`);
  return {
    ok: true, from: leader, to,
    rule: 'a synchronous standby that the witness records as promotable holds every acknowledged write; the leader stops writes and waits until the standby has replayed its last LSN before it hands over',
    steps: [
      `${leader}: default_transaction_read_only on; wait (5 s at most) until ${to} has replayed the last LSN, else resume writes and stop here`,
      `${leader}: stop PostgreSQL, drop the VIP${s.witness.kind === 'lease' ? ', release the lease at the witness' : ''}`,
      `${to}: ${s.witness.kind === 'lease' ? 'take the lease at the witness (generation + 1), ' : ''}promote, take the VIP`,
      `${leader}: follow ${to} as its standby`,
    ],
  };
}

/** Ask the leader's agent for the switchover (admin-token), as planned. */
export async function requestSwitchover(cluster: Cluster, secrets: Secrets, leader: string, fetcher: Fetcher): Promise<{ ok: boolean; reason: string; tookMs?: number }> {
  const node = cluster.nodes.find((n) => n.name === leader)!;
  // The agent waits 5 s for catch-up and 10 s for the peer's answer, then asks the witness.
  const r = await fetcher(agentUrl(cluster, node.ip, '/v1/switchover'), { method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}` }, timeoutMs: 60_000 });
  const { ok, reason, body } = agentAnswer(r);
  return { ok, reason, ...(typeof body.tookMs === 'number' ? { tookMs: body.tookMs } : {}) };
}

/** Poll until `to` leads a healthy pair, or the deadline passes; the last status either way. */
export async function waitForLeader(cluster: Cluster, secrets: Secrets, to: string, fetcher: Fetcher, timeoutMs: number, sleep: (ms: number) => Promise<void>, now: () => number = () => performance.now()): Promise<{ done: boolean; status: ClusterStatus }> {
  const deadline = now() + timeoutMs;
  for (;;) {
    const status = await collectStatus(cluster, secrets, fetcher);
    if (status.leader === to && status.health === 'healthy') return { done: true, status };
    if (now() >= deadline) return { done: false, status };
    await sleep(1000);
  }
}
