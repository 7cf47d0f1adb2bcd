import { runPlan, type CommandPlan } from '#common/exec.ts';

/** The harness's private L2: addresses exist only inside namespaces the harness creates. */
export const NET = {
  prefix: 24,
  gateway: '10.77.0.1',
  vip: '10.77.0.50',
  client: '10.77.0.100',
  nodes: [
    { name: 'node1', ip: '10.77.0.11' },
    { name: 'node2', ip: '10.77.0.12' },
  ],
  witnessPort: 7444,
} as const;

export interface Topology {
  prefix: string;
  /** Namespace of each node, by node name. */
  nodeNs: Record<string, string>;
  /** Holds the bridge, the gateway address and the witness. */
  witnessNs: string;
  /** Where the writer runs. */
  clientNs: string;
  /** Bridge-side veth of each member, by member name. */
  bridgePort: Record<string, string>;
}

const ip = (...args: string[]): CommandPlan => ({ cmd: 'ip', args });

/** The plans that build the topology (pure: the tests snapshot them). */
export function topologyPlans(prefix: string): { topology: Topology; plans: CommandPlan[] } {
  const witnessNs = `${prefix}-w`;
  const clientNs = `${prefix}-c`;
  const nodeNs = Object.fromEntries(NET.nodes.map((n, i) => [n.name, `${prefix}-n${i + 1}`]));
  const members = [
    ...NET.nodes.map((n, i) => ({ name: n.name, ns: nodeNs[n.name]!, ip: n.ip, port: `gkp${i + 1}` })),
    { name: 'client', ns: clientNs, ip: NET.client, port: 'gkpc' },
  ];
  const plans: CommandPlan[] = [];
  for (const ns of [witnessNs, clientNs, ...Object.values(nodeNs)]) {
    plans.push(ip('netns', 'add', ns), ip('-n', ns, 'link', 'set', 'lo', 'up'));
  }
  plans.push(
    ip('-n', witnessNs, 'link', 'add', 'br0', 'type', 'bridge'),
    ip('-n', witnessNs, 'addr', 'add', `${NET.gateway}/${NET.prefix}`, 'dev', 'br0'),
    ip('-n', witnessNs, 'link', 'set', 'br0', 'up'),
  );
  for (const m of members) {
    // Create the pair inside the witness namespace, then move the node end into the node's.
    plans.push(
      ip('-n', witnessNs, 'link', 'add', m.port, 'type', 'veth', 'peer', 'name', 'eth0'),
      ip('-n', witnessNs, 'link', 'set', 'eth0', 'netns', m.ns),
      ip('-n', witnessNs, 'link', 'set', m.port, 'master', 'br0'),
      ip('-n', witnessNs, 'link', 'set', m.port, 'up'),
      ip('-n', m.ns, 'addr', 'add', `${m.ip}/${NET.prefix}`, 'dev', 'eth0'),
      ip('-n', m.ns, 'link', 'set', 'eth0', 'up'),
      ip('-n', m.ns, 'route', 'add', 'default', 'via', NET.gateway),
    );
  }
  // As the image sets it (overlays/usr/lib/sysctl.d/60-geminik8s.conf): a node answers ARP only
  // for the addresses it carries, so the agent keeps a refusing route after it drops the VIP.
  for (const ns of Object.values(nodeNs)) plans.push(ip('netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.conf.all.arp_ignore=1'));
  return {
    topology: { prefix, nodeNs, witnessNs, clientNs, bridgePort: Object.fromEntries(members.map((m) => [m.name, m.port])) },
    plans,
  };
}

export async function createTopology(prefix: string): Promise<Topology> {
  await destroyNamespaces(prefix);
  const { topology, plans } = topologyPlans(prefix);
  for (const p of plans) await runPlan(p, { timeoutMs: 10_000 });
  return topology;
}

/**
 * Remove the namespace `prefix` and every `prefix-*` (also leftovers of crashed runs). Not any
 * name that merely starts with it: the harness's prefix is gk<pid>, and gk12 must not take
 * gk1234's namespaces.
 */
export async function destroyNamespaces(prefix: string): Promise<void> {
  const r = await runPlan(ip('netns', 'list'), { allowFailure: true });
  const names = r.stdout.split('\n').map((l) => l.split(' ')[0]!).filter((n) => n === prefix || n.startsWith(`${prefix}-`));
  for (const ns of names) {
    const pids = await runPlan(ip('netns', 'pids', ns), { allowFailure: true });
    for (const pid of pids.stdout.split('\n').filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await runPlan(ip('netns', 'del', ns), { allowFailure: true });
  }
}

/** Run a command inside a namespace. */
export function inNs(ns: string, cmd: string, args: string[], env?: Record<string, string>): CommandPlan {
  return { cmd: 'ip', args: ['netns', 'exec', ns, cmd, ...args], env };
}

/** Cut a member off the bridge entirely (its cable pulled). */
export async function linkDown(t: Topology, member: string): Promise<void> {
  await runPlan(ip('-n', t.witnessNs, 'link', 'set', t.bridgePort[member]!, 'down'));
}

export async function linkUp(t: Topology, member: string): Promise<void> {
  await runPlan(ip('-n', t.witnessNs, 'link', 'set', t.bridgePort[member]!, 'up'));
}

/** A new box in a node's place: its NIC has `newIp` instead of `oldIp` (same subnet, same gateway). */
export async function readdressNode(t: Topology, node: string, oldIp: string, newIp: string): Promise<void> {
  const ns = t.nodeNs[node]!;
  await runPlan(ip('-n', ns, 'addr', 'del', `${oldIp}/${NET.prefix}`, 'dev', 'eth0'), { allowFailure: true });
  await runPlan(ip('-n', ns, 'addr', 'add', `${newIp}/${NET.prefix}`, 'dev', 'eth0'));
  await runPlan(ip('-n', ns, 'route', 'replace', 'default', 'via', NET.gateway));
}

/** Drop traffic between a node and one address, both ways, inside the node's namespace. */
export async function blockPeer(t: Topology, node: string, peerIp: string, on: boolean): Promise<void> {
  const op = on ? '-A' : '-D';
  await runPlan(inNs(t.nodeNs[node]!, 'iptables', [op, 'INPUT', '-s', peerIp, '-j', 'DROP']));
  await runPlan(inNs(t.nodeNs[node]!, 'iptables', [op, 'OUTPUT', '-d', peerIp, '-j', 'DROP']));
}

/** The namespace of a member: a node's name, `witness` or `client`. */
export function nsOf(t: Topology, member: string): string {
  if (member === 'witness') return t.witnessNs;
  if (member === 'client') return t.clientNs;
  const ns = t.nodeNs[member];
  if (!ns) throw new Error(`no namespace for ${member}`);
  return ns;
}

/** The address of a member: a node's IP, the witness's (the gateway) or the client's. */
export function ipOf(member: string): string {
  if (member === 'witness') return NET.gateway;
  if (member === 'client') return NET.client;
  const n = NET.nodes.find((x) => x.name === member);
  if (!n) throw new Error(`no address for ${member}`);
  return n.ip;
}

/**
 * One-way cut: packets from `from` stop arriving at `to` (a DROP in `to`'s INPUT chain for
 * `from`'s address); the other direction still works. Dropped on arrival, so the sender sees a
 * silent loss, as on a real network, rather than an immediate error.
 */
export async function cutOneWay(t: Topology, from: string, to: string, on: boolean): Promise<void> {
  await runPlan(inNs(nsOf(t, to), 'iptables', [on ? '-A' : '-D', 'INPUT', '-s', ipOf(from), '-j', 'DROP']));
}

/** Remove every filter rule of a member's namespace (heals any cut made there). */
export async function flushRules(t: Topology, member: string): Promise<void> {
  await runPlan(inNs(nsOf(t, member), 'iptables', ['-F']), { allowFailure: true });
}

/** The filter rules of a member's namespace, one per line (for the log). */
export async function listRules(t: Topology, member: string): Promise<string> {
  const r = await runPlan(inNs(nsOf(t, member), 'iptables', ['-S']), { allowFailure: true });
  return r.stdout.trim();
}
