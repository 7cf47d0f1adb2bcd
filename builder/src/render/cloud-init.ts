import { createHash } from 'node:crypto';
import { stringify } from 'yaml';
import type { ClusterSpec } from '#common/schema/cluster.ts';
import { NODE_PATHS } from '#common/render/paths.ts';

const yaml11 = (value: unknown): string => stringify(value, { version: '1.1', lineWidth: 0 });

/** NoCloud user-data: users, SSH keys, hostname. No secrets: those travel in geminik8s/seed.yaml. */
export function userData(spec: ClusterSpec, node: string): string {
  const config = {
    hostname: node,
    fqdn: `${node}.${spec.name}.local`,
    prefer_fqdn_over_hostname: false,
    preserve_hostname: false,
    manage_etc_hosts: true,
    disable_root: true,
    ssh_pwauth: false,
    // A new instance-id (any seed change below) must not rotate the node's SSH host keys;
    // cloud-init still generates them when missing, on the very first boot.
    ssh_deletekeys: false,
    users: [
      {
        name: spec.ssh.user,
        gecos: 'geminik8s operator',
        shell: '/bin/bash',
        groups: ['adm', 'systemd-journal'],
        sudo: 'ALL=(ALL) NOPASSWD:ALL',
        lock_passwd: true,
        // cloud-init's schema rejects an empty key list, so leave the key out instead.
        ...(spec.ssh.authorizedKeys.length ? { ssh_authorized_keys: spec.ssh.authorizedKeys } : {}),
      },
    ],
    // The root is read-only; package installation at boot would fail and is never wanted.
    package_update: false,
    package_upgrade: false,
  };
  return `#cloud-config\n${yaml11(config)}`;
}

/**
 * The instance-id: cluster and node, plus a digest of what cloud-init applies (user-data and
 * network-config). Re-seeding a node with changed users, keys or addressing makes a new
 * instance, so cloud-init applies it again; an unchanged seed keeps the id on every boot.
 */
export function instanceId(spec: ClusterSpec, node: string): string {
  const digest = createHash('sha256')
    .update(JSON.stringify([spec.name, node, userData(spec, node), networkConfig(spec, node)]))
    .digest('hex')
    .slice(0, 12);
  return `geminik8s-${spec.name}-${node}-${digest}`;
}

export function metaData(spec: ClusterSpec, node: string): string {
  return yaml11({ 'instance-id': instanceId(spec, node), 'local-hostname': node });
}

/** Network config v2 (rendered by cloud-init to systemd-networkd): static address, gateway, DNS. */
export function networkConfig(spec: ClusterSpec, node: string): string {
  const self = spec.nodes.find((n) => n.name === node)!;
  const iface: Record<string, unknown> = {};
  if (self.mac) {
    iface.match = { macaddress: self.mac };
    iface['set-name'] = spec.network.interface;
  }
  iface.dhcp4 = false;
  iface.dhcp6 = false;
  iface.addresses = [`${self.ip}/${spec.network.prefix}`];
  // `to: default` is netplan syntax that cloud-init's own network state rejects before 25.3
  // ("Address default is not a valid ip address", canonical/cloud-init#6391): spell it out.
  if (spec.network.gateway) iface.routes = [{ to: '0.0.0.0/0', via: spec.network.gateway }];
  if (spec.network.dns.length) iface.nameservers = { addresses: spec.network.dns };
  return yaml11({ version: 2, ethernets: { [spec.network.interface]: iface } });
}

export const SEED_FILE_IN_PARTITION = 'geminik8s/seed.yaml';
export { NODE_PATHS };
