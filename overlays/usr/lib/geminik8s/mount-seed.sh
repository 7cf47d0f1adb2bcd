#!/bin/sh
# Mount the node seed medium read-only where first boot (in the agent) reads it: the config
# partition (vfat, label CIDATA) or a seed ISO (iso9660, volume id cidata).
# Several media may carry the label (a generic image's config partition with no seed, plus
# a seed ISO): the first one that holds geminik8s/seed.yaml wins; failing that, the first one.
# The seed carries secrets: the mount point and its parent are 0700 and vfat files are 0600.
# Finding no medium is not an error here: first boot then reports the node "unconfigured".
set -eu
target=${1:-/run/geminik8s/config}
labels=${GEMINIK8S_SEED_LABELS:-CIDATA cidata}
# /proc/mounts rather than mountpoint(1): the initramfs, which runs this too, has no mountpoint.
if grep -qs " $target " /proc/mounts; then exit 0; fi
install -d -m 0700 "$(dirname "$target")" "$target"

mount_medium() {
  type=$(blkid -c /dev/null -o value -s TYPE "$1" || true)
  case "$type" in
    vfat) opts=ro,nosuid,nodev,noexec,uid=0,gid=0,fmask=0177,dmask=0077 ;;
    iso9660) opts=ro,nosuid,nodev,noexec ;;
    *) echo "geminik8s: seed medium $1 has an unexpected filesystem '$type'" >&2; return 1 ;;
  esac
  mount -t "$type" -o "$opts" "$1" "$target" && echo "geminik8s: seed medium $1 ($type) mounted read-only on $target"
}

first=""
for label in $labels; do
  # -c /dev/null: probe the devices now instead of trusting a cache from another boot.
  for dev in $(blkid -c /dev/null -o device -t "LABEL=$label" || true); do
    [ -n "$first" ] || first=$dev
    mount_medium "$dev" >/dev/null || continue
    if [ -f "$target/geminik8s/seed.yaml" ]; then
      echo "geminik8s: seed medium $dev (label $label) mounted read-only on $target"
      exit 0
    fi
    umount "$target"
  done
done
if [ -n "$first" ]; then
  mount_medium "$first"
  exit $?
fi
echo "geminik8s: no seed medium found (a partition labelled CIDATA or a cidata ISO)"
