import type { CommandPlan } from '#common/exec.ts';
import { worst, type HostPreflight, type PreflightItem } from '#common/preflight.ts';
import type { Cluster } from '#common/schema/cluster.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { agentUrl, type Fetcher } from './status.ts';

/** How the VIP was looked for on the network. */
export type VipProbe =
  /** ARP from an interface on the VIP's link: the MAC of every host that answered. */
  | { method: 'arp'; device: string; macs: string[] }
  /** Not on the VIP's link (routed `via`): only whether it answers ping. */
  | { method: 'ping'; via: string; answered: boolean }
  /** This machine has the address itself. */
  | { method: 'local'; device: string }
  /** Could not look (no route, arping refused): why. */
  | { method: 'none'; reason: string };

/** Every effect the operator's preflight has: a port a test can replace. */
export interface PreflightPorts {
  /** The operator's HTTP port (status, body and Date header); throws when nothing answers. */
  fetch: Fetcher;
  ping: (ip: string) => Promise<boolean>;
  vip: (address: string) => Promise<VipProbe>;
  /** The operator's wall clock, ms since the epoch. */
  now: () => number;
}

/** A wall-clock reading of another host: its offset from ours and how far off the reading may be. */
export interface ClockSample {
  who: string;
  offsetMs: number;
  uncertaintyMs: number;
}

export interface PreflightReport {
  cluster: string;
  status: PreflightItem['status'];
  items: PreflightItem[];
  clocks: ClockSample[];
}

const signed = (ms: number): string => `${ms >= 0 ? '+' : '-'}${Math.abs(Math.round(ms))} ms`;

/**
 * One clock against the bound (pure): pass when even the worst reading is inside it, fail when
 * even the best is outside, warn when the reading cannot tell.
 */
export function clockItem(name: string, offsetMs: number, uncertaintyMs: number, maxOffsetMs: number): PreflightItem {
  const what = `${signed(offsetMs)} (±${Math.round(uncertaintyMs)} ms)`;
  if (Math.abs(offsetMs) + uncertaintyMs <= maxOffsetMs) return { name, status: 'pass', detail: `${what}, within ${maxOffsetMs} ms` };
  if (Math.abs(offsetMs) - uncertaintyMs > maxOffsetMs) return { name, status: 'fail', detail: `${what}, more than ${maxOffsetMs} ms off: TLS certificates and K3s need clocks in step (configure NTP)` };
  return { name, status: 'warn', detail: `${what}: cannot tell whether it is within ${maxOffsetMs} ms` };
}

/** Every clock against the operator's, and the two nodes against each other (pure). */
export function clockItems(samples: ClockSample[], nodeNames: string[], maxOffsetMs: number): PreflightItem[] {
  const items = samples.map((s) => clockItem(`${s.who} clock`, s.offsetMs, s.uncertaintyMs, maxOffsetMs));
  const [a, b] = nodeNames.map((n) => samples.find((s) => s.who === n));
  if (a && b) items.push(clockItem(`${a.who}-${b.who} clocks`, b.offsetMs - a.offsetMs, a.uncertaintyMs + b.uncertaintyMs, maxOffsetMs));
  return items;
}

/**
 * The VIP must be free before install (pure). A reply from the MAC of one of the cluster's own
 * nodes means the pair already runs and holds it; any other reply, or two MACs, is a conflict.
 */
export function vipItem(vip: string, probe: VipProbe, nodeMacs: Map<string, string>): PreflightItem {
  const name = 'vip';
  if (probe.method === 'local') return { name, status: 'fail', detail: `${vip} is an address of this machine (${probe.device}): the VIP must be free for the pair` };
  if (probe.method === 'none') return { name, status: 'warn', detail: `${vip} not checked: ${probe.reason}` };
  if (probe.method === 'ping') {
    return probe.answered
      ? { name, status: 'fail', detail: `${vip} answers ping (seen through ${probe.via}, not on its link, so not who): another host uses the VIP` }
      : { name, status: 'warn', detail: `${vip} does not answer ping, but this machine is not on its link (route via ${probe.via}), so ARP was not checked: run preflight from the nodes' network` };
  }
  const macs = [...new Set(probe.macs.map((m) => m.toLowerCase()))];
  if (macs.length === 0) return { name, status: 'pass', detail: `${vip} is free: no ARP reply on ${probe.device}` };
  const owner = (mac: string): string | undefined => [...nodeMacs].find(([, m]) => m === mac)?.[0];
  if (macs.length > 1) return { name, status: 'fail', detail: `${vip} is answered by ${macs.length} MACs (${macs.map((m) => `${m}${owner(m) ? ` = ${owner(m)}` : ''}`).join(', ')}): an address conflict` };
  const node = owner(macs[0]!);
  if (node) return { name, status: 'pass', detail: `${vip} is held by ${node} (${macs[0]}): the cluster already runs` };
  return { name, status: 'fail', detail: `${vip} is answered by ${macs[0]}, which is no node of this cluster: another host uses the VIP (choose another --vip, or free it)` };
}

/** `ip route get VIP`: the interface towards it, and the gateway when it is not on a local link. */
export function routePlan(address: string): CommandPlan {
  return { cmd: 'ip', args: ['-o', 'route', 'get', address] };
}

export function parseRoute(out: string): { device: string; via: string | null; local: boolean } | null {
  const dev = /\bdev (\S+)/.exec(out);
  if (!dev) return null;
  const via = /\bvia (\S+)/.exec(out);
  return { device: dev[1]!, via: via ? via[1]! : null, local: /^local\b/.test(out.trim()) };
}

/** arping (iputils): three requests over two seconds; every reply names the MAC that sent it. */
export function arpPlan(device: string, address: string): CommandPlan {
  return { cmd: 'arping', args: ['-c', '3', '-w', '2', '-I', device, address] };
}

/** The MACs in arping's replies (`Unicast reply from 10.0.0.5 [AA:BB:…]  0.6ms`). */
export function arpReplies(out: string): string[] {
  return [...out.matchAll(/reply from \S+ \[([0-9A-Fa-f:]{17})\]/g)].map((m) => m[1]!.toLowerCase());
}

export function pingPlan(ip: string): CommandPlan {
  return { cmd: 'ping', args: ['-n', '-q', '-c', '2', '-i', '0.3', '-W', '1', ip] };
}

const obj = (v: unknown): Record<string, unknown> => (v !== null && typeof v === 'object' ? (v as Record<string, unknown>) : {});

/** Whether an agent's answer is a host preflight. */
function isHostPreflight(b: unknown): b is HostPreflight {
  const o = obj(b);
  return typeof o.node === 'string' && typeof o.now === 'number' && Array.isArray(o.checks);
}

/**
 * Before install (or any time): both nodes and the witness answer, the VIP is free, the clocks
 * agree, and each node that already runs its agent passes its own checks (memory, disk, link,
 * address). Read-only: it changes nothing anywhere.
 */
export async function runPreflight(cluster: Cluster, secrets: Secrets, ports: PreflightPorts, opts: { maxClockOffsetMs: number; timeoutMs?: number }): Promise<PreflightReport> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const items: PreflightItem[] = [];
  const clocks: ClockSample[] = [];
  const nodeMacs = new Map<string, string>();
  for (const n of cluster.nodes) if (n.mac) nodeMacs.set(n.name, n.mac.toLowerCase());

  const nodeResults = await Promise.all(cluster.nodes.map(async (n) => {
    const out: PreflightItem[] = [];
    const t0 = ports.now();
    try {
      const r = await ports.fetch(agentUrl(cluster, n.ip, '/v1/preflight'), { headers: { authorization: `Bearer ${secrets.readToken}` }, timeoutMs });
      const t1 = ports.now();
      if (r.status === 200 && isHostPreflight(r.body)) {
        const h = r.body;
        out.push({ name: `${n.name} agent`, status: h.node === n.name ? 'pass' : 'fail', detail: h.node === n.name ? `answers at ${n.ip}:${cluster.agent.port}` : `the agent at ${n.ip} is ${h.node}, not ${n.name}: the seeds are swapped` });
        for (const c of h.checks) out.push({ ...c, name: `${n.name} ${c.name}` });
        return { out, mac: h.mac, clock: { who: n.name, offsetMs: h.now - (t0 + t1) / 2, uncertaintyMs: (t1 - t0) / 2 } };
      }
      const reason = r.status === 401 || r.status === 403 ? 'refuses this cluster\'s read-token: it runs with another cluster\'s seed' : r.status === 404 ? 'has no preflight endpoint (an older agent): host checks not run' : `answers HTTP ${r.status}`;
      out.push({ name: `${n.name} agent`, status: r.status === 404 ? 'warn' : 'fail', detail: `the agent at ${n.ip}:${cluster.agent.port} ${reason}` });
      return { out, mac: null, clock: null };
    } catch (err) {
      const pings = await ports.ping(n.ip);
      out.push(pings
        ? { name: `${n.name} reachable`, status: 'warn', detail: `${n.ip} answers ping, but no agent answers on port ${cluster.agent.port} (${(err as Error).message}): not installed or not started yet, so its host checks and clock were not read` }
        : { name: `${n.name} reachable`, status: 'fail', detail: `${n.ip} answers neither ping nor the agent port ${cluster.agent.port} (${(err as Error).message})` });
      return { out, mac: null, clock: null };
    }
  }));
  nodeResults.forEach((r, i) => {
    items.push(...r.out);
    if (r.mac) nodeMacs.set(cluster.nodes[i]!.name, r.mac);
    if (r.clock) clocks.push(r.clock);
  });

  if (cluster.witness.type === 'lease') {
    const url = cluster.witness.url.replace(/\/+$/, '');
    const t0 = ports.now();
    try {
      const r = await ports.fetch(`${url}/v1/clusters/${encodeURIComponent(cluster.name)}`, { headers: { authorization: `Bearer ${secrets.witnessToken}` }, timeoutMs });
      const t1 = ports.now();
      const b = obj(r.body);
      if (r.status === 200) items.push({ name: 'witness', status: 'pass', detail: `${url} answers; lease holder ${typeof b.holder === 'string' ? b.holder : 'nobody'}` });
      else if (r.status === 404) items.push({ name: 'witness', status: 'pass', detail: `${url} answers; it has no record of ${cluster.name} yet (the first leader makes it)` });
      else items.push({ name: 'witness', status: 'fail', detail: `${url} answers HTTP ${r.status}${typeof b.error === 'string' ? `: ${b.error}` : ''}${r.status === 401 || r.status === 403 ? ' (does it run with this cluster\'s witness credentials?)' : ''}` });
      const date = r.date ? Date.parse(r.date) : NaN;
      // An HTTP Date has whole seconds: the witness's time lies in [date, date + 1 s).
      if (Number.isFinite(date)) clocks.push({ who: 'witness', offsetMs: date + 500 - (t0 + t1) / 2, uncertaintyMs: (t1 - t0) / 2 + 500 });
    } catch (err) {
      items.push({ name: 'witness', status: 'fail', detail: `${url} does not answer: ${(err as Error).message}` });
    }
  } else items.push({ name: 'witness', status: 'warn', detail: 'none configured: a dead leader is not replaced automatically' });

  items.push(vipItem(cluster.network.vip, await ports.vip(cluster.network.vip), nodeMacs));
  items.push(...clockItems(clocks, cluster.nodes.map((n) => n.name), opts.maxClockOffsetMs));
  return { cluster: cluster.name, status: worst(items), items, clocks };
}

/** The report for people (pure). */
export function renderPreflight(r: PreflightReport): string {
  const label = { pass: 'PASS', warn: 'WARN', fail: 'FAIL' } as const;
  const lines = r.items.map((i) => `[${label[i.status]}] ${i.name}: ${i.detail}`);
  const count = (s: PreflightItem['status']): number => r.items.filter((i) => i.status === s).length;
  lines.push(`preflight ${r.cluster}: ${label[r.status]} (${count('pass')} passed, ${count('warn')} warnings, ${count('fail')} failed)`);
  return lines.join('\n');
}
