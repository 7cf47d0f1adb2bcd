import { Document, isMap, isSeq, type YAMLMap } from 'yaml';
import type { ClusterInput } from './options.ts';

/** Comments placed above keys of the generated cluster.yaml, by dotted path. */
const COMMENTS: Record<string, string> = {
  apiVersion: ' geminik8s cluster definition. Edit by hand, then check with: geminik8s validate cluster.yaml',
  name: ' Cluster name: a DNS label, used in hostnames and the NoCloud instance-id.',
  network: ' The L2 segment both nodes share.',
  'network.interface': ' NIC that carries node traffic and the VIP (matched by MAC when nodes[].mac is set).',
  'network.prefix': ' Subnet prefix length of the node IPs and the VIP.',
  'network.gateway': ' Default gateway; also the default failover witness.',
  'network.dns': ' DNS servers written into the network configuration.',
  'network.vip': ' Virtual IP of the control plane and PostgreSQL: always held by the current leader.',
  nodes: ' Exactly two nodes. The first is the bootstrap leader unless bootstrapLeader names the other.',
  witness: ' Third party that arbitrates failover: gateway (ICMP), tcp (host+port), http (url), or none (manual failover only).',
  k3s: ' K3s server options (datastore is always Kine on 127.0.0.1:2379; never cluster-init).',
  postgresql: ' PostgreSQL: syncPolicy decides what the leader does when it loses its standby while the witness is reachable:\n degrade = drop to async and keep accepting writes; strict = keep blocking writes until the standby returns.',
  failover: ' Failover timings. The leader fences itself (read-only, drops the VIP) after losing peer AND witness for fenceAfter;\n the follower promotes after the leader has been unreachable for promoteAfter. fenceAfter + checkInterval < promoteAfter.',
  agent: ' The geminik8s agent HTTP API (/healthz open; everything else needs the agent token from secrets/).',
  ssh: ' Login user and SSH public keys written by cloud-init on first boot.',
  secretsDir: ' Directory with the K3s token, PostgreSQL passwords and the agent token (0700, files 0600). Never commit it.',
};

/** Build cluster.yaml as a commented YAML document (YAML 1.1, as cloud-init reads YAML). */
export function clusterDocument(cluster: ClusterInput): Document {
  const doc = new Document(cluster, { version: '1.1' });
  const visit = (node: unknown, prefix: string): void => {
    if (!isMap(node)) return;
    for (const pair of (node as YAMLMap).items) {
      const key = String((pair.key as { value?: unknown }).value ?? pair.key);
      const path = prefix ? `${prefix}.${key}` : key;
      const comment = COMMENTS[path];
      if (comment) (pair.key as { commentBefore?: string }).commentBefore = comment;
      if (isMap(pair.value)) visit(pair.value, path);
      if (isSeq(pair.value)) for (const item of pair.value.items) visit(item, path);
      if (prefix && isMap(pair.value) === false && isSeq(pair.value) === false) continue;
    }
  };
  visit(doc.contents, '');
  // Flow style for short scalar lists reads better in a hand-edited file.
  for (const path of [['network', 'dns'], ['k3s', 'disable'], ['k3s', 'tlsSan']]) {
    const seq = doc.getIn(path, true);
    if (isSeq(seq)) seq.flow = true;
  }
  return doc;
}

export function clusterYamlText(cluster: ClusterInput): string {
  return clusterDocument(cluster).toString({ lineWidth: 0 });
}
