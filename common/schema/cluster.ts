import * as z from 'zod';
import { API_VERSION } from './image.ts';
import type { RuleIssue } from './rules.ts';
import { DiskRulesSchema, diskRuleProblems } from '../install/disks.ts';
import {
  cidr,
  cidrsOverlap,
  dnsLabel,
  duration,
  formatDuration,
  interfaceName,
  ipToInt,
  ipv4,
  macAddress,
  networkOf,
  sameSubnet,
} from './units.ts';

export const NodeSchema = z.strictObject({
  name: dnsLabel,
  ip: ipv4,
  mac: macAddress.optional(),
  /** How an installer (ISO or PXE) chooses this node's disk: explicit rules, combined with AND. */
  install: z.strictObject({ disk: DiskRulesSchema }).optional(),
});

/**
 * The failover witness. Only `lease` (a geminik8s witness on a third box, an arbiter that records
 * the lease holder, the generation and who may be promoted) and `none` (manual failover) are
 * accepted by `clusterRules`. The probe types `gateway`, `tcp` and `http` still parse, so that a
 * file using one is refused with the reason (see PROBE_WITNESS_REASON) instead of a bare
 * "invalid union" error.
 */
export const WitnessSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('gateway') }),
  z.strictObject({ type: z.literal('tcp'), host: z.union([ipv4, z.hostname()]), port: z.number().int().min(1).max(65535) }),
  z.strictObject({ type: z.literal('http'), url: z.url({ protocol: /^https?$/ }) }),
  // A geminik8s witness on a third box: an arbiter holding a lease, not just a probe.
  z.strictObject({ type: z.literal('lease'), url: z.url({ protocol: /^https?$/ }) }),
  z.strictObject({ type: z.literal('none') }),
]);

/**
 * K3s server flags geminik8s sets itself, with the reason; `k3s.extraArgs` may not set them
 * (flags that take a list, such as tls-san or node-label, may be added to).
 */
export const K3S_MANAGED_FLAGS: Readonly<Record<string, string>> = {
  'datastore-endpoint': 'the datastore is Kine on 127.0.0.1:2379, which follows the PostgreSQL primary',
  'cluster-init': 'geminik8s never runs embedded etcd',
  server: 'both nodes are servers on the shared datastore',
  token: 'the token comes from the seed (token-file)',
  'token-file': 'the token comes from the seed',
  'agent-token': 'the token comes from the seed',
  'agent-token-file': 'the token comes from the seed',
  'node-name': 'the node name is the cluster node name',
  'node-ip': "the node IP is the cluster node's ip",
  'advertise-address': "the node's own ip is advertised",
  'cluster-cidr': 'use k3s.clusterCidr',
  'service-cidr': 'use k3s.serviceCidr',
  'cluster-domain': 'use k3s.clusterDomain',
  config: 'the config file is /etc/rancher/k3s/config.yaml',
  'data-dir': 'K3s state must stay on the persistent partition',
  'write-kubeconfig': 'kube-vip and the agent read /etc/rancher/k3s/k3s.yaml',
  'write-kubeconfig-mode': 'the kubeconfig holds admin credentials (0600)',
};

/** The levels of a Kubernetes audit policy rule (audit.k8s.io/v1). */
export const AUDIT_LEVELS = ['None', 'Metadata', 'Request', 'RequestResponse'] as const;

/** A Kubernetes audit policy (audit.k8s.io/v1 Policy), checked as far as its shape goes. */
export const AuditPolicySchema = z.looseObject({
  apiVersion: z.literal('audit.k8s.io/v1'),
  kind: z.literal('Policy'),
  omitStages: z.array(z.enum(['RequestReceived', 'ResponseStarted', 'ResponseComplete', 'Panic'])).optional(),
  rules: z.array(z.looseObject({
    level: z.enum(AUDIT_LEVELS),
    users: z.array(z.string()).optional(),
    userGroups: z.array(z.string()).optional(),
    verbs: z.array(z.string()).optional(),
    resources: z.array(z.looseObject({ group: z.string().optional(), resources: z.array(z.string()).optional(), resourceNames: z.array(z.string()).optional() })).optional(),
    namespaces: z.array(z.string()).optional(),
    nonResourceURLs: z.array(z.string()).optional(),
    omitStages: z.array(z.enum(['RequestReceived', 'ResponseStarted', 'ResponseComplete', 'Panic'])).optional(),
  })).min(1, 'an audit policy needs at least one rule (the first rule that matches a request sets its level)'),
});
export type AuditPolicy = z.infer<typeof AuditPolicySchema>;

/** Names of the non-node parties in secrets/tls/ (the CA and the witness); no node may take one. */
export const RESERVED_PARTY_NAMES = ['ca', 'witness'] as const;

export const SYNC_POLICIES = ['degrade', 'strict'] as const;

/** Default port of the geminik8s witness (`init --witness HOST` means https://HOST:7444). */
export const WITNESS_DEFAULT_PORT = 7444;

/** Witness types that only probe reachability; refused by clusterRules. */
export const PROBE_WITNESS_TYPES = ['gateway', 'tcp', 'http'] as const;

/** Why a reachability probe is refused as a witness (design decision 3). */
export const PROBE_WITNESS_REASON =
  'a reachability probe cannot tell a dead leader from one cut off from its peer, so with it the follower can promote ' +
  'while the old leader still accepts writes (two writable primaries, the VIP on both nodes) and, with syncPolicy degrade, ' +
  'acknowledged writes are lost';

/** The spec of a cluster: everything both nodes share. Embedded as-is in each node's seed. */
export const ClusterSpecSchema = z.strictObject({
  name: dnsLabel,
  network: z.strictObject({
    interface: interfaceName.default('eth0'),
    prefix: z.number().int().min(8).max(30).default(24),
    gateway: ipv4.optional(),
    dns: z.array(ipv4).default([]),
    vip: ipv4,
  }),
  nodes: z.array(NodeSchema).length(2, 'a geminik8s cluster has exactly two nodes'),
  bootstrapLeader: dnsLabel.optional(),
  witness: WitnessSchema.default({ type: 'none' }),
  k3s: z
    .strictObject({
      clusterCidr: cidr.default('10.42.0.0/16'),
      serviceCidr: cidr.default('10.43.0.0/16'),
      clusterDomain: z.string().default('cluster.local'),
      tlsSan: z.array(z.string()).default([]),
      disable: z.array(z.enum(['traefik', 'servicelb', 'local-storage', 'metrics-server', 'coredns'])).default(['servicelb']),
      nodeLabels: z.record(z.string(), z.string()).default({}),
      extraArgs: z.array(z.string().regex(/^--[a-z0-9-]+(=.*)?$/, 'must be a K3s flag such as --kubelet-arg=max-pods=200')).default([]),
      /** kube-apiserver's audit log (off by default): on the persistent partition, rotated. */
      auditLog: z
        .strictObject({
          enabled: z.boolean().default(false),
          /** Days to keep rotated files (--audit-log-maxage). */
          maxAge: z.number().int().min(1).max(3650).default(30),
          /** Rotated files kept (--audit-log-maxbackup). */
          maxBackups: z.number().int().min(1).max(1000).default(10),
          /** Megabytes before a file is rotated (--audit-log-maxsize). */
          maxSize: z.number().int().min(1).max(10240).default(100),
          /** An audit.k8s.io/v1 Policy; without one, geminik8s's default (docs/rendering.md). */
          policy: AuditPolicySchema.optional(),
        })
        .prefault({}),
    })
    .prefault({}),
  postgresql: z
    .strictObject({
      port: z.number().int().min(1).max(65535).default(5432),
      syncPolicy: z.enum(SYNC_POLICIES).default('degrade'),
      maxConnections: z.number().int().min(20).max(10000).default(200),
      sharedBuffers: z.string().regex(/^\d+(kB|MB|GB)$/, 'must be a PostgreSQL memory size such as 256MB').default('128MB'),
    })
    .prefault({}),
  failover: z
    .strictObject({
      checkInterval: duration.default(1000),
      checkTimeout: duration.default(800),
      fenceAfter: duration.default(2500),
      promoteAfter: duration.default(4000),
      degradeAfter: duration.default(5000),
    })
    .prefault({}),
  agent: z
    .strictObject({
      port: z.number().int().min(1).max(65535).default(7443),
      /**
       * Development only: the agents and the witness speak plain HTTP, with bearer tokens in the
       * clear and no certificates. Off, every party uses mutual TLS against the cluster CA.
       */
      insecurePlaintext: z.boolean().default(false),
      /** Replaced by mutual TLS on by default; still parsed so that clusterRules can say so. */
      tls: z.boolean().optional(),
    })
    .prefault({}),
  ssh: z
    .strictObject({
      user: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'must be a Linux user name').default('geminik8s'),
      authorizedKeys: z.array(z.string().regex(/^(ssh-|ecdsa-|sk-)\S+ \S+/, 'must be an OpenSSH public key line')).default([]),
    })
    .prefault({}),
});

export const ClusterSchema = ClusterSpecSchema.extend({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('Cluster'),
  /** Where the secrets live, relative to cluster.yaml. */
  secretsDir: z.string().min(1).default('secrets'),
});

export type ClusterSpec = z.output<typeof ClusterSpecSchema>;
export type Cluster = z.output<typeof ClusterSchema>;
export type ClusterNode = z.output<typeof NodeSchema>;
export type Witness = z.output<typeof WitnessSchema>;

/** Rules between fields of a cluster spec; paths are relative to the spec. */
export function clusterRules(spec: ClusterSpec): RuleIssue[] {
  const issues: RuleIssue[] = [];
  const { network, nodes, failover } = spec;
  const [a, b] = nodes;
  if (!a || !b) return issues;
  const prefix = network.prefix;

  if (a.name === b.name) issues.push({ path: ['nodes', 1, 'name'], message: 'node names must differ', found: JSON.stringify(b.name), related: [['nodes', 0, 'name']] });
  if (a.ip === b.ip) issues.push({ path: ['nodes', 1, 'ip'], message: 'node IPs must differ', found: b.ip, related: [['nodes', 0, 'ip']] });
  if (a.mac && b.mac && a.mac === b.mac) issues.push({ path: ['nodes', 1, 'mac'], message: 'node MAC addresses must differ', found: b.mac });
  nodes.forEach((n, i) => {
    if (!n.install) return;
    for (const p of diskRuleProblems(n.install.disk)) issues.push({ path: ['nodes', i, 'install', 'disk', ...(p.path ? [p.path] : [])], message: p.message, ...(p.found ? { found: p.found } : {}), ...(p.expected ? { expected: p.expected } : {}) });
  });
  if (!sameSubnet(a.ip, b.ip, prefix)) {
    issues.push({ path: ['nodes', 1, 'ip'], message: `both nodes must be in one /${prefix} subnet`, found: b.ip, expected: `an address in ${subnetText(a.ip, prefix)}`, related: [['nodes', 0, 'ip'], ['network', 'prefix']] });
  }
  for (const [i, node] of nodes.entries()) {
    if ((RESERVED_PARTY_NAMES as readonly string[]).includes(node.name)) {
      issues.push({ path: ['nodes', i, 'name'], message: `is reserved: the cluster's certificates use ${RESERVED_PARTY_NAMES.map((n) => JSON.stringify(n)).join(' and ')} for the CA and the witness`, found: JSON.stringify(node.name) });
    }
    if (isNetworkOrBroadcast(node.ip, prefix)) {
      issues.push({ path: ['nodes', i, 'ip'], message: `is the network or broadcast address of ${subnetText(node.ip, prefix)}`, found: node.ip });
    }
  }
  if (network.vip === a.ip || network.vip === b.ip) {
    issues.push({ path: ['network', 'vip'], message: 'the VIP must differ from both node IPs', found: network.vip, related: [['nodes']] });
  } else if (!sameSubnet(network.vip, a.ip, prefix)) {
    issues.push({ path: ['network', 'vip'], message: "the VIP must be in the nodes' subnet", found: network.vip, expected: `an address in ${subnetText(a.ip, prefix)}`, related: [['nodes', 0, 'ip'], ['network', 'prefix']] });
  } else if (isNetworkOrBroadcast(network.vip, prefix)) {
    issues.push({ path: ['network', 'vip'], message: `is the network or broadcast address of ${subnetText(a.ip, prefix)}`, found: network.vip });
  }
  if (network.gateway) {
    if (!sameSubnet(network.gateway, a.ip, prefix)) {
      issues.push({ path: ['network', 'gateway'], message: "the gateway must be in the nodes' subnet", found: network.gateway, expected: `an address in ${subnetText(a.ip, prefix)}` });
    }
    if ([a.ip, b.ip, network.vip].includes(network.gateway)) {
      issues.push({ path: ['network', 'gateway'], message: 'the gateway must differ from the node IPs and the VIP', found: network.gateway });
    }
  }
  const witness = spec.witness;
  if ((PROBE_WITNESS_TYPES as readonly string[]).includes(witness.type)) {
    issues.push({
      path: ['witness', 'type'],
      message: `the ${witness.type} witness is refused: ${PROBE_WITNESS_REASON}`,
      found: witness.type,
      expected: `lease (a geminik8s witness on a third box; init: --witness HOST[:PORT], port ${WITNESS_DEFAULT_PORT} by default) or none (manual failover)`,
    });
  }
  if (witness.type === 'lease') {
    const host = witnessHost(witness.url);
    const onNode = nodes.find((n) => n.ip === host);
    const where = onNode ? `node ${onNode.name}'s IP` : host === network.vip ? 'the VIP' : host !== undefined && isLoopback(host) ? 'a loopback address (on each node, the node itself)' : undefined;
    if (where) {
      issues.push({
        path: ['witness', 'url'],
        message: `the witness must run on a third box, not on a node nor behind the VIP: this URL points at ${where}, so losing that node loses the arbiter too`,
        found: witness.url,
        expected: `the URL of a geminik8s witness on a box other than ${a.ip}, ${b.ip} and ${network.vip}`,
        related: [['nodes'], ['network', 'vip']],
      });
    }
    const scheme = spec.agent.insecurePlaintext ? 'http:' : 'https:';
    if (URL.canParse(witness.url) && new URL(witness.url).protocol !== scheme) {
      issues.push({
        path: ['witness', 'url'],
        message: spec.agent.insecurePlaintext
          ? 'agent.insecurePlaintext is set, so the witness speaks plain HTTP: its URL must be http://'
          : 'the witness speaks mutual TLS with the cluster CA: its URL must be https:// (plain HTTP only with agent.insecurePlaintext, for development)',
        found: witness.url,
        expected: `${scheme}//HOST:${WITNESS_DEFAULT_PORT}`,
        related: [['agent', 'insecurePlaintext']],
      });
    }
  }
  if (spec.agent.tls !== undefined) {
    issues.push({ path: ['agent', 'tls'], message: 'agent.tls is gone: the agents, the witness and PostgreSQL use mutual TLS from the cluster CA unless agent.insecurePlaintext is true; remove agent.tls and make the CA and certificates with `geminik8s init --force --template DIR/cluster.yaml --config-dir DIR`', found: String(spec.agent.tls) });
  }
  if (spec.bootstrapLeader && !nodes.some((n) => n.name === spec.bootstrapLeader)) {
    issues.push({ path: ['bootstrapLeader'], message: 'must name one of the two nodes', found: JSON.stringify(spec.bootstrapLeader), expected: `${JSON.stringify(a.name)} or ${JSON.stringify(b.name)}` });
  }

  // The leader must have fenced itself before the follower may promote, with one check of margin.
  if (failover.fenceAfter + failover.checkInterval >= failover.promoteAfter) {
    issues.push({
      path: ['failover', 'fenceAfter'],
      message: 'the leader must fence itself strictly before the follower may promote: fenceAfter + checkInterval must be less than promoteAfter',
      found: `${formatDuration(failover.fenceAfter)} + ${formatDuration(failover.checkInterval)} >= ${formatDuration(failover.promoteAfter)}`,
      expected: `fenceAfter below ${formatDuration(failover.promoteAfter - failover.checkInterval)}`,
    });
  }
  if (failover.checkTimeout >= failover.checkInterval * 2) {
    issues.push({ path: ['failover', 'checkTimeout'], message: 'a check must time out within two check intervals', found: formatDuration(failover.checkTimeout), expected: `below ${formatDuration(failover.checkInterval * 2)}` });
  }
  if (failover.fenceAfter < failover.checkInterval * 2) {
    issues.push({ path: ['failover', 'fenceAfter'], message: 'must span at least two check intervals so one lost probe does not fence the leader', found: formatDuration(failover.fenceAfter) });
  }
  if (failover.degradeAfter < failover.fenceAfter) {
    issues.push({ path: ['failover', 'degradeAfter'], message: 'the leader degrades to async only after it would have fenced had the witness been lost too', found: formatDuration(failover.degradeAfter), expected: `at least fenceAfter (${formatDuration(failover.fenceAfter)})` });
  }

  const nodeNet = `${ipPart(networkOf(a.ip, prefix))}/${prefix}`;
  for (const key of ['clusterCidr', 'serviceCidr'] as const) {
    if (cidrsOverlap(spec.k3s[key], nodeNet)) {
      issues.push({ path: ['k3s', key], message: "overlaps the nodes' subnet", found: spec.k3s[key], expected: `a range outside ${nodeNet}` });
    }
  }
  if (cidrsOverlap(spec.k3s.clusterCidr, spec.k3s.serviceCidr)) {
    issues.push({ path: ['k3s', 'serviceCidr'], message: 'overlaps k3s.clusterCidr', found: spec.k3s.serviceCidr });
  }
  for (const [i, arg] of spec.k3s.extraArgs.entries()) {
    const flag = /^--([a-z0-9-]+)/.exec(arg)?.[1] ?? '';
    const why = K3S_MANAGED_FLAGS[flag];
    if (why) issues.push({ path: ['k3s', 'extraArgs', i], message: `--${flag} is set by geminik8s: ${why}`, found: arg });
    const audit = /^--kube-apiserver-arg=(audit-[a-z-]+)=/.exec(arg)?.[1];
    if (audit && spec.k3s.auditLog.enabled) issues.push({ path: ['k3s', 'extraArgs', i], message: `kube-apiserver's ${audit} is set by k3s.auditLog`, found: arg, expected: 'the setting in k3s.auditLog, or auditLog.enabled: false' });
  }
  if (spec.agent.port === spec.postgresql.port) {
    issues.push({ path: ['agent', 'port'], message: 'the agent port must differ from the PostgreSQL port', found: String(spec.agent.port) });
  }
  return issues;
}

/** The host of a witness URL, without IPv6 brackets; undefined when it does not parse. */
export function witnessHost(url: string): string | undefined {
  try {
    return new URL(url).hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
  } catch {
    return undefined;
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost') || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

function ipPart(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function subnetText(ip: string, prefix: number): string {
  return `${ipPart(networkOf(ip, prefix))}/${prefix}`;
}

function isNetworkOrBroadcast(ip: string, prefix: number): boolean {
  if (prefix >= 31) return false;
  const n = ipToInt(ip)!;
  const net = networkOf(ip, prefix);
  const broadcast = (net | (0xffffffff >>> prefix)) >>> 0;
  return n === net || n === broadcast;
}

/** The node that runs initdb on first boot. */
export function bootstrapLeaderOf(spec: ClusterSpec): ClusterNode {
  return spec.nodes.find((n) => n.name === spec.bootstrapLeader) ?? spec.nodes[0]!;
}

/**
 * The names a node's certificate covers: its own address (peer and witness calls), 127.0.0.1
 * (the node's own CLI and the upgrade job ask the local agent), its name, and the VIP (whoever
 * holds it answers there).
 */
export function nodeCertHosts(spec: ClusterSpec, nodeName: string): string[] {
  const node = spec.nodes.find((n) => n.name === nodeName);
  if (!node) throw new Error(`no node named ${nodeName}`);
  return [node.ip, '127.0.0.1', nodeName, spec.network.vip];
}

export function peerOf(spec: ClusterSpec, nodeName: string): ClusterNode {
  const peer = spec.nodes.find((n) => n.name !== nodeName);
  if (!peer) throw new Error(`cluster ${spec.name} has no peer for ${nodeName}`);
  return peer;
}

/** The witness as a concrete target. The probe kinds are refused by clusterRules (and by the agent). */
export type WitnessTarget =
  | { kind: 'icmp'; host: string }
  | { kind: 'tcp'; host: string; port: number }
  | { kind: 'http'; url: string }
  | { kind: 'lease'; url: string }
  | { kind: 'none' };

export function witnessTarget(spec: ClusterSpec): WitnessTarget {
  switch (spec.witness.type) {
    case 'gateway':
      return { kind: 'icmp', host: spec.network.gateway! };
    case 'tcp':
      return { kind: 'tcp', host: spec.witness.host, port: spec.witness.port };
    case 'http':
      return { kind: 'http', url: spec.witness.url };
    case 'lease':
      return { kind: 'lease', url: spec.witness.url };
    case 'none':
      return { kind: 'none' };
  }
}
