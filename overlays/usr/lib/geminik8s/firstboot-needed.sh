#!/bin/sh
# ExecCondition of geminik8s-firstboot.service: exit 0 (run first boot) unless the seed, the
# agent and its configuration are byte for byte those of the last first boot that configured
# the node, as recorded in STAMP (sha256sum format, written by first boot); then exit 1, which
# systemd takes as "skip", and the agent starts without a second Node.js start before it.
# Remove STAMP to force a first boot.
#   firstboot-needed.sh STAMP [SEED_MOUNT]
set -u
stamp=$1
# The seed medium is mounted first, so its seed is what gets compared.
if [ -n "${2:-}" ]; then "$(dirname "$0")/mount-seed.sh" "$2" >/dev/null 2>&1 || true; fi
if [ -s "$stamp" ] && sha256sum --status -c "$stamp" 2>/dev/null; then
  echo "geminik8s: seed, agent and agent configuration unchanged since the last first boot: first boot skipped"
  exit 1
fi
exit 0
