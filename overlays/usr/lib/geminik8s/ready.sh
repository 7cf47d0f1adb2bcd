#!/bin/sh
# Print one line of boot facts on the console: the QEMU harness and operators wait for it.
slot=$(sed -n 's/.*geminik8s\.slot=\([AB]\).*/\1/p' /proc/cmdline)
role=unconfigured
if [ -r /var/lib/geminik8s/hostmeta.json ]; then
  role=$(sed -n 's/.*"role" *: *"\([a-z]*\)".*/\1/p' /var/lib/geminik8s/hostmeta.json)
fi
rootmode=$(findmnt -no OPTIONS / | tr ',' '\n' | grep -xE 'ro|rw' | head -n1)
etc=$(findmnt -no FSTYPE /etc)
# Counted on the persistent partition: it grows by one per boot only if that partition persists.
boots=$(( $(cat /var/lib/geminik8s/boots 2>/dev/null || echo 0) + 1 ))
echo "$boots" > /var/lib/geminik8s/boots 2>/dev/null && sync /var/lib/geminik8s/boots || boots=unwritable
uptime=$(cut -d" " -f1 /proc/uptime)
persist=$(findmnt -no SOURCE,SIZE /var/lib/geminik8s 2>/dev/null | tr -s ' ' ':')
# On a line of its own: a getty's login prompt may be on the console, without its newline yet.
printf '\n'
echo "GEMINIK8S-READY slot=${slot:-?} role=${role:-?} root=${rootmode:-?} etc=${etc:-?} boots=${boots} persistent=${persist:-none} uptime=${uptime}"
