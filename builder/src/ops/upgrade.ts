import { createReadStream, statSync } from 'node:fs';
import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { httpStream, type ClientTls } from '#common/httpclient.ts';
import { waitForSlot } from './rollback.ts';
import { agentAnswer, agentUrl, collectStatus, streamedAnswer, type ClusterStatus, type Fetcher } from './status.ts';

/** One node's part in a rolling upgrade. */
export interface UpgradeStep {
  node: string;
  action: 'upgrade' | 'skip';
  reason: string;
}

/** The order a rolling upgrade takes, or why it does not start. */
export interface UpgradePlan {
  version: string;
  steps: UpgradeStep[];
  refusal?: string;
}

/**
 * The order of a rolling upgrade to `version` (pure): only from a healthy pair; a node that
 * already runs `version` on a blessed slot is skipped; the follower goes first and the leader
 * last, so the leader's switchover (its agent hands over before it reboots) hands the lease to a
 * node that already runs the new version and has passed its health gate. `only` limits it to one node.
 */
export function planRollingUpgrade(status: ClusterStatus, version: string, only?: string): UpgradePlan {
  const steps = status.nodes
    .filter((n) => !only || n.name === only)
    .map((n): UpgradeStep & { leader: boolean } => {
      const leader = n.name === status.leader;
      if (n.version === version && n.slot?.state === 'steady') return { node: n.name, action: 'skip', reason: `runs ${version} on its blessed slot ${n.slot.booted ?? '?'}`, leader };
      return { node: n.name, action: 'upgrade', reason: `runs ${n.version ?? 'an unknown version'}${leader ? ', leads: it switches over before its reboot' : ''}`, leader };
    })
    .sort((a, b) => Number(a.leader) - Number(b.leader))
    .map(({ leader: _l, ...s }) => s);
  if (status.health !== 'healthy') {
    return { version, steps, refusal: `the pair is ${status.health}${status.reasons.length ? ` (${status.reasons.join('; ')})` : ''}: an upgrade starts only from a healthy pair, so that one node is always up` };
  }
  const trying = status.nodes.find((n) => n.slot?.state === 'trying');
  if (trying) return { version, steps, refusal: `${trying.name} boots an unblessed try of slot ${trying.slot?.booted ?? '?'}: let it pass its health gate (or fall back) first` };
  return { version, steps };
}

/** The agent's answer to a streamed bundle (POST /v1/upgrade/stage). */
export interface StageAnswer {
  ok: boolean;
  reason: string;
  slot?: string;
  version?: string;
}

/**
 * Stream `file` to `node`'s agent (admin-token), which verifies it against its own trusted keys
 * and running version and writes its passive slot. The agent answers once the slot is written.
 */
export async function stageBundle(cluster: Cluster, secrets: Secrets, tls: ClientTls | undefined, node: string, file: string, retry: boolean): Promise<StageAnswer> {
  const ip = cluster.nodes.find((n) => n.name === node)!.ip;
  const bytes = String(statSync(file).size);
  const a = await httpStream(agentUrl(cluster, ip, '/v1/upgrade/stage'), {
    method: 'POST',
    headers: { authorization: `Bearer ${secrets.adminToken}`, 'content-type': 'application/x-tar', 'content-length': bytes, 'x-geminik8s-bundle-bytes': bytes, 'x-geminik8s-retry': retry ? '1' : '0' },
    body: createReadStream(file, { highWaterMark: 1024 * 1024 }),
    // Writing a slot under TCG takes minutes; a dead link still fails after ten without a byte.
    connectTimeoutMs: 30 * 60_000, idleTimeoutMs: 10 * 60_000, ...(tls ? { tls } : {}),
  });
  const answer = agentAnswer(await streamedAnswer(a));
  const stage = (answer.body.stage ?? {}) as { slot?: unknown; version?: unknown };
  return { ok: answer.ok, reason: answer.reason, ...(typeof stage.slot === 'string' ? { slot: stage.slot } : {}), ...(typeof stage.version === 'string' ? { version: stage.version } : {}) };
}

/** What happened to one node. */
export interface UpgradeOutcome {
  node: string;
  action: 'upgrade' | 'skip';
  done: boolean;
  reason: string;
  slot?: string;
  /** Seconds to stage (upload, verify, write), and from then until blessed with the pair healthy. */
  stageSeconds?: number;
  blessSeconds?: number;
}

export interface RollingUpgradeOptions {
  file: string;
  version: string;
  retry: boolean;
  /** For each node, from its stage to its blessing. */
  timeoutMs: number;
  tls: ClientTls | undefined;
  fetcher: Fetcher;
  stage?: typeof stageBundle;
  sleep?: (ms: number) => Promise<void>;
  now?: () => number;
  progress: (line: string) => void;
}

/**
 * Upgrade the pair one node at a time in `plan`'s order: stage the bundle through the node's
 * agent, ask it to reboot until the pair allows (a leader switches over first; a node refuses
 * while its peer is unhealthy, upgrading or unblessed), then wait until it runs `version` on the
 * new slot, blessed, with the pair healthy again, before the next node. Stops at the first
 * node that does not get there: the other one is never touched after a failure.
 */
export async function runRollingUpgrade(cluster: Cluster, secrets: Secrets, plan: UpgradePlan, o: RollingUpgradeOptions): Promise<{ outcomes: UpgradeOutcome[]; status: ClusterStatus }> {
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const now = o.now ?? (() => performance.now());
  const stage = o.stage ?? stageBundle;
  const outcomes: UpgradeOutcome[] = [];
  for (const step of plan.steps) {
    if (step.action === 'skip') {
      o.progress(`${step.node}: skipped, it ${step.reason}`);
      outcomes.push({ node: step.node, action: 'skip', done: true, reason: step.reason });
      continue;
    }
    o.progress(`${step.node}: staging ${o.version} (it ${step.reason})`);
    const t0 = now();
    const s = await stage(cluster, secrets, o.tls, step.node, o.file, o.retry).catch((err: Error): StageAnswer => ({ ok: false, reason: err.message }));
    const stageSeconds = Math.round((now() - t0) / 100) / 10;
    if (!s.ok || !s.slot) {
      outcomes.push({ node: step.node, action: 'upgrade', done: false, reason: `staging refused: ${s.reason}`, stageSeconds });
      return { outcomes, status: await collectStatus(cluster, secrets, o.fetcher) };
    }
    o.progress(`${step.node}: ${s.reason} (${stageSeconds} s)`);
    const t1 = now();
    const w = await waitForSlot(cluster, secrets, step.node, { slot: s.slot, version: o.version }, false, o.fetcher, o.timeoutMs, sleep, (l) => o.progress(l), now);
    const blessSeconds = Math.round((now() - t1) / 100) / 10;
    outcomes.push({ node: step.node, action: 'upgrade', done: w.done, reason: w.reason, slot: s.slot, stageSeconds, blessSeconds });
    if (!w.done) return { outcomes, status: w.status };
    o.progress(`${step.node}: ${w.reason} (${blessSeconds} s after staging)`);
  }
  return { outcomes, status: await collectStatus(cluster, secrets, o.fetcher) };
}
