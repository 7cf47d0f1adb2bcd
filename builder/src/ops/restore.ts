import { createReadStream } from 'node:fs';
import type { BackupHeader } from '#common/backup/format.ts';
import { decodeBackup } from '#common/backup/format.ts';
import { ExitCode, GeminiError } from '#common/errors.ts';
import { httpStream, type ClientTls } from '#common/httpclient.ts';
import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { verifyBackupFile } from './backup.ts';
import { waitForLeader } from './failover.ts';
import { agentUrl, collectStatus, streamedAnswer, type ClusterStatus, type Fetcher } from './status.ts';

export interface RestorePlan {
  ok: boolean;
  /** Why it cannot go ahead (nothing was touched). */
  reason?: string;
  header: BackupHeader;
  files: number;
  bytes: number;
  leader: string | null;
  follower: string | null;
  steps: string[];
}

/**
 * Check a backup file as a whole (every chunk authenticated, every file against its manifest,
 * the cluster it belongs to and its K3s token), then plan its restore onto the pair as it is.
 * Nothing on the pair is changed here.
 */
export async function planRestore(cluster: Cluster, secrets: Secrets, fetcher: Fetcher, file: string, key: Buffer | undefined): Promise<RestorePlan & { status: ClusterStatus }> {
  const v = await verifyBackupFile(file, key, undefined, (h) => {
    if (h.cluster !== cluster.name) throw new GeminiError(`${file}: a backup of cluster ${h.cluster}, not of ${cluster.name}: refusing to restore it here`, ExitCode.refused);
  });
  const status = await collectStatus(cluster, secrets, fetcher);
  const base = { header: v.header, files: v.files, bytes: v.bytes, status };
  if (v.meta.k3sToken !== secrets.k3sToken) {
    return { ...base, ok: false, leader: status.leader, follower: null, steps: [], reason: `the backup was taken with another K3s server token than this cluster's secrets/k3s-token: K3s could not read the restored datastore` };
  }
  if (!status.leader) return { ...base, ok: false, leader: null, follower: null, steps: [], reason: `no node leads a writable primary (${status.reasons.join('; ') || status.health}): a restore goes through the leader's agent` };
  const follower = cluster.nodes.find((n) => n.name !== status.leader)!.name;
  const followerUp = status.nodes.find((n) => n.name === follower)?.reachable ?? false;
  const steps = [
    `check the whole file again while streaming it to ${status.leader}, which extracts it beside its data directory and checks every file against the manifest`,
    `${status.leader}: record at the witness that nobody may be promoted; stop K3s and Kine, then PostgreSQL`,
    `${status.leader}: swap in the restored data directory (the current one is kept as <data>.pre-restore-<time>), recover to the end of the backup and promote onto a new timeline; start K3s and Kine`,
    followerUp ? `${follower}: set its data directory aside and clone it again from ${status.leader}` : `${follower} does not answer: re-clone it when it is back (geminik8s reclone --node ${follower})`,
    `wait until ${status.leader} leads a healthy pair again`,
  ];
  return { ...base, ok: true, leader: status.leader, follower: followerUp ? follower : null, steps };
}

/** POST /v1/reclone to `node`: its standby rebuilt from the leader. */
export async function requestReclone(cluster: Cluster, secrets: Secrets, tls: ClientTls | undefined, node: string): Promise<{ ok: boolean; reason: string }> {
  const n = cluster.nodes.find((x) => x.name === node);
  if (!n) throw new GeminiError(`--node: ${node} is not a node of ${cluster.name} (${cluster.nodes.map((x) => x.name).join(', ')})`, ExitCode.invalidInput);
  const a = await httpStream(agentUrl(cluster, n.ip, '/v1/reclone'), {
    method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}`, 'content-type': 'application/json' }, body: '{}',
    connectTimeoutMs: 60 * 60_000, idleTimeoutMs: 60 * 60_000, ...(tls ? { tls } : {}),
  });
  const r = await streamedAnswer(a);
  return { ok: r.status === 200 && r.body.ok === true, reason: String(r.body.reason ?? r.body.error ?? `HTTP ${r.status}`) };
}

/**
 * Whether a refused re-clone is worth asking again: the follower was between roles, or busy.
 * Right after a restore it may be rejoining by itself (it saw the peer lead on a newer
 * timeline), and its agent refuses a re-clone until it is a follower again ("this node is the
 * fenced; ...").
 */
export function recloneRefusalIsTransient(reason: string): boolean {
  return /^this node is the (fenced|init); a re-clone runs on the follower$/.test(reason) || reason.startsWith('busy: ');
}

/** requestReclone, asked again every 2 s while the refusal is transient, until `waitMs` has passed. */
export async function recloneWhenFollower(cluster: Cluster, secrets: Secrets, tls: ClientTls | undefined, node: string, waitMs: number, sleep: (ms: number) => Promise<void>): Promise<{ ok: boolean; reason: string }> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const r = await requestReclone(cluster, secrets, tls, node);
    if (r.ok || !recloneRefusalIsTransient(r.reason) || Date.now() > deadline) return r;
    await sleep(2000);
  }
}

export interface RestoreOutcome {
  timeline: number;
  kept?: string;
  reclone?: { ok: boolean; reason: string };
  status: ClusterStatus;
  healthy: boolean;
}

/**
 * Carry out a plan from `planRestore`: stream the authenticated payload to the leader's
 * /v1/restore, re-clone the follower, and wait for a healthy pair led by the same node.
 */
export async function runRestore(cluster: Cluster, secrets: Secrets, tls: ClientTls | undefined, fetcher: Fetcher, file: string, key: Buffer | undefined, plan: RestorePlan, waitMs: number): Promise<RestoreOutcome> {
  const leader = cluster.nodes.find((n) => n.name === plan.leader)!;
  // The second read authenticates every chunk again on its way out: the agent never receives
  // bytes this file did not vouch for, and checks each file against the manifest once more.
  const a = await httpStream(agentUrl(cluster, leader.ip, '/v1/restore'), {
    method: 'POST',
    headers: { authorization: `Bearer ${secrets.adminToken}`, 'content-type': 'application/x-tar', 'x-geminik8s-restore-bytes': String(plan.bytes) },
    body: decodeBackup(createReadStream(file), file, key),
    connectTimeoutMs: 30 * 60_000, idleTimeoutMs: 30 * 60_000, ...(tls ? { tls } : {}),
  });
  const r = await streamedAnswer(a);
  if (r.status !== 200 || r.body.ok !== true) {
    throw new GeminiError(`${leader.name} did not restore the backup (HTTP ${r.status}): ${String(r.body.reason ?? r.body.error ?? 'no reason given')}`, r.status === 409 || r.status === 400 ? ExitCode.refused : ExitCode.commandFailed);
  }
  const outcome: Omit<RestoreOutcome, 'status' | 'healthy'> = { timeline: Number(r.body.timeline), ...(typeof r.body.kept === 'string' ? { kept: r.body.kept } : {}) };
  const sleep = (ms: number) => new Promise<void>((res) => setTimeout(res, ms));
  if (plan.follower) outcome.reclone = await recloneWhenFollower(cluster, secrets, tls, plan.follower, waitMs, sleep);
  const w = await waitForLeader(cluster, secrets, leader.name, fetcher, waitMs, sleep);
  return { ...outcome, status: w.status, healthy: w.done };
}
