import { auditPolicyYaml, K3S_TOKEN_FILE, KINE_PGPASS_FILE, k3sConfigYaml, kineEnvironment, kinePassword, kinePgpass } from './k3s.ts';
import { NODE_PATHS, pgDataDir } from './paths.ts';
import { pgHbaConf, pgIdentConf, postgresqlConf } from './postgresql.ts';
import type { ClusterSpec } from '../schema/cluster.ts';
import type { Image } from '../schema/image.ts';
import type { Secrets } from '../schema/seed.ts';

/**
 * Where a rendered file goes:
 * - `image`: baked into the generic root filesystem (never a secret, never per node);
 * - `boot`: the ESP (path relative to the ESP root);
 * - `seed`: the node's seed on the config partition (path relative to the partition);
 * - `node`: written on the node at first boot from the seed, by the agent, with the same code.
 */
export type Scope = 'image' | 'boot' | 'seed' | 'node';

export interface RenderedFile {
  path: string;
  content: string;
  mode: number;
  owner?: string;
  scope: Scope;
  /** True when the content includes a secret. */
  secret?: boolean;
}

/** Files the agent writes on the node at first boot from the seed (shown here for review). */
export function renderNodeFiles(image: Pick<Image, 'kubernetes' | 'components'>, cluster: ClusterSpec, node: string, secrets: Secrets): RenderedFile[] {
  const spec = cluster;
  const data = pgDataDir(image.components.postgresql.major);
  const files: RenderedFile[] = [
    { path: `${data}/conf.d/geminik8s.conf`, content: postgresqlConf(spec), mode: 0o644, owner: 'postgres', scope: 'node' },
    { path: `${data}/pg_hba.conf`, content: pgHbaConf(spec, node), mode: 0o600, owner: 'postgres', scope: 'node' },
    { path: `${data}/pg_ident.conf`, content: pgIdentConf(), mode: 0o600, owner: 'postgres', scope: 'node' },
  ];
  if (image.kubernetes.enabled) {
    files.push(
      { path: NODE_PATHS.k3sConfig, content: k3sConfigYaml(spec, node), mode: 0o600, scope: 'node' },
      { path: K3S_TOKEN_FILE, content: `${secrets.k3sToken}\n`, mode: 0o600, scope: 'node', secret: true },
      { path: NODE_PATHS.kineEnvFile, content: kineEnvironment(spec), mode: 0o644, scope: 'node' },
      { path: NODE_PATHS.kubeVipEnvFile, content: `# geminik8s: kube-vip announces Service LoadBalancer addresses on this interface;\n# its per-Service leases use the K3s node name.\nvip_interface=${spec.network.interface}\nvip_nodename=${node}\n`, mode: 0o644, scope: 'node' },
      { path: KINE_PGPASS_FILE, content: kinePgpass(spec, kinePassword(secrets.postgresPassword)), mode: 0o600, scope: 'node', secret: true },
    );
    if (spec.k3s.auditLog.enabled) files.push({ path: NODE_PATHS.k3sAuditPolicy, content: auditPolicyYaml(spec), mode: 0o600, scope: 'node' });
  }
  return files;
}

