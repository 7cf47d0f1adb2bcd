import type { Cluster } from '#common/schema/cluster.ts';
import type { NodeCheck } from './check.ts';
import type { ClusterStatus, NodeView } from './status.ts';

/** One step of a pair coming up, as `deploy --watch` shows it. */
export interface DeployStep {
  id: string;
  title: string;
  state: 'waiting' | 'done' | 'skipped';
  detail: string;
}

const isLeader = (n: NodeView): boolean => n.reachable && n.role === 'leader' && n.pg?.up === true && n.pg.role === 'primary' && n.pg.readOnly !== true;

/**
 * Where a freshly flashed pair is on its way to healthy (pure), from `status` and the nodes'
 * `/v1/check`: each node up (first boot done, its agent answers), the leader's PostgreSQL
 * initialised and writable, the standby cloned and streaming, replication synchronous, the VIP
 * on the leader only, the witness's record, and K3s Ready when the image has it.
 */
export function deploySteps(cluster: Cluster, s: ClusterStatus, checks: NodeCheck[]): DeployStep[] {
  const steps: DeployStep[] = [];
  const step = (id: string, title: string, done: boolean, detail: string): void => {
    steps.push({ id, title, state: done ? 'done' : 'waiting', detail });
  };
  for (const n of s.nodes) {
    step(`${n.name}-up`, `${n.name}: first boot done, agent up`, n.reachable, n.reachable ? `answers at ${n.ip} (${n.role ?? '?'}${n.version ? `, ${n.version}` : ''}${n.slot?.booted ? `, slot ${n.slot.booted}` : ''})` : `no answer yet from ${n.ip}`);
  }
  const leader = s.nodes.find(isLeader);
  const follower = leader ? s.nodes.find((n) => n !== leader) : undefined;
  step('primary', 'PostgreSQL initialised, the leader writable', leader !== undefined, leader ? `${leader.name}: primary, read-write, timeline ${leader.pg?.timeline ?? '?'}` : `waiting for ${cluster.bootstrapLeader ?? cluster.nodes[0]!.name} (the bootstrap leader) to run initdb and start as primary`);
  const streaming = follower?.reachable === true && follower.role === 'follower' && follower.pg?.up === true && follower.pg.role === 'standby' && follower.pg.receiverStreaming === true;
  step('standby', 'standby cloned and streaming', streaming, streaming ? `${follower!.name}: standby, streaming from ${leader!.name}` : follower?.reachable ? `${follower.name}: ${follower.role ?? '?'}, PostgreSQL ${follower.pg?.up ? follower.pg.role : 'not running'}${follower.pg?.up && !follower.pg.receiverStreaming ? ', not streaming yet (pg_basebackup running?)' : ''}` : 'waiting for the follower');
  const sync = leader?.pg?.syncState === 'sync' && leader.degraded !== true;
  step('sync', 'replication synchronous', sync, sync ? `${leader!.name} commits wait for ${follower?.name ?? 'the standby'}` : leader ? `the standby is ${leader.pg?.syncState ?? 'not connected'}${leader.degraded ? ', synchronous replication switched off (degraded)' : ''}` : 'waiting for a leader');
  const vip = leader?.vipHere === true && !s.nodes.some((n) => n !== leader && n.vipHere);
  step('vip', `VIP ${cluster.network.vip} on the leader`, vip, vip ? `held by ${leader!.name}` : `held by ${s.nodes.filter((n) => n.vipHere).map((n) => n.name).join(' and ') || 'nobody'}`);
  if (s.witness.kind === 'lease') {
    const w = s.witness;
    const ok = w.reachable && leader !== undefined && w.holder === leader.name && follower !== undefined && w.promotable === follower.name;
    step('witness', 'witness: lease held, standby promotable', ok, w.reachable ? `holder ${w.holder ?? 'nobody'}, promotable ${w.promotable ?? 'nobody'}` : `the witness does not answer (${w.error ?? 'no answer'})`);
  } else steps.push({ id: 'witness', title: 'witness', state: 'skipped', detail: 'none configured: failover is manual' });
  // Only an image with the Kubernetes layer reports a k3s item; without it there is nothing to wait for.
  const k3s = checks.map((c) => ({ c, item: c.checks?.find((i) => i.name === 'k3s') }));
  const answered = k3s.filter((x) => x.c.reachable);
  if (answered.length === checks.length && answered.every((x) => !x.item)) steps.push({ id: 'k3s', title: 'K3s Ready', state: 'skipped', detail: 'the image has no Kubernetes layer' });
  else step('k3s', 'K3s Ready', k3s.every((x) => x.item?.ok === true), k3s.map((x) => `${x.c.name}: ${x.item ? x.item.detail : x.c.reachable ? 'no K3s' : 'not answering'}`).join('; '));
  return steps;
}

/** Every step done or skipped. */
export function deployDone(steps: DeployStep[]): boolean {
  return steps.every((s) => s.state !== 'waiting');
}

/** One plain line per step whose state or detail changed since `before` (pure; for CI logs and --json). */
export function deployChanges(before: DeployStep[] | undefined, now: DeployStep[]): DeployStep[] {
  return now.filter((s) => {
    const b = before?.find((x) => x.id === s.id);
    return !b || b.state !== s.state || b.detail !== s.detail;
  });
}
