#!/bin/sh
# Grow PERSISTENT (the last partition) to the end of the disk, then its ext4 online.
# Idempotent: growpart answers NOCHANGE (exit 1) once it fills the disk.
set -eu
dev=$(blkid -l -o device -t PARTLABEL=PERSISTENT || true)
[ -n "$dev" ] || { echo "geminik8s: no PERSISTENT partition to grow"; exit 0; }
name=$(basename "$(readlink -f "$dev")")
disk=/dev/$(basename "$(readlink -f "/sys/class/block/$name/..")")
part=$(cat "/sys/class/block/$name/partition")
rc=0
growpart "$disk" "$part" || rc=$?
case $rc in
  0) echo "geminik8s: PERSISTENT partition $dev grown to the end of $disk" ;;
  1) ;;
  *) echo "geminik8s: growpart $disk $part failed ($rc)" >&2; exit $rc ;;
esac
resize2fs "$dev"
