#!/bin/sh
# GET /cgi-bin/identity: who this guest is, as JSON: hostname, IPv4
# addresses, NICs (name and MAC), boot id, 16 bytes read from /dev/urandom now, and the wall clock
# (the host compares clones' answers with each other and with its own clock).
addresses=$(ip -4 -o addr show scope global | awk '{split($4, a, "/"); printf "%s\"%s\"", sep, a[1]; sep=","}')
nics=$(for path in /sys/class/net/*; do
    name=${path##*/}
    [ "$name" = lo ] && continue
    printf '%s{"name": "%s", "mac": "%s"}' "$sep" "$name" "$(cat "$path/address")"
    sep=,
done)
printf 'Content-Type: application/json\r\n\r\n'
printf '{"hostname": "%s", "ipv4": [%s], "nics": [%s], "boot_id": "%s", "random": "%s", "time_s": %s, "machine_id": "%s"}\n' \
    "$(hostname)" "$addresses" "$nics" "$(cat /proc/sys/kernel/random/boot_id)" \
    "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" "$(date +%s.%N)" "$(cat /etc/machine-id)"
