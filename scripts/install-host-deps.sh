#!/usr/bin/env bash
# Install the Debian packages the geminik8s toolchain and its tests need. Idempotent.
# Usage: scripts/install-host-deps.sh [--check]   (--check lists what is missing, installs nothing)
set -euo pipefail

# Debian's default PostgreSQL major: pg_auto_failover's extension must match the server the
# harness runs (the newest installed major).
PG_MAJOR=$( . /etc/os-release; case "${VERSION_CODENAME:-}" in trixie) echo 17 ;; *) echo 15 ;; esac)

PACKAGES=(
  # image building
  mmdebstrap e2fsprogs squashfs-tools erofs-utils dosfstools mtools fdisk gdisk fakeroot attr uidmap
  grub-common grub-pc-bin grub-efi-amd64-bin xorriso zstd xz-utils qemu-utils
  qemu-user-static binfmt-support arch-test ca-certificates
  # booting images under emulation
  qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64
  # rendering checks
  cloud-init systemd zsh fish bsdutils curl grub-emu
  # node scripts run for real on loop devices (grow-persistent.sh: growpart)
  cloud-guest-utils
  # failover harness and comparison
  postgresql iproute2 iptables iputils-arping iputils-ping patroni etcd-server
  "postgresql-$PG_MAJOR-auto-failover" pg-auto-failover-cli
  # upgrade bundles: signatures checked against minisign itself; the SUC image: busybox
  # (the layer's shell in the tests), skopeo and a registry to push to on loopback
  minisign busybox skopeo docker-registry
  # the cluster CA and certificates (geminik8s init)
  openssl
  # PXE: pxe serve --dnsmasq-config checks what it writes with dnsmasq --test
  dnsmasq-base
  # the status page, loaded from a running pair in a headless browser
  chromium
  # Containerfile path
  docker.io
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ "${1:-}" = "--check" ]; then
  if [ ${#missing[@]} -eq 0 ]; then echo "all host packages are installed"; exit 0; fi
  echo "missing: ${missing[*]}"; exit 3
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "host packages: all ${#PACKAGES[@]} installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
