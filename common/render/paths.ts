/** Where things live on a node. One table, so the renderer, the rootfs builder and docs agree. */
export const NODE_PATHS = {
  agentBundle: '/usr/lib/geminik8s/agent.mjs',
  agentConfig: '/etc/geminik8s/agent.yaml',
  readyScript: '/usr/lib/geminik8s/ready.sh',
  /** ExecStopPost of the agent unit: drops the VIP the agent's `vipReleaseFile` names, without starting Node.js. */
  releaseVipScript: '/usr/lib/geminik8s/release-vip.sh',
  /** `ADDRESS PREFIX DEVICE` of the VIP, written by the agent at its start (empty with the VIP off). */
  vipReleaseFile: '/run/geminik8s/vip',
  seedFile: '/var/lib/geminik8s/seed.yaml',
  /** Where the initramfs (or first boot, in the agent) mounts the seed medium (config partition or cidata ISO), read-only. */
  seedMount: '/run/geminik8s/config',
  mountSeedScript: '/usr/lib/geminik8s/mount-seed.sh',
  /** Run by the agent's start (`run --firstboot`) and the initramfs: first boot is skipped when nothing it reads has changed. */
  firstbootNeededScript: '/usr/lib/geminik8s/firstboot-needed.sh',
  /** Written by the initramfs when firstboot-needed.sh finds nothing changed: the agent skips first boot without running the check again. */
  firstbootUnchanged: '/run/geminik8s/firstboot-unchanged',
  growScript: '/usr/lib/geminik8s/grow-persistent.sh',
  customizeScript: '/usr/lib/geminik8s/customize-root.sh',
  /** Inputs of the customize script, removed by it. */
  buildDir: '/usr/lib/geminik8s/build',
  /** PERSISTENT, mounted by the initramfs; /etc's upper layer and the persistent directories live there. */
  persistentMount: '/run/geminik8s/persistent',
  espMount: '/boot/efi',
  stateDir: '/var/lib/geminik8s',
  unitDir: '/etc/systemd/system',
  k3sBin: '/usr/local/bin/k3s',
  kineBin: '/usr/local/bin/kine',
  kubeVipBin: '/usr/local/bin/kube-vip',
  k3sConfig: '/etc/rancher/k3s/config.yaml',
  /** K3s air-gap image archives in the slot (read-only). */
  k3sImagesShipped: '/usr/share/geminik8s/k3s-images',
  /** Where K3s imports image archives from (on the persistent partition). */
  k3sImagesDir: '/var/lib/rancher/k3s/agent/images',
  /** Bind-mounts each shipped archive into k3sImagesDir before K3s starts. */
  k3sImagesScript: '/usr/lib/geminik8s/k3s-images.sh',
  /** kube-apiserver's audit policy, with k3s.auditLog on. */
  k3sAuditPolicy: '/etc/rancher/k3s/audit-policy.yaml',
  kubeconfig: '/etc/rancher/k3s/k3s.yaml',
  kineEnvFile: '/var/lib/geminik8s/kine.env',
  kineMetrics: '127.0.0.1:2381',
  kubeVipEnvFile: '/var/lib/geminik8s/kube-vip.env',
  grubCfg: '/grub/grub.cfg',
  grubEnv: '/grub/grubenv',
} as const;

/**
 * A slot's kernel and initrd on the ESP, where GRUB loads them: FAT reads fast and needs no
 * driver for the slot's compression. The slot's own /boot holds the same files.
 */
export function slotBootPath(slot: 'A' | 'B', name: 'vmlinuz' | 'initrd.img'): string {
  return `/slot-${slot.toLowerCase()}/${name}`;
}

export function pgBinDir(major: number): string {
  return `/usr/lib/postgresql/${major}/bin`;
}

export function pgDataDir(major: number): string {
  return `/var/lib/postgresql/${major}/main`;
}

/**
 * The agent unit's TimeoutStopSec: how long a stopping agent has to say it lives
 * (EXTEND_TIMEOUT_USEC) before systemd kills it. Its SIGTERM handler says so at once.
 */
export const AGENT_STOP_TIMEOUT_SEC = 1;

/** GPT partition numbers; grub.cfg finds the root slots by number on the boot disk. */
export const PARTITION_NUMBERS = { biosBoot: 1, esp: 2, config: 3, rootA: 4, rootB: 5, persistent: 6 } as const;
