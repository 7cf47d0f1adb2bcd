#!/bin/sh
# Grow PERSISTENT (the last partition) to the end of the disk, then its ext4 online.
# Idempotent. On every boot but the first there is nothing to do, and that answer must be
# quick: growpart took 32-122 s under TCG to say NOCHANGE, on the path to first boot.
set -eu
# GEMINIK8S_PERSISTENT_LABEL: tests name a partition no other device carries.
dev=$(blkid -c /dev/null -l -o device -t "PARTLABEL=${GEMINIK8S_PERSISTENT_LABEL:-PERSISTENT}" || true)
[ -n "$dev" ] || { echo "geminik8s: no PERSISTENT partition to grow"; exit 0; }
name=$(basename "$(readlink -f "$dev")")
diskname=$(basename "$(readlink -f "/sys/class/block/$name/..")")
disk=/dev/$diskname
part=$(cat "/sys/class/block/$name/partition")
# Sizes in 512-byte sectors, from sysfs: no tool to start.
start=$(cat "/sys/class/block/$name/start")
size=$(cat "/sys/class/block/$name/size")
total=$(cat "/sys/class/block/$diskname/size")
# GPT keeps 33 sectors at the end and growpart aligns to 1 MiB: closer than that, it is full.
if [ $((total - start - size)) -gt 2048 ]; then
  rc=0
  growpart "$disk" "$part" || rc=$?
  case $rc in
    0) echo "geminik8s: PERSISTENT partition $dev grown to the end of $disk" ;;
    1) ;;
    *) echo "geminik8s: growpart $disk $part failed ($rc)" >&2; exit $rc ;;
  esac
  size=$(cat "/sys/class/block/$name/size")
fi
# The file system follows the partition (also when an earlier boot stopped between the two).
blocks=$(dumpe2fs -h "$dev" 2>/dev/null | sed -n 's/^Block count: *//p')
bsize=$(dumpe2fs -h "$dev" 2>/dev/null | sed -n 's/^Block size: *//p')
if [ -n "$blocks" ] && [ -n "$bsize" ] && [ $((blocks * bsize)) -ge $(((size - 2048) * 512)) ]; then
  echo "geminik8s: PERSISTENT $dev already fills $disk"
  exit 0
fi
resize2fs "$dev"
