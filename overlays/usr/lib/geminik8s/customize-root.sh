#!/bin/sh
# Turn an installed Debian root into a geminik8s node root. Runs inside the root (chroot in
# the mmdebstrap hook, RUN in the Containerfile), so every root source ends up the same OS.
# Reads /usr/lib/geminik8s/build/{enabled-units,os-release}, written by the builder's staging.
set -eu
build=/usr/lib/geminik8s/build

# Our units; Debian's packaged PostgreSQL cluster is replaced by the agent's.
systemctl enable $(cat "$build/enabled-units")
systemctl mask postgresql.service
rm -rf /etc/postgresql/*/main /var/lib/postgresql/*/main

# Idempotent: a root re-made from an earlier geminik8s root (tar:PATH) gets the lines once.
sed -i -e '/^VARIANT=/d' -e '/^VARIANT_ID=/d' -e '/^IMAGE_ID=/d' -e '/^IMAGE_VERSION=/d' /usr/lib/os-release
cat "$build/os-release" >> /usr/lib/os-release

# Mount points on the read-only root: the ESP, and the persistent directories bound by the
# initramfs (see /usr/share/initramfs-tools/scripts/local-bottom/geminik8s).
mkdir -p /boot/efi /var/lib/rancher /var/lib/geminik8s /var/lib/cloud /etc/rancher

# GRUB loads the kernel and initrd by fixed names from the slot.
cd /boot
kernel=$(ls vmlinuz-* 2>/dev/null | sort -V | tail -n1)
[ -n "$kernel" ] || { echo "customize-root: no kernel under /boot" >&2; exit 1; }
version=${kernel#vmlinuz-}
update-initramfs -c -k "$version" 2>/dev/null || update-initramfs -u -k "$version"
ln -sf "vmlinuz-$version" vmlinuz
ln -sf "initrd.img-$version" initrd.img
cd /

dpkg-query -W -f='${Package}\t${Version}\n' > /usr/share/geminik8s/packages.tsv

# Per-machine identity is made on first boot (systemd, cloud-init), never baked in.
# The snakeoil TLS key (ssl-cert, pulled in by postgresql-common) would be the same on every
# node; the build host's hostname and resolver must not leak into the image.
rm -f /etc/machine-id /var/lib/dbus/machine-id /etc/ssh/ssh_host_* \
  /etc/ssl/private/ssl-cert-snakeoil.key /etc/ssl/certs/ssl-cert-snakeoil.pem /etc/.resolv.conf.systemd-resolved.bak
find /etc/ssl/certs -xtype l -delete 2>/dev/null || true
touch /etc/machine-id
echo geminik8s > /etc/hostname
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/man /var/log/apt/* /var/log/dpkg.log /var/cache/debconf/*-old
rm -rf "$build"
