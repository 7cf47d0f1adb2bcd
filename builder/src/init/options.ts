import type { ValidationIssue } from '#common/errors.ts';
import { ClusterSchema, clusterRules, WITNESS_DEFAULT_PORT, type Cluster } from '#common/schema/cluster.ts';
import { API_VERSION } from '#common/schema/image.ts';
import { issuesFromZod, locate, type SourceDocument } from '#common/source.ts';

/** The flags of `geminik8s init` that feed cluster.yaml. */
export interface InitFlags {
  name?: string;
  node1Name?: string;
  node2Name?: string;
  node1Ip?: string;
  node2Ip?: string;
  node1Mac?: string;
  node2Mac?: string;
  vip?: string;
  interface?: string;
  prefix?: string;
  gateway?: string;
  dns?: string[];
  witness?: string;
  syncPolicy?: string;
  /** Development only: no TLS, plain HTTP between the agents and the witness. */
  insecurePlaintext?: boolean;
}

/** Which flag sets which dotted path, so errors can name the flag the user typed. */
export const FLAG_FOR_PATH: Record<string, string> = {
  name: '--name',
  'nodes.0.name': '--node1-name',
  'nodes.1.name': '--node2-name',
  'nodes.0.ip': '--node1-ip',
  'nodes.1.ip': '--node2-ip',
  'nodes.0.mac': '--node1-mac',
  'nodes.1.mac': '--node2-mac',
  'network.vip': '--vip',
  'network.interface': '--interface',
  'network.prefix': '--prefix',
  'network.gateway': '--gateway',
  'network.dns': '--dns',
  witness: '--witness',
  'witness.type': '--witness',
  'witness.url': '--witness',
  'witness.host': '--witness',
  'witness.port': '--witness',
  'postgresql.syncPolicy': '--sync-policy',
  'agent.insecurePlaintext': '--insecure-plaintext',
};

/** The shape written to cluster.yaml: user-facing (durations as text), before normalization. */
export type ClusterInput = Record<string, unknown> & { nodes: Record<string, unknown>[] };

const WITNESS_FORMS = `HOST[:PORT] (a geminik8s witness on a third box, port ${WITNESS_DEFAULT_PORT} by default), http(s)://URL (the same, by URL) or none (manual failover)`;

/**
 * Parse `--witness`:
 * - `HOST[:PORT]` or `http(s)://URL`: the geminik8s lease witness (`{type: lease, url}`), over
 *   https unless `scheme` says otherwise (the development flag `--insecure-plaintext`);
 * - `none`: no witness, manual failover.
 * The old probe forms `gateway` and `tcp://HOST:PORT` are still recognized, so that validation
 * refuses them with the reason rather than reading `gateway` as a host name.
 */
export function parseWitness(value: string, scheme: 'https' | 'http' = 'https'): Record<string, unknown> | { error: string } {
  const v = value.trim();
  if (v === 'none') return { type: 'none' };
  if (v === 'gateway') return { type: 'gateway' };
  const tcp = /^tcp:\/\/([^:/]+):(\d+)$/.exec(v);
  if (tcp) return { type: 'tcp', host: tcp[1], port: Number(tcp[2]) };
  if (/^https?:\/\//i.test(v)) return { type: 'lease', url: v };
  const hostPort = /^([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d+))?$/.exec(v);
  if (hostPort) {
    const port = hostPort[2] === undefined ? WITNESS_DEFAULT_PORT : Number(hostPort[2]);
    if (!Number.isInteger(port) || port < 1 || port > 65535) return { error: `${WITNESS_FORMS}; the port must be 1-65535` };
    return { type: 'lease', url: `${scheme}://${hostPort[1]}:${port}` };
  }
  return { error: WITNESS_FORMS };
}

function setIn(target: Record<string, unknown>, path: (string | number)[], value: unknown): void {
  let node: Record<string | number, unknown> = target;
  for (const [i, seg] of path.entries()) {
    if (i === path.length - 1) {
      node[seg] = value;
      return;
    }
    const next = path[i + 1];
    node[seg] ??= typeof next === 'number' ? [] : {};
    node = node[seg] as Record<string | number, unknown>;
  }
}

/** Defaults, then the template's values, then the flags: later wins. */
export function buildClusterInput(flags: InitFlags, template?: Record<string, unknown>): { input: ClusterInput; flagIssues: ValidationIssue[] } {
  const input: ClusterInput = {
    apiVersion: API_VERSION,
    kind: 'Cluster',
    name: 'site',
    network: { interface: 'eth0', prefix: 24, gateway: undefined, dns: [], vip: undefined },
    nodes: [{ name: 'node1' }, { name: 'node2' }],
    // Safe without a third box: no automatic failover. `--witness HOST` enables it.
    witness: { type: 'none' },
    k3s: { disable: ['servicelb'] },
    postgresql: { syncPolicy: 'degrade' },
    failover: { checkInterval: '1s', checkTimeout: '800ms', fenceAfter: '2500ms', promoteAfter: '4s', degradeAfter: '5s' },
    agent: { port: 7443 },
    ssh: { user: 'geminik8s', authorizedKeys: [] },
    secretsDir: 'secrets',
  };
  if (template) mergeInto(input, template);
  const flagIssues: ValidationIssue[] = [];
  const set = (path: (string | number)[], value: unknown): void => {
    if (value !== undefined) setIn(input, path, value);
  };
  set(['name'], flags.name);
  set(['nodes', 0, 'name'], flags.node1Name);
  set(['nodes', 1, 'name'], flags.node2Name);
  set(['nodes', 0, 'ip'], flags.node1Ip);
  set(['nodes', 1, 'ip'], flags.node2Ip);
  set(['nodes', 0, 'mac'], flags.node1Mac);
  set(['nodes', 1, 'mac'], flags.node2Mac);
  set(['network', 'vip'], flags.vip);
  set(['network', 'interface'], flags.interface);
  if (flags.prefix !== undefined) {
    const n = Number(flags.prefix);
    if (!Number.isInteger(n)) flagIssues.push({ file: '--prefix', path: 'network.prefix', message: 'not a whole number', found: JSON.stringify(flags.prefix), expected: 'a prefix length such as 24' });
    else set(['network', 'prefix'], n);
  }
  set(['network', 'gateway'], flags.gateway);
  if (flags.dns) set(['network', 'dns'], flags.dns.flatMap((d) => d.split(',')).map((d) => d.trim()).filter(Boolean));
  if (flags.witness !== undefined) {
    const w = parseWitness(flags.witness, flags.insecurePlaintext ? 'http' : 'https');
    if ('error' in w) flagIssues.push({ file: '--witness', path: 'witness', message: 'not a witness', found: JSON.stringify(flags.witness), expected: String(w.error) });
    else input.witness = w;
  }
  set(['postgresql', 'syncPolicy'], flags.syncPolicy);
  if (flags.insecurePlaintext) set(['agent', 'insecurePlaintext'], true);
  return { input, flagIssues };
}

function mergeInto(target: Record<string, unknown>, source: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(source)) {
    const current = target[key];
    if (value && typeof value === 'object' && !Array.isArray(value) && current && typeof current === 'object' && !Array.isArray(current)) {
      mergeInto(current as Record<string, unknown>, value as Record<string, unknown>);
    } else {
      target[key] = value;
    }
  }
}

/**
 * Validate the assembled cluster like `geminik8s validate` would, and attribute each problem
 * to the flag that set it, or to its place in the template file.
 */
export function validateClusterInput(input: ClusterInput, given: Set<string>, template?: SourceDocument): { cluster?: Cluster; issues: ValidationIssue[] } {
  const parsed = ClusterSchema.safeParse(input);
  const attribute = (path: string, issue: Omit<ValidationIssue, 'file' | 'path'>): ValidationIssue => {
    const flag = FLAG_FOR_PATH[path] ?? FLAG_FOR_PATH[path.split('.').slice(0, 2).join('.')];
    if (flag && given.has(flag)) return { ...issue, file: flag, path };
    if (template) {
      const segments = path.split('.').map((s) => (/^\d+$/.test(s) ? Number(s) : s));
      return { ...issue, file: template.file, ...locate(template, segments), path };
    }
    return { ...issue, file: flag ?? 'cluster.yaml', path, message: flag ? `${issue.message} (set it with ${flag})` : issue.message };
  };
  if (!parsed.success) {
    const fake: SourceDocument = template ?? ({ file: 'init', data: input, doc: { contents: null, getIn: () => undefined }, lines: { linePos: () => ({ line: 0, col: 0 }) } } as unknown as SourceDocument);
    const located = issuesFromZod({ ...fake, data: input }, parsed.error);
    return { issues: located.map((i) => attribute(i.path, { message: i.message, found: i.found, expected: i.expected })) };
  }
  const rules = clusterRules(parsed.data);
  if (rules.length) {
    return { issues: rules.map((r) => attribute(r.path.join('.'), { message: r.message, found: r.found, expected: r.expected })) };
  }
  return { cluster: parsed.data, issues: [] };
}
