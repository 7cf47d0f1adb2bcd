#!/usr/bin/env bash
# From a fresh machine to a working pair: host packages, npm dependencies, a demo cluster, its
# node files and seeds, the test image (root tar, A/B raw and qcow2 disks), then `npm run demo`
# on that image: two nodes and a witness in QEMU, the leader powered off, failover and rejoin.
# Usage: bash scripts/quickstart.sh [DIR]   (default ./demo; re-runnable)
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${1:-demo}

bash scripts/install-host-deps.sh
npm ci --no-audit --no-fund

gk() { node bin/geminik8s.js "$@"; }
if [ ! -f "$demo/cluster.yaml" ]; then
  gk init --name site-a --node1-ip 192.168.10.11 --node2-ip 192.168.10.12 \
     --vip 192.168.10.50 --gateway 192.168.10.1 --dns 192.168.10.1 --config-dir "$demo"
fi
gk validate images/edge-amd64.yaml images/edge-arm64.yaml images/test-amd64.yaml "$demo/cluster.yaml"
for node in node1 node2; do
  gk render --image images/edge-amd64.yaml --cluster "$demo/cluster.yaml" --node "$node" \
     --out "$demo/render-$node" --force
done
gk seed --cluster "$demo/cluster.yaml" --node node1 --out "$demo/seed-node1.iso" --format iso --force
gk build --image images/test-amd64.yaml --out "$demo/out"
gk seed --cluster "$demo/cluster.yaml" --node node1 --into "$demo/out/test-0.1.0-amd64.raw" --out "$demo/node1.raw" --force
npm run demo -- --image "$demo/out/test-0.1.0-amd64.raw"
echo
echo "Done. Review $demo/cluster.yaml and the files each node will carry under $demo/render-node1/;"
echo "the test image (root tar, .raw, .qcow2, report) is in $demo/out/, node1's seeded disk is $demo/node1.raw."
echo "npm run demo ran the pair on its own copies of the image and removed them."
