import { createHmac } from 'node:crypto';
import { stringify } from 'yaml';
import { K3S_MANAGED_FLAGS, type AuditPolicy, type ClusterSpec } from '../schema/cluster.ts';
import { join } from 'node:path';
import { NODE_PATHS } from './paths.ts';
import { KINE_DATABASE, KINE_USER, PG_TLS_FILES, pgTlsDir } from './postgresql.ts';

/** Where the node keeps secret material derived from its seed (0700 directory, 0600 files). */
export const NODE_SECRETS_DIR = '/var/lib/geminik8s/secrets';
export const K3S_TOKEN_FILE = `${NODE_SECRETS_DIR}/k3s-token`;
export const KINE_PGPASS_FILE = `${NODE_SECRETS_DIR}/kine.pgpass`;
export const KINE_LISTEN = '127.0.0.1:2379';

/**
 * `/etc/rancher/k3s/config.yaml` as an object: keys are K3s server flag names. The token is
 * referenced by file so this file carries no secret. Never `cluster-init`: the datastore is
 * Kine on loopback, which points at the PostgreSQL primary through the VIP.
 */
export function k3sConfig(spec: ClusterSpec, node: string): Record<string, unknown> {
  const self = spec.nodes.find((n) => n.name === node)!;
  const config: Record<string, unknown> = {
    'datastore-endpoint': `http://${KINE_LISTEN}`,
    'token-file': K3S_TOKEN_FILE,
    'node-name': node,
    'node-ip': self.ip,
    'advertise-address': self.ip,
    'tls-san': [spec.network.vip, ...spec.nodes.map((n) => n.ip), ...spec.k3s.tlsSan],
    'cluster-cidr': spec.k3s.clusterCidr,
    'service-cidr': spec.k3s.serviceCidr,
    'cluster-domain': spec.k3s.clusterDomain,
    'write-kubeconfig-mode': '0600',
  };
  if (spec.k3s.disable.length) config.disable = [...spec.k3s.disable];
  if (spec.k3s.auditLog.enabled) config['kube-apiserver-arg'] = auditLogArgs(spec);
  const labels = Object.entries(spec.k3s.nodeLabels).map(([k, v]) => `${k}=${v}`);
  if (labels.length) config['node-label'] = labels;
  for (const [key, values] of extraArgEntries(spec.k3s.extraArgs)) {
    const current = config[key];
    if (Array.isArray(current)) config[key] = [...current, ...values];
    else if (current !== undefined || K3S_MANAGED_FLAGS[key]) throw new Error(`k3s.extraArgs: --${key} is set by geminik8s`);
    // K3s expands a list into one --key=value per element (repeatable flags such as kubelet-arg).
    else config[key] = values.length === 1 ? values[0] : values;
  }
  return config;
}

/** Where kube-apiserver writes its audit log: under K3s's data directory, on the persistent partition. */
export const AUDIT_LOG_FILE = '/var/lib/rancher/k3s/server/logs/audit.log';

/**
 * kube-apiserver's audit flags, as K3s passes them (`kube-apiserver-arg`, one `name=value` per
 * element). The names are kube-apiserver's own (k8s.io/apiserver, options/audit.go).
 */
export function auditLogArgs(spec: ClusterSpec): string[] {
  const a = spec.k3s.auditLog;
  return [
    `audit-log-path=${AUDIT_LOG_FILE}`,
    `audit-policy-file=${NODE_PATHS.k3sAuditPolicy}`,
    `audit-log-maxage=${a.maxAge}`,
    `audit-log-maxbackup=${a.maxBackups}`,
    `audit-log-maxsize=${a.maxSize}`,
  ];
}

/**
 * geminik8s's default audit policy: no probes, never a request body for Secrets, ConfigMaps or
 * tokens (they would put secrets in the log), the request of every change, the metadata of
 * everything else.
 */
export const DEFAULT_AUDIT_POLICY: AuditPolicy = {
  apiVersion: 'audit.k8s.io/v1',
  kind: 'Policy',
  omitStages: ['RequestReceived'],
  rules: [
    { level: 'None', nonResourceURLs: ['/healthz*', '/readyz*', '/livez*', '/version'] },
    { level: 'None', users: ['system:kube-proxy'], verbs: ['watch'] },
    { level: 'None', resources: [{ group: 'coordination.k8s.io', resources: ['leases'] }], verbs: ['get', 'update'] },
    { level: 'Metadata', resources: [{ group: '', resources: ['secrets', 'configmaps', 'serviceaccounts/token'] }, { group: 'authentication.k8s.io', resources: ['tokenreviews'] }] },
    { level: 'Request', verbs: ['create', 'update', 'patch', 'delete', 'deletecollection'] },
    { level: 'Metadata' },
  ],
};

/** The audit policy file K3s's apiserver reads (`k3s.auditLog.policy`, or the default). */
export function auditPolicyYaml(spec: ClusterSpec): string {
  return `# geminik8s: kube-apiserver audit policy for cluster ${spec.name}.
${stringify(spec.k3s.auditLog.policy ?? DEFAULT_AUDIT_POLICY)}`;
}

/**
 * `--flag=value` arguments grouped by flag, in first-seen order; a bare `--flag` is `true`.
 * The cluster rules have already rejected flags geminik8s sets itself.
 */
export function extraArgEntries(args: readonly string[]): [string, (string | boolean)[]][] {
  const grouped = new Map<string, (string | boolean)[]>();
  for (const arg of args) {
    const m = /^--([a-z0-9-]+)(?:=(.*))?$/s.exec(arg);
    if (!m) throw new Error(`k3s.extraArgs: ${JSON.stringify(arg)} is not a --flag or --flag=value`);
    const [, key, value] = m as unknown as [string, string, string | undefined];
    grouped.set(key, [...(grouped.get(key) ?? []), value ?? true]);
  }
  return [...grouped];
}

export function k3sConfigYaml(spec: ClusterSpec, node: string): string {
  return `# geminik8s: K3s server configuration for ${node}.\n${stringify(k3sConfig(spec, node), { version: '1.1' })}`;
}

/**
 * Kine's DSN: through the VIP, never the local standby; the password comes from PGPASSFILE.
 * With TLS the server must show a certificate from the cluster CA that covers the VIP (both
 * nodes' do): sslmode=verify-full; Kine shows the node's certificate (pg_hba asks for one).
 */
export function kineEndpoint(spec: ClusterSpec): string {
  const dir = pgTlsDir(NODE_PATHS.stateDir);
  const tls = spec.agent.insecurePlaintext
    ? 'sslmode=disable'
    : `sslmode=verify-full&sslrootcert=${join(dir, PG_TLS_FILES.ca)}&sslcert=${join(dir, PG_TLS_FILES.cert)}&sslkey=${join(dir, PG_TLS_FILES.key)}`;
  return `postgres://${KINE_USER}@${spec.network.vip}:${spec.postgresql.port}/${KINE_DATABASE}?${tls}`;
}

/** Environment file for kine.service (no secret: the password is in the pgpass file). */
export function kineEnvironment(spec: ClusterSpec): string {
  return `# geminik8s: Kine datastore endpoint (the VIP follows the PostgreSQL primary).\nKINE_ENDPOINT=${kineEndpoint(spec)}\nPGPASSFILE=${KINE_PGPASS_FILE}\nPGCONNECT_TIMEOUT=5\n`;
}

/** libpq/pgx password file line for Kine: host:port:db:user:password. */
export function kinePgpass(spec: ClusterSpec, password: string): string {
  const esc = (s: string): string => s.replaceAll('\\', '\\\\').replaceAll(':', '\\:');
  return `${esc(spec.network.vip)}:${spec.postgresql.port}:${KINE_DATABASE}:${KINE_USER}:${esc(password)}\n`;
}

/**
 * Kine's PostgreSQL password, derived from the superuser password so the seed carries one
 * secret fewer and both nodes agree without coordination.
 */
export function kinePassword(postgresPassword: string): string {
  return createHmac('sha256', postgresPassword).update('geminik8s/kine').digest('base64url');
}
