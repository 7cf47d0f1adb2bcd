#!/bin/sh
# ExecStopPost of geminik8s-agent.service: whatever ended the agent, the VIP leaves with it.
# Usage: release-vip.sh VIPFILE AGENT_BUNDLE AGENT_CONFIG
#
# The agent writes "ADDRESS PREFIX DEVICE" to VIPFILE at its start (an empty file when it manages
# no VIP). Reading it here spares a cold Node.js start, seconds on a slow machine, on every stop
# and reboot. Without the file (the agent stopped before it wrote it) the agent's own release-vip
# reads the seed and does the same.
set -u
file=$1
if [ ! -e "$file" ]; then
	exec /usr/bin/node "$2" release-vip --config "$3"
fi
read -r address prefix device <"$file" || exit 0
[ -n "$address" ] || exit 0
case "$address/$prefix" in
*[!0-9.]*/* | */*[!0-9]* | /* | */)
	echo "release-vip: $file: expected ADDRESS PREFIX DEVICE, found '$address $prefix $device'" >&2
	exit 1
	;;
esac
# The route that refuses connections for a moment after the agent gave the VIP up (vip.ts,
# vipRefusePlan), if the agent ended within that moment. Only ours: proto static. One `ip`,
# whose "No such process" when there is none is no error here.
ip route del local "$address/32" dev "$device" table local proto static 2>/dev/null || true
if ip -o -4 addr show dev "$device" | grep -qF " inet $address/"; then
	exec ip addr del "$address/$prefix" dev "$device"
fi
exit 0
