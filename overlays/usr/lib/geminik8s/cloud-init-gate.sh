#!/bin/sh
# Decide whether cloud-init runs on this boot. Called by the initramfs before the switch to the
# root, so cloud-init's systemd generator (and ds-identify) see the result.
#   cloud-init-gate.sh ETC CLOUD_DIR [MEDIUM_DIR...]
# ETC        the root's /etc (writable: the overlay)
# CLOUD_DIR  cloud-init's state (/var/lib/cloud on PERSISTENT)
# MEDIUM_DIR the mounted seed media (the CONFIG partition, a cidata ISO)
# cloud-init runs only when a medium carries NoCloud data (meta-data or user-data) whose
# instance-id cloud-init has not finished applying: CLOUD_DIR/instances/<id>/boot-finished,
# written by its final stage. Otherwise ETC/cloud/cloud-init.disabled keeps it off, so an
# unseeded image, and a node whose seed is already applied, boot without it. A changed seed
# (new instance-id) runs it again. When in doubt (data without a readable instance-id) it runs.
# A cloud-init.disabled that this script did not write is left alone.
set -eu
etc=$1 cloud=$2
shift 2
marker="$etc/cloud/cloud-init.disabled"

decide() {
  for m in "$@"; do
    [ -f "$m/meta-data" ] || [ -f "$m/user-data" ] || continue
    iid=$(sed -n 's/^instance-id:[[:space:]]*//p' "$m/meta-data" 2>/dev/null | head -n 1 | tr -d "\"'\r" | sed 's/[[:space:]]*$//')
    if [ -z "$iid" ]; then
      echo "run: $m has NoCloud data without a readable instance-id"
      return 0
    fi
    case "$iid" in */*|.|..) echo "run: instance-id '$iid' is not a plain name"; return 0 ;; esac
    if [ -f "$cloud/instances/$iid/boot-finished" ]; then
      echo "skip: instance $iid is already applied"
      return 1
    fi
    echo "run: instance $iid is not applied yet"
    return 0
  done
  echo "skip: no seed medium with NoCloud data"
  return 1
}

if reason=$(decide "$@"); then
  # Only our own marker is removed: one an operator wrote stays (and keeps cloud-init off).
  if [ -f "$marker" ] && ! grep -q '^geminik8s: ' "$marker"; then reason="skip: $marker was written by someone else"; fi
  grep -qs '^geminik8s: ' "$marker" && rm -f "$marker"
else
  mkdir -p "$etc/cloud"
  echo "geminik8s: $reason" > "$marker.tmp"
  mv -f "$marker.tmp" "$marker"
fi
echo "geminik8s: cloud-init $reason"
