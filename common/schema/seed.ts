import * as z from 'zod';
import { ClusterSpecSchema, clusterRules } from './cluster.ts';
import { API_VERSION } from './image.ts';
import type { RuleIssue } from './rules.ts';
import { dnsLabel } from './units.ts';
import { isCertPem, isKeyPem, tlsMaterialProblem } from '../tls.ts';

const secret = z
  .string()
  .min(16, 'secrets must be at least 16 characters')
  .regex(/^[A-Za-z0-9._~-]+$/, 'secrets may only contain letters, digits and ._~- (they end up in DSNs and config files)');

/**
 * Credentials per party: `agentToken` is the peer agent's, `witnessToken` the only one the
 * witness knows (lease calls), `readToken` an operator's for status and metrics, `adminToken`
 * an operator's for switchover (and later upgrade and backup).
 */
export const SECRET_NAMES = ['k3sToken', 'postgresPassword', 'replicationPassword', 'agentToken', 'witnessToken', 'readToken', 'adminToken'] as const;
export type SecretName = (typeof SECRET_NAMES)[number];

export const SecretsSchema = z.strictObject({
  k3sToken: secret,
  postgresPassword: secret,
  replicationPassword: secret,
  agentToken: secret,
  witnessToken: secret,
  readToken: secret,
  adminToken: secret,
});
export type Secrets = z.output<typeof SecretsSchema>;

/** The node's TLS material (PEM): the cluster CA's certificate, the node's certificate and key. */
export const SeedTlsSchema = z.strictObject({
  ca: z.string().refine(isCertPem, 'must be a PEM certificate (-----BEGIN CERTIFICATE-----)'),
  cert: z.string().refine(isCertPem, 'must be a PEM certificate (-----BEGIN CERTIFICATE-----)'),
  key: z.string().refine(isKeyPem, 'must be a PEM private key (-----BEGIN PRIVATE KEY-----)'),
});

/** What one node receives at first boot (in the config partition, next to NoCloud data). */
export const NodeSeedSchema = z.strictObject({
  apiVersion: z.literal(API_VERSION),
  kind: z.literal('NodeSeed'),
  node: dnsLabel,
  cluster: ClusterSpecSchema,
  secrets: SecretsSchema,
  /** Required unless `cluster.agent.insecurePlaintext`. */
  tls: SeedTlsSchema.optional(),
});
export type NodeSeed = z.output<typeof NodeSeedSchema>;

/**
 * A seed written before TLS (`cluster.agent.tls: false`, no `tls`) still runs: as a
 * development-plaintext node (the agent warns at every start), so that a pair upgraded in place
 * keeps working until both nodes are re-seeded. `agent.tls: true` stays an error.
 */
export function normalizeSeed(seed: NodeSeed): NodeSeed {
  const { tls, ...agent } = seed.cluster.agent;
  if (tls !== false || seed.tls) return seed;
  return { ...seed, cluster: { ...seed.cluster, agent: { ...agent, insecurePlaintext: true } } };
}

export function seedRules(seed: NodeSeed): RuleIssue[] {
  const issues: RuleIssue[] = clusterRules(seed.cluster).map((i) => ({ ...i, path: ['cluster', ...i.path] }));
  if (!seed.cluster.nodes.some((n) => n.name === seed.node)) {
    issues.push({
      path: ['node'],
      message: 'must name one of the cluster nodes',
      found: JSON.stringify(seed.node),
      expected: seed.cluster.nodes.map((n) => JSON.stringify(n.name)).join(' or '),
    });
  }
  const self = seed.cluster.nodes.find((n) => n.name === seed.node);
  if (seed.cluster.agent.insecurePlaintext && seed.tls) {
    issues.push({ path: ['tls'], message: 'must be absent when cluster.agent.insecurePlaintext is true: a node with TLS material and a plaintext cluster would speak neither consistently', related: [['cluster', 'agent', 'insecurePlaintext']] });
  } else if (!seed.cluster.agent.insecurePlaintext && !seed.tls) {
    issues.push({ path: ['tls'], message: 'the node needs its TLS material (the cluster CA, its certificate and key): write the seed with `geminik8s seed`, or set cluster.agent.insecurePlaintext for development', expected: 'tls: {ca, cert, key}' });
  } else if (seed.tls && self) {
    const problem = tlsMaterialProblem(seed.tls, { cluster: seed.cluster.name, name: seed.node, host: self.ip });
    if (problem) issues.push({ path: ['tls', 'cert'], message: `does not fit this node: ${problem}`, expected: `a certificate for ${seed.node} (${self.ip}) of cluster ${seed.cluster.name} signed by tls.ca; reissue with \`geminik8s init --force\`` });
  }
  const values = SECRET_NAMES.map((k) => seed.secrets[k]);
  if (new Set(values).size !== values.length) {
    issues.push({ path: ['secrets'], message: 'each secret must be different' });
  }
  return issues;
}

/**
 * The seed as a YAML document. A validated seed holds durations in milliseconds, but a bare
 * number in YAML means seconds, so they are written back with their unit: parsing the
 * document again gives the same seed (firstboot re-writes its private copy this way).
 */
export function seedDocument(seed: NodeSeed): Record<string, unknown> {
  const failover = Object.fromEntries(Object.entries(seed.cluster.failover).map(([k, ms]) => [k, `${ms}ms`]));
  return { ...seed, cluster: { ...seed.cluster, failover } };
}
