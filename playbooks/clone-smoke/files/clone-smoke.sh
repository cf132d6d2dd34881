#!/bin/bash
# Smoke test of nova-clonedriver on a devstack (run as a user with admin
# credentials, e.g. OS_CLOUD=devstack-admin; playbooks/clone-smoke/run.yaml
# runs it in the devstack job): boot a master from the cirros image, bless
# it into a live image, launch clones of it with one request and check that
# every clone goes ACTIVE and its console shows the master's heartbeat
# carrying on.
#
# The master runs a heartbeat on its serial console (a user-data script on a
# config drive), like the test guest's clone agent: a clone restored from the
# master's memory keeps printing it, with numbers that go on from the
# master's, into its own console log.
set -euo pipefail

export OS_CLOUD=${OS_CLOUD:-devstack-admin}
prefix=${CLONE_SMOKE_PREFIX:-clone-smoke}
clones=${CLONE_SMOKE_CLONES:-4}
flavor=${CLONE_SMOKE_FLAVOR:-clone.small}
master_flavor=${CLONE_SMOKE_MASTER_FLAVOR:-clone.master.small}
timeout_s=${CLONE_SMOKE_TIMEOUT_S:-900}
image=${CLONE_SMOKE_IMAGE:-}
if [[ -z $image ]]; then
    image=$(openstack image list --status active -f value -c Name | grep -m1 '^cirros' || true)
fi
[[ -n $image ]] || { echo "clone-smoke: no cirros image (set CLONE_SMOKE_IMAGE)" >&2; exit 1; }

log() { echo "clone-smoke: $*"; }

# wait_for <what> <command...>: run the command every 5 s until it succeeds.
wait_for() {
    local what=$1 deadline=$((SECONDS + timeout_s))
    shift
    until "$@"; do
        if ((SECONDS > deadline)); then
            log "timed out after ${timeout_s} s waiting for $what"
            return 1
        fi
        sleep 5
    done
}

status_is() {  # <server> <status>: fails at once (exit) if the server is ERROR
    local status
    status=$(openstack server show -f value -c status "$1")
    if [[ $status == ERROR ]]; then
        log "server $1 is ERROR: $(openstack server show -f value -c fault "$1")"
        exit 1
    fi
    [[ $status == "$2" ]]
}

heartbeats() {  # <server>: the heartbeat numbers in its console log
    openstack console log show "$1" 2>/dev/null | sed -n 's/.*clone-smoke hb=\([0-9][0-9]*\).*/\1/p'
}

has_heartbeat() {
    [[ -n "$(heartbeats "$1")" ]]
}

userdata=$(mktemp)
passed=false
finish() {
    local server
    rm -f "$userdata"
    "$passed" && return
    log "FAILED; the servers and their console logs follow"
    for server in $(openstack server list --name "^$prefix-" -f value -c ID); do
        openstack server show "$server" || true
        openstack console log show --lines 40 "$server" || true
    done
}
trap finish EXIT
cat > "$userdata" <<'SCRIPT'
#!/bin/sh
# clone-smoke heartbeat on the serial console, once a second
(
    n=0
    while :; do
        n=$((n + 1))
        echo "clone-smoke hb=$n" > /dev/ttyS0
        sleep 1
    done
) < /dev/null > /dev/null 2>&1 &
SCRIPT

log "booting master $prefix-master ($image, $master_flavor)"
openstack server create --image "$image" --flavor "$master_flavor" --nic none \
    --config-drive true --user-data "$userdata" "$prefix-master" >/dev/null
wait_for "master ACTIVE" status_is "$prefix-master" ACTIVE
wait_for "the master's heartbeat" has_heartbeat "$prefix-master"
log "master beats: hb=$(heartbeats "$prefix-master" | tail -1)"

log "blessing it into live image $prefix-live"
openstack server image create --property clone_live=true --name "$prefix-live" \
    --wait "$prefix-master" >/dev/null
master_hb=$(heartbeats "$prefix-master" | tail -1)
openstack image show -f value -c properties "$prefix-live"
if ! openstack image show -f json -c properties "$prefix-live" | grep -q clone_generation; then
    log "image $prefix-live has no clone_generation: not a live image"
    false
fi

log "launching $clones clones ($flavor)"
openstack server create --image "$prefix-live" --flavor "$flavor" --nic none \
    --min "$clones" --max "$clones" "$prefix-clone" >/dev/null
mapfile -t clone_ids < <(openstack server list --name "^$prefix-clone" -f value -c ID)
if ((${#clone_ids[@]} != clones)); then
    log "expected $clones clones, nova lists ${#clone_ids[@]}"
    false
fi
for id in "${clone_ids[@]}"; do
    wait_for "clone $id ACTIVE" status_is "$id" ACTIVE
done
for id in "${clone_ids[@]}"; do
    wait_for "clone $id's heartbeat" has_heartbeat "$id"
    first=$(heartbeats "$id" | head -1)
    log "clone $id: ACTIVE, first hb=$first (master at hb=$master_hb after the bless)"
    # A clone goes on from the master's count; a guest that booted afresh
    # would start at 1.
    if ((first <= 1)); then
        log "clone $id starts counting at $first: it booted, it is no clone"
        false
    fi
done

log "deleting the clones, the live image and the master"
openstack server delete --wait "${clone_ids[@]}"
openstack image delete "$prefix-live"
openstack server delete --wait "$prefix-master"
passed=true
log "$clones clones ACTIVE with heartbeats: passed"
