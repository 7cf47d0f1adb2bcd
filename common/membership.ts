import { clusterRules, type ClusterSpec } from './schema/cluster.ts';
import { ipv4, macAddress } from './schema/units.ts';

/** What moving a node to a new address gives: the new spec, or every rule it would break. */
export interface AddressChange<T extends ClusterSpec> {
  spec?: T;
  /** Dotted path, what is wrong and what was found, one line each. */
  problems: string[];
}

/**
 * `spec` with node `name` at `ip` (and `mac`, when given), checked by the same cross-field rules
 * as cluster.yaml (subnet, VIP, gateway, witness, the other node): a replacement box
 * (`geminik8s replace-node`) and the survivor's agent accept an address only through this.
 */
export function withNodeAddress<T extends ClusterSpec>(spec: T, name: string, ip: string, mac?: string): AddressChange<T> {
  const index = spec.nodes.findIndex((n) => n.name === name);
  if (index < 0) return { problems: [`nodes: no node named ${name} (the nodes are ${spec.nodes.map((n) => n.name).join(', ')})`] };
  const problems: string[] = [];
  const parsedIp = ipv4.safeParse(ip);
  if (!parsedIp.success) problems.push(`nodes.${index}.ip: ${parsedIp.error.issues[0]!.message} (found ${JSON.stringify(ip)})`);
  const parsedMac = mac === undefined ? undefined : macAddress.safeParse(mac);
  if (parsedMac && !parsedMac.success) problems.push(`nodes.${index}.mac: ${parsedMac.error.issues[0]!.message} (found ${JSON.stringify(mac)})`);
  if (problems.length) return { problems };
  const node = { ...spec.nodes[index]!, ip: parsedIp.data! };
  if (parsedMac?.success) node.mac = parsedMac.data;
  const nodes = spec.nodes.map((n, i) => (i === index ? node : n));
  const next = { ...spec, nodes } as T;
  // Only what the move causes: a rule the spec broke already (a hand-made test seed) is not its fault.
  const key = (r: { path: (string | number)[]; message: string }): string => `${r.path.join('.')}: ${r.message}`;
  const before = new Set(clusterRules(spec).map(key));
  for (const r of clusterRules(next)) {
    if (before.has(key(r))) continue;
    problems.push(`${r.path.join('.')}: ${r.message}${r.found !== undefined ? ` (found ${r.found})` : ''}`);
  }
  return problems.length ? { problems } : { spec: next, problems };
}
