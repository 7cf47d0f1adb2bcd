import type { Image } from '#common/schema/image.ts';

/** Debian packages every node OS carries (Debian 13 trixie). */
const BASE = [
  'systemd-sysv', 'systemd-resolved', 'udev', 'dbus', 'kmod', 'procps', 'util-linux', 'e2fsprogs', 'dosfstools',
  'initramfs-tools', 'busybox', 'fdisk', 'cloud-init', 'cloud-guest-utils', 'sudo', 'ca-certificates', 'zstd',
  'iproute2', 'iputils-ping', 'iputils-arping', 'nodejs',
  // The installer (geminik8s-agent install) writes the seed onto the FAT CONFIG partition without mounting it.
  'mtools',
];

/** The package list of an image: base, kernel, pinned PostgreSQL major, then the image's extras. */
export function rootPackages(image: Pick<Image, 'arch' | 'packages' | 'components'>): string[] {
  const arch = [`linux-image-${image.arch}`];
  // Debian amd64 has no grub-efi-arm64-bin; the disk builder takes arm64-efi modules from the arm64 root.
  if (image.arch === 'arm64') arch.push('grub-efi-arm64-bin');
  const pg = [`postgresql-${image.components.postgresql.major}`];
  return [...new Set([...BASE, ...arch, ...pg, ...image.packages])].sort();
}
