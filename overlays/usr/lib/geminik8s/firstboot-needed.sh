#!/bin/sh
# Run by the agent at its start (`run --firstboot`): exit 0 (run first boot) unless the seed, the
# agent and its configuration are byte for byte those of the last first boot that configured
# the node, as recorded in STAMP (sha256sum format, written by first boot); then exit 1, and
# the agent skips first boot.
# Remove STAMP to force a first boot.
#   firstboot-needed.sh STAMP [SEED_MOUNT]
# The initramfs runs it before the switch to the root, with GEMINIK8S_ROOT set to the new root:
# the recorded paths are read under it, except those under GEMINIK8S_ROOT_KEEP (default /run/,
# the initramfs's own /run, which moves into the root with the seed medium mounted in it).
set -u
stamp=$1
root=${GEMINIK8S_ROOT:-}
keep=${GEMINIK8S_ROOT_KEEP:-/run/}
# The seed medium is mounted first, so its seed is what gets compared.
if [ -n "${2:-}" ]; then "$(dirname "$0")/mount-seed.sh" "$2" >/dev/null 2>&1 || true; fi
# sha256sum lines are "HASH  PATH": prefix each PATH with the root unless it is kept.
if [ -s "$stamp" ] && awk -v root="$root" -v keep="$keep" '{
    path = substr($0, 67)
    if (root != "" && index(path, keep) != 1) path = root path
    print substr($0, 1, 66) path
  }' "$stamp" | sha256sum -c >/dev/null 2>&1; then
  echo "geminik8s: seed, agent and agent configuration unchanged since the last first boot: first boot skipped"
  exit 1
fi
exit 0
