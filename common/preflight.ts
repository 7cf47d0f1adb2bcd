/** One preflight finding: `fail` blocks an install, `warn` is worth reading, `pass` is fine. */
export interface PreflightItem {
  /** What was checked, such as `memory` or `node1 clock`. */
  name: string;
  status: 'pass' | 'warn' | 'fail';
  detail: string;
}

/** A node's own preflight (GET /v1/preflight, `geminik8s-agent preflight`). */
export interface HostPreflight {
  node: string;
  /** The node's wall clock when it answered, ms since the epoch (the operator's clock check). */
  now: number;
  /** The MAC address of the cluster interface, lower case, when it could be read. */
  mac: string | null;
  checks: PreflightItem[];
}

/** The worst status of a list: fail over warn over pass. */
export function worst(items: readonly PreflightItem[]): PreflightItem['status'] {
  if (items.some((i) => i.status === 'fail')) return 'fail';
  if (items.some((i) => i.status === 'warn')) return 'warn';
  return 'pass';
}

const GIB = 1024 ** 3;

/** Bytes as GiB with one decimal, for details people read. */
export function gib(bytes: number): string {
  return `${(bytes / GIB).toFixed(1)} GiB`;
}

/**
 * Limits of the node's own checks (docs/cli.md, preflight). Memory: K3s's resource profiling
 * measured about 1.6 GB for a server with a workload (Kine/SQLite), and PostgreSQL and the agent
 * come on top, so below 2 GiB with Kubernetes is a warning; below 1 GiB PostgreSQL alone is
 * cramped. Disk: free space where PostgreSQL keeps its data (WAL, a re-clone of the peer).
 */
export const HOST_LIMITS = {
  memoryFailBytes: 1 * GIB,
  memoryWarnBytesWithKubernetes: 2 * GIB,
  diskFailBytes: 1 * GIB,
  diskWarnBytes: 5 * GIB,
} as const;

/** What a node reads about itself for its preflight (an adapter gathers it; assessHost decides). */
export interface HostFacts {
  memTotalBytes: number | null;
  /** Free bytes (for unprivileged use) and size of the filesystem holding PostgreSQL's data. */
  disk: { path: string; freeBytes: number; totalBytes: number } | null;
  link: { device: string; exists: boolean; operstate: string | null; carrier: boolean | null; speedMbps: number | null; mac: string | null };
  /** Whether the node's own address is on its cluster interface. */
  addressPresent: boolean;
}

/** The node's checks from its facts (pure). */
export function assessHost(f: HostFacts, want: { address: string; kubernetes: boolean }): PreflightItem[] {
  const items: PreflightItem[] = [];
  if (f.memTotalBytes === null) items.push({ name: 'memory', status: 'warn', detail: 'could not read MemTotal from /proc/meminfo' });
  else if (f.memTotalBytes < HOST_LIMITS.memoryFailBytes) items.push({ name: 'memory', status: 'fail', detail: `${gib(f.memTotalBytes)}: at least ${gib(HOST_LIMITS.memoryFailBytes)} is needed` });
  else if (want.kubernetes && f.memTotalBytes < HOST_LIMITS.memoryWarnBytesWithKubernetes) items.push({ name: 'memory', status: 'warn', detail: `${gib(f.memTotalBytes)}: K3s with PostgreSQL wants at least ${gib(HOST_LIMITS.memoryWarnBytesWithKubernetes)}` });
  else items.push({ name: 'memory', status: 'pass', detail: gib(f.memTotalBytes) });

  if (!f.disk) items.push({ name: 'disk', status: 'fail', detail: 'could not read the filesystem that holds the PostgreSQL data directory' });
  else {
    const what = `${gib(f.disk.freeBytes)} free of ${gib(f.disk.totalBytes)} at ${f.disk.path}`;
    if (f.disk.freeBytes < HOST_LIMITS.diskFailBytes) items.push({ name: 'disk', status: 'fail', detail: `${what}: at least ${gib(HOST_LIMITS.diskFailBytes)} free is needed` });
    else if (f.disk.freeBytes < HOST_LIMITS.diskWarnBytes) items.push({ name: 'disk', status: 'warn', detail: `${what}: less than ${gib(HOST_LIMITS.diskWarnBytes)} free leaves little room for WAL and a re-clone` });
    else items.push({ name: 'disk', status: 'pass', detail: what });
  }

  const l = f.link;
  if (!l.exists) items.push({ name: 'link', status: 'fail', detail: `no interface ${l.device} (cluster.network.interface)` });
  else {
    // Some drivers report operstate "unknown" on a working link; the carrier decides then.
    const up = l.carrier === true && (l.operstate === 'up' || l.operstate === 'unknown');
    const speed = l.speedMbps !== null && l.speedMbps > 0 ? `, ${l.speedMbps} Mb/s` : '';
    items.push({ name: 'link', status: up ? 'pass' : 'fail', detail: `${l.device}: operstate ${l.operstate ?? '?'}, carrier ${l.carrier === null ? '?' : l.carrier ? 'on' : 'off'}${speed}${up ? '' : ': no link (cable, switch port or peer down)'}` });
  }
  items.push(f.addressPresent ? { name: 'address', status: 'pass', detail: `${want.address} is on ${l.device}` } : { name: 'address', status: 'fail', detail: `${want.address} is not on ${l.device}: check the seed's network settings` });
  return items;
}
