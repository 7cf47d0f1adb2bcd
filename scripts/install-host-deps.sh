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

# QEMU's system emulators and qemu-img at QEMU_MIN_MAJOR or later. Bookworm's QEMU 7.2 translated
# about 4x as much guest code as 10.0 in one boot of the test image under TCG (1.83 million blocks
# against 0.47 million: docs/qemu.md), so on bookworm they come from bookworm-backports. apt
# upgrades qemu-user-static with them (10.0's Breaks): its binfmt entry keeps the name
# qemu-aarch64, registered through systemd-binfmt's trigger instead of binfmt-support.
QEMU_PACKAGES=(qemu-system-x86 qemu-system-arm qemu-utils qemu-user-static)
QEMU_MIN_MAJOR=10
CODENAME=$( . /etc/os-release; echo "${VERSION_CODENAME:-}")

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
old_qemu=()
for p in "${QEMU_PACKAGES[@]}"; do
  v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
  v=${v#*:}
  [ -n "$v" ] && [ "${v%%.*}" -lt "$QEMU_MIN_MAJOR" ] && old_qemu+=("$p")
done

if [ "${1:-}" = "--check" ]; then
  if [ ${#missing[@]} -eq 0 ] && [ ${#old_qemu[@]} -eq 0 ]; then echo "all host packages are installed"; exit 0; fi
  [ ${#missing[@]} -eq 0 ] || echo "missing: ${missing[*]}"
  [ ${#old_qemu[@]} -eq 0 ] || echo "older than QEMU $QEMU_MIN_MAJOR: ${old_qemu[*]}"
  exit 3
fi

if [ ${#missing[@]} -eq 0 ] && [ ${#old_qemu[@]} -eq 0 ]; then
  echo "host packages: all ${#PACKAGES[@]} installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# The QEMU packages are installed (or upgraded) on their own, from backports on bookworm; the
# rest from the release. -t applies to a whole apt-get run, so the two are separate runs.
qemu_now=()
for p in "${QEMU_PACKAGES[@]}"; do
  case " ${missing[*]} ${old_qemu[*]} " in *" $p "*) qemu_now+=("$p") ;; esac
done
rest=()
for p in "${missing[@]}"; do
  case " ${QEMU_PACKAGES[*]} " in *" $p "*) ;; *) rest+=("$p") ;; esac
done
qemu_release=()
if [ ${#qemu_now[@]} -gt 0 ] && [ "$CODENAME" = bookworm ]; then
  list=/etc/apt/sources.list.d/geminik8s-bookworm-backports.sources
  # A commented-out line does not count: apt would not know the suite -t names.
  if ! grep -rqsE '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $SUDO tee "$list" > /dev/null
  fi
  qemu_release=(-t bookworm-backports)
fi
echo "installing: ${rest[*]} ${qemu_now[*]}"
$SUDO apt-get update -q
[ ${#rest[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${rest[@]}"
[ ${#qemu_now[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${qemu_release[@]}" "${qemu_now[@]}"
