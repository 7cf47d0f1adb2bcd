import { connect } from 'node:tls';
import type { Cluster } from '#common/schema/cluster.ts';
import { certFingerprint } from '#common/tls.ts';
import type { Secrets } from '#common/schema/seed.ts';
import { agentAnswer, agentUrl, type ClusterStatus, type Fetcher } from './status.ts';

/** What `geminik8s certs rotate` would do, or why it may not (pure). */
export interface RotatePlan {
  ok: boolean;
  /** The nodes in the order they are rotated: the follower first, the leader last. */
  order: string[];
  rule: string;
  steps: string[];
}

/**
 * One node at a time, the leader last, and only nodes whose agent answers: a node that is down
 * gets its new certificate with a new seed instead. Nothing restarts on the nodes (the agent swaps
 * its certificate in place), so the leader keeps its lease and the VIP throughout.
 */
export function planCertRotation(s: ClusterStatus, only: string | undefined, k3s: boolean): RotatePlan {
  const refuse = (rule: string): RotatePlan => ({ ok: false, order: [], rule, steps: [] });
  if (only && !s.nodes.some((n) => n.name === only)) return refuse(`${only} is not a node of cluster ${s.cluster} (${s.nodes.map((n) => n.name).join(', ')})`);
  const wanted = s.nodes.filter((n) => !only || n.name === only);
  const down = wanted.filter((n) => !n.reachable);
  if (down.length) {
    const up = s.nodes.filter((n) => n.reachable).map((n) => n.name);
    return refuse(`${down.map((n) => `${n.name} does not answer (${n.error ?? 'no answer'})`).join('; ')}: a node is rotated through its running agent. ${up.length && !only ? `Rotate ${up.map((n) => `--node ${n}`).join(' or ')} now, and` : 'Give'} a node that stays down a new seed (geminik8s seed) once its certificate is reissued`);
  }
  const order = [...wanted].sort((a, b) => Number(a.name === s.leader) - Number(b.name === s.leader)).map((n) => n.name);
  return {
    ok: true, order,
    rule: 'each node gets a new key and certificate from the cluster CA both nodes already trust, swapped in by its running agent: nothing restarts, the leader keeps its lease and the VIP, and either node accepts the other\'s old or new certificate throughout',
    steps: order.flatMap((name) => [
      `${name}: a new key and certificate from the kept CA (secrets/tls/${name}.crt, .key)`,
      `${name}: its agent checks them, keeps them (state directory), reloads PostgreSQL's TLS files and serves them from the next handshake${k3s ? '; K3s stopped, its certificates rotated (k3s certificate rotate), started again, where the node runs K3s' : ''}`,
      `${name}: the certificate its API serves is compared with the new one; then the pair must be as healthy as before`,
    ]),
  };
}

/** Hand `node` its new material (admin-token). */
export async function requestTlsRotation(cluster: Cluster, secrets: Secrets, node: string, material: { cert: string; key: string; k3s: boolean }, fetcher: Fetcher): Promise<{ ok: boolean; reason: string; fingerprint?: string; notAfter?: string; k3s?: string; changed?: boolean }> {
  const ip = cluster.nodes.find((n) => n.name === node)!.ip;
  const r = await fetcher(agentUrl(cluster, ip, '/v1/tls'), { method: 'POST', headers: { authorization: `Bearer ${secrets.adminToken}`, 'content-type': 'application/json' }, body: JSON.stringify(material), timeoutMs: 300_000 });
  const { ok, reason, body } = agentAnswer(r);
  const str = (k: string): Record<string, string> => (typeof body[k] === 'string' ? { [k]: body[k] as string } : {});
  return { ok, reason, ...str('fingerprint'), ...str('notAfter'), ...str('k3s'), ...(typeof body.changed === 'boolean' ? { changed: body.changed } : {}) };
}

/** SHA-256 (hex) of the certificate a TLS server presents at `host:port`, verified against `ca`. */
export function servedFingerprint(host: string, port: number, ca: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port, ca, checkServerIdentity: () => undefined }, () => {
      const cert = socket.getPeerCertificate();
      socket.destroy();
      if (!cert?.raw) return reject(new Error(`${host}:${port} presented no certificate`));
      resolve(certFingerprint(cert.raw));
    });
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`${host}:${port}: no TLS handshake within ${timeoutMs} ms`)));
    socket.once('error', reject);
  });
}
