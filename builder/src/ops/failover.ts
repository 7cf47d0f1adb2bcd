import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
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
  if (!s.leader) return { ok: false, to, rule: `no node is a leader with a writable primary (${s.reasons.join('; ')}); a planned switchover needs one. A dead leader is the witness's to replace; when it will not (its standby was not synchronous), see failover --force`, steps: [] };
  const leader = s.leader;
  const refuse = (rule: string): FailoverPlan => ({ ok: false, from: leader, to, rule, steps: [] });
  if (!target.reachable) return refuse(`${to} does not answer (${target.error ?? 'no answer'})`);
  if (target.role !== 'follower' || !target.pg?.up || target.pg.role !== 'standby') return refuse(`${to} is ${target.role ?? 'unknown'} with PostgreSQL ${target.pg?.up ? target.pg.role : 'down'}: only a running standby can take over`);
  const leaderView = s.nodes.find((n) => n.name === leader)!;
  if (leaderView.pg?.syncState !== 'sync') return refuse(`the standby is ${leaderView.pg?.syncState ?? 'not connected'}: only a synchronous standby holds every acknowledged write`);
  if (s.witness.kind === 'lease' && s.witness.reachable && s.witness.promotable !== to) return refuse(`the witness records ${s.witness.promotable ?? 'nobody'} as promotable, not ${to}: it would refuse ${to} the lease. ${leader} records a standby as promotable after it has been synchronous for two of its rounds: when ${to} has just caught up, run this again once \`geminik8s status\` says HEALTHY`);
  return {
    ok: true, from: leader, to,
    rule: 'a synchronous standby that the witness records as promotable holds every acknowledged write; the leader stops writes and waits until the standby has replayed its last LSN before it hands over',
    steps: [
      `${leader}: CHECKPOINT while writes go on; default_transaction_read_only on; wait (5 s at most) until ${to} has replayed the last LSN, else resume writes and stop here`,
      `${leader}: stop PostgreSQL, drop the VIP${s.witness.kind === 'lease' ? ', release the lease at the witness' : ''}`,
      `${to}: ${s.witness.kind === 'lease' ? 'take the lease at the witness (generation + 1), ' : ''}promote, take the VIP`,
      `${leader}: follow ${to} as its standby`,
    ],
  };
}

/** What a forced failover to `to` would do, or why it may not (pure). */
export interface ForcePlan extends FailoverPlan {
  /** The witness generation the decision rests on: the witness refuses if it has moved on. */
  generation?: number;
  /** `to` was not recorded as synchronous: acknowledged writes only the old leader had are lost. */
  dataLoss: boolean;
}

/**
 * A forced failover: the leader is gone and the operator makes `to` the leader through the
 * witness. Refused without a reachable witness, while a leader still writes, for anything but a
 * running standby, and, unless `acceptDataLoss`, when `to` is not the recorded synchronous standby.
 */
export function planForceFailover(s: ClusterStatus, to: string, acceptDataLoss: boolean): ForcePlan {
  const target = s.nodes.find((n) => n.name === to);
  const refuse = (rule: string, dataLoss = false): ForcePlan => ({ ok: false, to, rule, steps: [], dataLoss });
  if (!target) return refuse(`${to} is not a node of cluster ${s.cluster} (${s.nodes.map((n) => n.name).join(', ')})`);
  const w = s.witness;
  if (w.kind !== 'lease') return refuse('this cluster has no witness: nothing can prove that the old leader stopped writing, so there is nothing to force through. Power the old leader off for good, then re-seed the pair (docs/faq.md)');
  if (!w.reachable) return refuse(`the witness does not answer (${w.error ?? 'no answer'}): only it can prove that the old leader stopped writing (its lease expired)`);
  if (s.leader) return refuse(`${s.leader} leads a writable primary: use a planned switchover (failover without --force), which loses nothing`);
  const old = s.nodes.find((n) => n.name !== to)!;
  if (w.holder === to) return refuse(`the witness already records ${to} as the lease holder (generation ${w.generation ?? 0}): it finishes its promotion by itself`);
  if (!target.reachable) return refuse(`${to} does not answer (${target.error ?? 'no answer'})`);
  if (target.role !== 'follower' || !target.pg?.up || target.pg.role !== 'standby') return refuse(`${to} is ${target.role ?? 'unknown'} with PostgreSQL ${target.pg?.up ? target.pg.role : 'down'}: only a running standby can take over`);
  if (old.reachable && old.role === 'leader' && old.lease?.held) return refuse(`${old.name} still holds its lease (${old.lease.msLeft} ms left): it may be writing. Wait until it has expired, or use a planned switchover`);
  const from = w.holder ?? old.name;
  const dataLoss = w.promotable !== to;
  const replayed = target.pg.lsn ? ` ${to} has WAL up to ${target.pg.lsn}${target.pg.timeline !== null ? ` on timeline ${target.pg.timeline}` : ''}.` : '';
  const fencing = `the witness revokes the lease of ${from} only once it has expired there, and ${from} has fenced itself by its own earlier deadline: never two writable primaries`;
  if (dataLoss && !acceptDataLoss) {
    return refuse(`the witness records ${w.promotable ?? 'nobody'} as promotable, not ${to}: ${old.name} had stopped waiting for ${to} (or ${to} had not caught up), so writes ${old.name} acknowledged may be missing from ${to}.${replayed} Give --accept-data-loss to make ${to} the leader anyway; ${old.name} then discards what only it had when it rejoins`, true);
  }
  const generation = w.generation ?? 0;
  return {
    ok: true, from, to, generation, dataLoss,
    rule: dataLoss
      ? `${fencing}. ${to} was not recorded as synchronous: acknowledged writes it does not have are lost (accepted with --accept-data-loss).${replayed}`
      : `${fencing}. ${to} is the recorded synchronous standby: it holds every acknowledged write`,
    steps: [
      dataLoss
        ? `witness: once the lease of ${from} has expired, revoke it (generation ${generation} -> ${generation + 1}) and name ${to} promotable; refused if the generation is no longer ${generation}`
        : `witness: already names ${to} promotable; nothing is revoked`,
      `${to}: take the lease (generation ${generation + (dataLoss ? 2 : 1)}), promote, take the VIP`,
      `${old.name}: when it runs again it finds a newer generation, stays fenced and rejoins as ${to}'s standby (as it is when its WAL is a prefix of ${to}'s, else pg_rewind, else a fresh clone)${dataLoss ? ', discarding what only it had' : ''}`,
    ],
  };
}

/** Ask `to`'s agent to take over through the witness (admin-token), as planned. */
export async function requestForcePromote(cluster: Cluster, secrets: Secrets, to: string, generation: number, fetcher: Fetcher): Promise<{ ok: boolean; reason: string; generation?: number; forced?: boolean }> {
  const node = cluster.nodes.find((n) => n.name === to)!;
  const r = await fetcher(agentUrl(cluster, node.ip, '/v1/force-promote'), { method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify({ generation }), timeoutMs: 120_000 });
  const { ok, reason, body } = agentAnswer(r);
  return { ok, reason, ...(typeof body.generation === 'number' ? { generation: body.generation } : {}), ...(typeof body.forced === 'boolean' ? { forced: body.forced } : {}) };
}

/** Ask the leader's agent for the switchover (admin-token), as planned. */
export async function requestSwitchover(cluster: Cluster, secrets: Secrets, leader: string, fetcher: Fetcher): Promise<{ ok: boolean; reason: string; tookMs?: number }> {
  const node = cluster.nodes.find((n) => n.name === leader)!;
  // The agent waits 5 s for catch-up and 10 s for the peer's answer, then asks the witness.
  const r = await fetcher(agentUrl(cluster, node.ip, '/v1/switchover'), { method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}` }, timeoutMs: 60_000 });
  const { ok, reason, body } = agentAnswer(r);
  return { ok, reason, ...(typeof body.tookMs === 'number' ? { tookMs: body.tookMs } : {}) };
}

/** Poll until `to` leads a healthy pair (or only leads, unless `healthy`), or the deadline passes; the last status either way. `null`: until nobody leads. */
export async function waitForLeader(cluster: Cluster, secrets: Secrets, to: string | null, fetcher: Fetcher, timeoutMs: number, sleep: (ms: number) => Promise<void>, now: () => number = () => performance.now(), healthy = true): Promise<{ done: boolean; status: ClusterStatus }> {
  const deadline = now() + timeoutMs;
  for (;;) {
    const status = await collectStatus(cluster, secrets, fetcher);
    if (status.leader === to && (!healthy || status.health === 'healthy')) return { done: true, status };
    if (now() >= deadline) return { done: false, status };
    await sleep(1000);
  }
}
