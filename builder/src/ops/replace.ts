import { isScalar, parseDocument, Scalar } from 'yaml';
import { validateSource } from '#common/config.ts';
import type { ValidationIssue } from '#common/errors.ts';
import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { parseSource } from '#common/source.ts';
import { agentAnswer, agentUrl, type ClusterStatus, type Fetcher } from './status.ts';

/** What `geminik8s replace-node` would do, or why it may not (pure). */
export interface ReplacePlan {
  ok: boolean;
  survivor?: string;
  /** The rule the decision rests on, said to the operator. */
  rule: string;
  steps: string[];
}

/**
 * Replacing `old` by a new box at `newIp`: only while the other node leads a writable primary
 * and nothing answers as `old` (a box that is merely cut off may come back; a dead one is
 * replaced). The survivor never restarts PostgreSQL for it.
 */
export function planReplaceNode(s: ClusterStatus, old: string, newIp: string, seedOut: string, backup: string): ReplacePlan {
  const oldView = s.nodes.find((n) => n.name === old);
  if (!oldView) return { ok: false, rule: `${old} is not a node of cluster ${s.cluster} (${s.nodes.map((n) => n.name).join(', ')})`, steps: [] };
  const survivor = s.nodes.find((n) => n.name !== old)!.name;
  const refuse = (rule: string): ReplacePlan => ({ ok: false, survivor, rule, steps: [] });
  if (oldView.reachable) {
    return refuse(`${old}'s agent answers at ${oldView.ip} (role ${oldView.role ?? 'unknown'}): replace-node is for a box that is gone. Power it off or take it off the network first; a box that is only cut off may come back`);
  }
  if (s.leader !== survivor) {
    const why = s.leader === null ? `no node leads a writable primary (${s.reasons.join('; ') || 'nothing answers'})` : `${s.leader} leads`;
    return refuse(`${survivor} must lead a writable primary for its peer to be replaced, but ${why}. When ${survivor} is a standby whose leader is gone, make it the leader first: geminik8s failover --to ${survivor} --force`);
  }
  return {
    ok: true, survivor,
    rule: `${survivor} leads and nothing answers as ${old}: the new box can only join as ${survivor}'s standby (it clones ${survivor}), so no acknowledged write depends on it until it is synchronous`,
    steps: [
      `${survivor}: check again that nothing answers as ${old}; record ${old} at ${newIp} (kept across reboots), rewrite pg_hba.conf for it and reload PostgreSQL (no restart), drop ${old}'s old replication slot and make a new one`,
      `cluster.yaml: nodes.${old}.ip ${oldView.ip} -> ${newIp} (the old file kept as ${backup})`,
      `a new certificate and key for ${old} at ${newIp}, from the kept cluster CA`,
      `the seed for the new box: ${seedOut}`,
      `you: flash or boot the new box with that seed; it finds ${survivor} leading, clones it and becomes its synchronous standby`,
    ],
  };
}

/**
 * cluster.yaml's text with node `name` at `ip` (and `mac`): an edit of the parsed document, so
 * the operator's comments and layout stay, then validated as any cluster.yaml is. Either the new
 * text or every problem, located in `file`.
 */
export function clusterTextWithAddress(file: string, text: string, name: string, ip: string, mac?: string): { text?: string; cluster?: Cluster; issues: ValidationIssue[] } {
  const doc = parseDocument(text, { version: '1.1' });
  const nodes = doc.toJS({ maxAliasCount: 100 })?.nodes as { name?: unknown }[] | undefined;
  const index = Array.isArray(nodes) ? nodes.findIndex((n) => n?.name === name) : -1;
  if (index < 0) return { issues: [{ file, path: 'nodes', message: `no node named ${name}` }] };
  // Values that exist are replaced in the text itself, in their own quoting, so nothing else of
  // the file changes; only a MAC the file lacks needs the document re-serialized.
  const edits: { from: number; to: number; text: string }[] = [];
  const missing: [string, string][] = [];
  for (const [key, value] of [['ip', ip], ['mac', mac]] as const) {
    if (value === undefined) continue;
    const node = doc.getIn(['nodes', index, key], true);
    if (isScalar(node) && node.range) edits.push({ from: node.range[0], to: node.range[1], text: quoted(node.type, value) });
    else missing.push([key, value]);
  }
  let next = text;
  for (const e of edits.sort((a, b) => b.from - a.from)) next = next.slice(0, e.from) + e.text + next.slice(e.to);
  if (missing.length) {
    const again = parseDocument(next, { version: '1.1' });
    for (const [key, value] of missing) again.setIn(['nodes', index, key], value);
    next = again.toString({ lineWidth: 0 });
  }
  const parsed = parseSource(file, next);
  if (!parsed.source) return { issues: parsed.issues };
  const { result, issues } = validateSource(parsed.source, 'Cluster');
  if (!result) return { issues };
  return { text: next, cluster: result.value as Cluster, issues: [] };
}

function quoted(type: Scalar['type'], value: string): string {
  if (type === Scalar.QUOTE_DOUBLE) return JSON.stringify(value);
  if (type === Scalar.QUOTE_SINGLE) return `'${value.replaceAll("'", "''")}'`;
  return value;
}

/** Ask the survivor's agent to take the replaced peer at its new address (admin-token). */
export async function requestReplacePeer(cluster: Cluster, secrets: Secrets, survivor: string, peer: { name: string; ip: string; mac?: string }, fetcher: Fetcher): Promise<{ ok: boolean; reason: string; changed?: boolean }> {
  const node = cluster.nodes.find((n) => n.name === survivor)!;
  const r = await fetcher(agentUrl(cluster, node.ip, '/v1/replace-peer'), { method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify(peer), timeoutMs: 60_000 });
  const { ok, reason, body } = agentAnswer(r);
  return { ok, reason, ...(typeof body.changed === 'boolean' ? { changed: body.changed } : {}) };
}
