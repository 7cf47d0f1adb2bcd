#!/bin/sh
# Mount the node seed medium read-only where geminik8s-firstboot reads it: the config
# partition (vfat, label CIDATA) or a seed ISO (iso9660, volume id cidata).
# The seed carries secrets: the mount point and its parent are 0700 and vfat files are 0600.
# Finding no medium is not an error here: first boot then reports the node "unconfigured".
set -eu
target=${1:-/run/geminik8s/config}
labels=${GEMINIK8S_SEED_LABELS:-CIDATA cidata}
if mountpoint -q "$target"; then exit 0; fi
install -d -m 0700 "$(dirname "$target")" "$target"
for label in $labels; do
  # -c /dev/null: probe the devices now instead of trusting a cache from another boot.
  dev=$(blkid -c /dev/null -l -o device -t "LABEL=$label" || true)
  [ -n "$dev" ] || continue
  type=$(blkid -c /dev/null -o value -s TYPE "$dev" || true)
  case "$type" in
    vfat) opts=ro,nosuid,nodev,noexec,uid=0,gid=0,fmask=0177,dmask=0077 ;;
    iso9660) opts=ro,nosuid,nodev,noexec ;;
    *) echo "geminik8s: seed medium $dev (label $label) has an unexpected filesystem '$type'" >&2; exit 1 ;;
  esac
  mount -t "$type" -o "$opts" "$dev" "$target"
  echo "geminik8s: seed medium $dev ($type, label $label) mounted read-only on $target"
  exit 0
done
echo "geminik8s: no seed medium found (a partition labelled CIDATA or a cidata ISO)"
