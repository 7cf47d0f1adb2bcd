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
# Debian's layout without its default cluster (never made, createcluster.d/geminik8s.conf): the
# agent makes /var/lib/postgresql/N/main on first boot.
for bin in /usr/lib/postgresql/*/bin; do
  [ -d "$bin" ] && install -d -o postgres -g postgres -m 0755 "/var/lib/postgresql/$(basename "$(dirname "$bin")")"
done

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

# Boot-time work a node never needs (each measured on the boot path under TCG; docs/boot.md).
# Units: binfmt registration (python3's .pyc handler), e2fsprogs' scrub reaper and timer, and
# jobs that only make sense on a mutable, interactive system.
systemctl mask systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
  e2scrub_reap.service e2scrub_all.timer systemd-pcrmachine.service systemd-pcrphase.service \
  systemd-pcrphase-sysinit.service systemd-pcrphase-initrd.service systemd-tpm2-setup.service \
  systemd-tpm2-setup-early.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
  man-db.timer fstrim.timer 2>/dev/null || true
# Kernel modules and file systems nothing on a node uses, each loaded or mounted by its own unit
# early in boot: DRM (headless), EFI pstore, configfs, FUSE; udev rules from credentials (none
# are passed). See /usr/lib/modprobe.d/geminik8s.conf for the modules kept from loading by alias.
systemctl mask modprobe@drm.service modprobe@efi_pstore.service modprobe@configfs.service modprobe@fuse.service \
  sys-kernel-config.mount sys-fs-fuse-connections.mount systemd-pstore.service \
  systemd-udev-load-credentials.service 2>/dev/null || true
# Generators: GPT auto-mounting (our partitions are mounted by the initramfs and fstab), hibernation,
# TPM2, SSH-over-vsock, SysV init scripts, rc.local, offline updates, Debian's PostgreSQL clusters
# (the agent runs the one cluster).
mkdir -p /etc/systemd/system-generators
for g in systemd-gpt-auto-generator systemd-hibernate-resume-generator systemd-tpm2-generator systemd-ssh-generator \
  systemd-sysv-generator systemd-rc-local-generator systemd-system-update-generator postgresql-generator; do
  ln -sf /dev/null "/etc/systemd/system-generators/$g"
done
# The root is immutable: /usr never changes under a booted system, so the "/usr is newer than
# /etc or /var" updates (ldconfig, journal catalog; udev's postinst made the hwdb) are done here,
# once, and the stamps say so. squashfs stores every mtime as SOURCE_DATE_EPOCH, so /usr and the stamps match.
ldconfig
journalctl --update-catalog 2>/dev/null || true
touch /etc/.updated /var/.updated
# Python (cloud-init) trusts its bytecode instead of hashing every source it imports: the root is
# read-only, so source and bytecode cannot drift apart.
py=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
python3 -m compileall -q -f -j 0 --invalidation-mode unchecked-hash -x '/(test|tests|idlelib|lib2to3|turtledemo)/' "$py" /usr/lib/python3/dist-packages >/dev/null || true

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
