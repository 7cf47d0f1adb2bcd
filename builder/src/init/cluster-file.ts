import { Document, isMap, isSeq, type YAMLMap } from 'yaml';
import type { ClusterInput } from './options.ts';

/** Comments placed above keys of the generated cluster.yaml, by dotted path. */
const COMMENTS: Record<string, string> = {
  apiVersion: ' geminik8s cluster definition. Edit by hand, then check with: geminik8s validate cluster.yaml',
  name: ' Cluster name: a DNS label, used in hostnames and the NoCloud instance-id.',
  network: ' The L2 segment both nodes share.',
  'network.interface': ' NIC that carries node traffic and the VIP (matched by MAC when nodes[].mac is set).',
  'network.prefix': ' Subnet prefix length of the node IPs and the VIP.',
  'network.gateway': ' Default gateway (optional). It is not a failover witness: a gateway answers pings but records nothing.',
  'network.dns': ' DNS servers written into the network configuration.',
  'network.vip': ' Virtual IP of the control plane and PostgreSQL: always held by the current leader.',
  nodes: ' Exactly two nodes. The first is the bootstrap leader unless bootstrapLeader names the other.',
  witness: [
    ' Who decides failover. Two nodes cannot vote, so automatic failover needs an arbiter on a third box',
    ' that records who holds the lease and who may be promoted. Choose one:',
    '   type: lease, url: https://HOST:7444  a geminik8s witness on a third box (not a node, not the VIP),',
    '       started there with `geminik8s witness serve` and the credentials from `geminik8s witness credentials`;',
    '       enables automatic failover (init: --witness HOST[:PORT]).',
    '   type: none  (the default) manual failover only: the follower never promotes by itself; after making',
    '       sure the leader is down, an operator promotes the follower by hand (`geminik8s failover` is planned).',
    ' Reachability probes (gateway, tcp, http) are refused: they cannot tell a dead leader from one cut off',
    ' from its peer, so the follower could promote while the old leader still accepts writes.',
  ].join('\n'),
  k3s: ' K3s server options (datastore is always Kine on 127.0.0.1:2379; never cluster-init).',
  postgresql: [
    ' PostgreSQL. syncPolicy decides what the leader does when it loses its synchronous standby (after degradeAfter):',
    ' degrade = first record at the witness that nobody may be promoted, then drop to async and keep accepting',
    '   writes (with witness none nobody is promoted automatically; it just drops to async);',
    ' strict = keep blocking writes until the standby returns.',
  ].join('\n'),
  failover: [
    ' Failover timings. The leader renews its lease at the witness twice every checkInterval. It fences itself',
    ' (stops PostgreSQL, drops the VIP) by its own deadline: fenceAfter after it sent the last renewal the',
    ' witness granted. The witness lets the lease expire promoteAfter after granting it, on its own clock; only',
    ' then may the follower take the lease and promote, and only if the witness records it as promotable.',
    ' So fenceAfter + checkInterval < promoteAfter (geminik8s validate checks it).',
  ].join('\n'),
  agent: [
    ' The geminik8s agent API: HTTPS with mutual TLS from the cluster CA in secrets/tls/ (/healthz open; everything',
    ' else needs a token from secrets/, and the peer also its certificate). insecurePlaintext: true turns TLS off',
    ' everywhere (plain HTTP, tokens in the clear): development only.',
  ].join('\n'),
  ssh: ' Login user and SSH public keys written by cloud-init on first boot.',
  secretsDir: ' Directory with the tokens, PostgreSQL passwords and tls/ (the cluster CA and each party\'s certificate and key) (0700, files 0600). Never commit it.',
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
