import { stringify } from 'yaml';
import { KINE_LISTEN } from '#common/render/k3s.ts';
import { AgentConfigSchema, type AgentConfig } from '#common/schema/agent.ts';
import type { ClusterSpec } from '#common/schema/cluster.ts';
import { API_VERSION, type Image } from '#common/schema/image.ts';
import { seedDocument, type NodeSeed, type Secrets } from '#common/schema/seed.ts';
import { metaData, networkConfig, SEED_FILE_IN_PARTITION, userData } from './cloud-init.ts';
import { kernelCmdline, renderGrubCfg } from './grub.ts';
import { AGENT_STOP_TIMEOUT_SEC, NODE_PATHS, pgBinDir, pgDataDir } from '#common/render/paths.ts';
import { renderNodeFiles, type RenderedFile, type Scope } from '#common/render/node.ts';
import { renderTemplate } from './templates.ts';
import type { TlsMaterial } from '#common/tls.ts';

export type { RenderedFile, Scope };
export { renderNodeFiles };

/** The agent unit's WatchdogSec, until the agent lowers it to watchdogMs(fenceAfter) at start (WATCHDOG_USEC). */
export const AGENT_WATCHDOG_SEC = 30;

export function agentConfigFor(image: Image): AgentConfig {
  return AgentConfigSchema.parse({
    seedFile: NODE_PATHS.seedFile,
    seedSource: `${NODE_PATHS.seedMount}/${SEED_FILE_IN_PARTITION}`,
    stateDir: NODE_PATHS.stateDir,
    postgresql: { binDir: pgBinDir(image.components.postgresql.major), dataDir: pgDataDir(image.components.postgresql.major) },
    kubernetes: { enabled: image.kubernetes.enabled },
    serviceManager: 'systemd',
    // The tries an upgrade arms are the ones this image's grub.cfg counts down from (a larger
    // count would get a single boot).
    upgrade: { tries: image.boot.tries },
    image: { version: image.version },
  });
}

function unit(name: string, context: Record<string, unknown>): RenderedFile {
  return { path: `${NODE_PATHS.unitDir}/${name}`, content: renderTemplate(`systemd/${name}.hbs`, context), mode: 0o644, scope: 'image' };
}

/** The agent unit's template values (a test renders it with the overlay's script paths instead). */
export function agentUnitContext(): Record<string, string | number> {
  return {
    agentBundle: NODE_PATHS.agentBundle,
    agentConfig: NODE_PATHS.agentConfig,
    watchdogSec: AGENT_WATCHDOG_SEC,
    stopTimeoutSec: AGENT_STOP_TIMEOUT_SEC,
    releaseVipScript: NODE_PATHS.releaseVipScript,
    vipReleaseFile: NODE_PATHS.vipReleaseFile,
  };
}

/** geminik8s-agent.service, the same for every image. */
export function agentUnit(): RenderedFile {
  return unit('geminik8s-agent.service', agentUnitContext());
}

/** Files every node of this image carries, whatever its seed. */
export function renderImageFiles(image: Image): RenderedFile[] {
  const major = image.components.postgresql.major;
  const files: RenderedFile[] = [
    agentUnit(),
    unit('geminik8s-postgresql.service', { pgMajor: major, pgBinDir: pgBinDir(major), pgDataDir: pgDataDir(major) }),
    unit('geminik8s-ready.service', { readyScript: NODE_PATHS.readyScript }),
    unit('geminik8s-grow.service', { growScript: NODE_PATHS.growScript, persistentMount: NODE_PATHS.persistentMount }),
    unit('geminik8s-install.service', { agentBundle: NODE_PATHS.agentBundle }),
    {
      path: NODE_PATHS.agentConfig,
      content: `# geminik8s agent: node-local paths (cluster settings and secrets come from the seed).\n${stringify(agentConfigFor(image), { version: '1.1' })}`,
      mode: 0o644,
      scope: 'image',
    },
    { path: NODE_PATHS.grubCfg, content: renderGrubCfg(image), mode: 0o644, scope: 'boot' },
  ];
  if (image.boot.debugShell) {
    files.push(
      unit('geminik8s-debug-shell.service', {}),
      { path: `${NODE_PATHS.unitDir}/serial-getty@hvc0.service.d/geminik8s-debug-shell.conf`, content: renderTemplate('systemd/debug-shell.conf.hbs', {}), mode: 0o644, scope: 'image' },
    );
  }
  if (image.kubernetes.enabled) {
    files.push(
      unit('kine.service', { kineEnvFile: NODE_PATHS.kineEnvFile, kineBin: NODE_PATHS.kineBin, kineListen: KINE_LISTEN, kineMetrics: NODE_PATHS.kineMetrics }),
      unit('k3s.service', { kineListen: KINE_LISTEN, k3sBin: NODE_PATHS.k3sBin, k3sConfig: NODE_PATHS.k3sConfig }),
      unit('geminik8s-k3s-images.service', { k3sImagesDir: NODE_PATHS.k3sImagesDir, k3sImagesShipped: NODE_PATHS.k3sImagesShipped, k3sImagesScript: NODE_PATHS.k3sImagesScript }),
      unit('kube-vip.service', { kubeVipEnvFile: NODE_PATHS.kubeVipEnvFile, kubeVipBin: NODE_PATHS.kubeVipBin, kubeconfig: NODE_PATHS.kubeconfig }),
    );
  }
  return files;
}

/** The seed document one node receives. */
export function nodeSeed(spec: ClusterSpec, node: string, secrets: Secrets, tls?: TlsMaterial): NodeSeed {
  return { apiVersion: API_VERSION, kind: 'NodeSeed', node, cluster: spec, secrets, ...(tls ? { tls } : {}) };
}

function clusterSpecOf(cluster: ClusterSpec & { apiVersion?: string; kind?: string; secretsDir?: string }): ClusterSpec {
  const { apiVersion: _a, kind: _k, secretsDir: _s, ...spec } = cluster;
  return spec;
}

/** The per-node seed for the config partition: NoCloud files plus the geminik8s seed. */
export function renderSeedFiles(cluster: ClusterSpec, node: string, secrets: Secrets, tls?: TlsMaterial): RenderedFile[] {
  const spec = clusterSpecOf(cluster);
  return [
    { path: 'user-data', content: userData(spec, node), mode: 0o644, scope: 'seed' },
    { path: 'meta-data', content: metaData(spec, node), mode: 0o644, scope: 'seed' },
    { path: 'network-config', content: networkConfig(spec, node), mode: 0o644, scope: 'seed' },
    {
      path: SEED_FILE_IN_PARTITION,
      content: `# geminik8s node seed for ${node}: contains secrets, keep it private.\n${stringify(seedDocument(nodeSeed(spec, node, secrets, tls)), { version: '1.1' })}`,
      mode: 0o600,
      scope: 'seed',
      secret: true,
    },
  ];
}

/** Everything one node will carry: image, boot, seed and first-boot files. */
export function renderNode(input: { image: Image; cluster: ClusterSpec; node: string; secrets: Secrets; tls?: TlsMaterial }): RenderedFile[] {
  return [
    ...renderImageFiles(input.image),
    ...renderSeedFiles(input.cluster, input.node, input.secrets, input.tls),
    ...renderNodeFiles(input.image, clusterSpecOf(input.cluster), input.node, input.secrets),
  ];
}
