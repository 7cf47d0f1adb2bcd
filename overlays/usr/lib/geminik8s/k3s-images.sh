#!/bin/sh
# geminik8s: hand K3s the air-gap image archives the read-only root ships. K3s imports every
# archive in its agent images directory, which lives on the persistent partition; the archives
# themselves stay in the slot (an upgrade brings the ones that match its K3s). Each archive is
# bind-mounted read-only onto a file of the same name there: a regular file to K3s, no copy,
# and no symlink for K3s's directory walk to judge. An existing .cache.json opts in to K3s's
# import cache (K3s 1.33.1 and later): an archive of unchanged size and mtime is not imported
# again at every start.
set -eu
src=${GEMINIK8S_K3S_IMAGES_SRC:-/usr/share/geminik8s/k3s-images}
dst=${GEMINIK8S_K3S_IMAGES_DIR:-/var/lib/rancher/k3s/agent/images}
mkdir -p "$dst"
[ -e "$dst/.cache.json" ] || : >"$dst/.cache.json"
n=0
for f in "$src"/*; do
  [ -f "$f" ] || continue
  t="$dst/${f##*/}"
  if mountpoint -q "$t"; then
    umount "$t"
  fi
  [ -e "$t" ] || : >"$t"
  mount --bind "$f" "$t"
  mount -o remount,bind,ro "$t"
  n=$((n + 1))
done
echo "geminik8s: $n K3s air-gap image archive(s) from $src in $dst"
