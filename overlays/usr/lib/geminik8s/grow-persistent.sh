#!/bin/sh
# Grow PERSISTENT (the last partition) to the end of the disk, then its ext4 online.
# Idempotent. On every boot but the first there is nothing to do, and that answer must be
# quick: it sits before first boot and the agent. growpart took 32-122 s under TCG to say
# NOCHANGE; blkid and dumpe2fs, started from a cold root, took 15 s on a loaded reboot.
# Usage: grow-persistent.sh [MOUNTPOINT]. With the mount point of PERSISTENT, the device comes
# from the mount table and the sizes found to fill the disk are kept in MOUNTPOINT/.grown: a
# later boot whose sizes are the same answers with shell builtins alone, no program started.
set -eu
mnt=${1:-}
dev=
if [ -n "$mnt" ]; then
  while read -r source target _rest; do
    if [ "$target" = "$mnt" ]; then dev=$source; fi
  done < /proc/self/mounts
fi
if [ -z "$dev" ]; then
  # GEMINIK8S_PERSISTENT_LABEL: tests name a partition no other device carries.
  dev=$(blkid -c /dev/null -l -o device -t "PARTLABEL=${GEMINIK8S_PERSISTENT_LABEL:-PERSISTENT}" || true)
  mnt=
fi
[ -n "$dev" ] || { echo "geminik8s: no PERSISTENT partition to grow"; exit 0; }
case $dev in
  /dev/*) ;;
  *) echo "geminik8s: PERSISTENT is mounted from $dev, not a block device: nothing to grow"; exit 0 ;;
esac
# /dev/NAME, or a link to it (by-label, by-partlabel): sysfs knows the kernel's name.
if [ -L "$dev" ]; then dev=$(readlink -f "$dev"); fi
name=${dev#/dev/}
[ -e "/sys/class/block/$name/partition" ] || { echo "geminik8s: $dev is not a partition: nothing to grow"; exit 0; }
# The disk is the partition's parent directory in sysfs.
parent=$(cd -P "/sys/class/block/$name/.." && pwd -P)
diskname=${parent##*/}
disk=/dev/$diskname
# Sizes in 512-byte sectors, from sysfs, with the shell's own read.
read -r part < "/sys/class/block/$name/partition"
read -r start < "/sys/class/block/$name/start"
read -r size < "/sys/class/block/$name/size"
read -r total < "/sys/class/block/$diskname/size"
stamp=${mnt:+$mnt/.grown}
sizes="$dev $start $size $total"
if [ -n "$stamp" ] && [ -r "$stamp" ]; then
  read -r grown < "$stamp" || grown=
  if [ "$grown" = "$sizes" ]; then
    echo "geminik8s: PERSISTENT $dev already fills $disk (unchanged since $stamp)"
    exit 0
  fi
fi
remember() {
  [ -n "$stamp" ] || return 0
  # Written whole, then renamed: a crash leaves the old answer or none, never half of one.
  printf '%s\n' "$dev $start $size $total" > "$stamp.tmp" && mv -f "$stamp.tmp" "$stamp" || rm -f "$stamp.tmp"
}
# GPT keeps 33 sectors at the end and growpart aligns to 1 MiB: closer than that, it is full.
if [ $((total - start - size)) -gt 2048 ]; then
  rc=0
  growpart "$disk" "$part" || rc=$?
  case $rc in
    0) echo "geminik8s: PERSISTENT partition $dev grown to the end of $disk" ;;
    1) ;;
    *) echo "geminik8s: growpart $disk $part failed ($rc)" >&2; exit $rc ;;
  esac
  read -r size < "/sys/class/block/$name/size"
fi
# The file system follows the partition (also when an earlier boot stopped between the two).
super=$(dumpe2fs -h "$dev" 2>/dev/null || true)
blocks=$(printf '%s\n' "$super" | sed -n 's/^Block count: *//p')
bsize=$(printf '%s\n' "$super" | sed -n 's/^Block size: *//p')
if [ -n "$blocks" ] && [ -n "$bsize" ] && [ $((blocks * bsize)) -ge $(((size - 2048) * 512)) ]; then
  echo "geminik8s: PERSISTENT $dev already fills $disk"
  remember
  exit 0
fi
resize2fs "$dev"
remember
