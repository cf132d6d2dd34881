# shellcheck shell=bash
# minicloud: logging, the processes it starts (one session each, a pid file
# in run/), and writing configuration files. Sourced by tools/minicloud.

log() { printf '%s minicloud: %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes

pid_of() {  # pid_of NAME: its pid if it runs
    local pid
    pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

spawn() {  # spawn NAME CMD...: start CMD in its own session, log and pid file
    local name=$1
    shift
    if pid_of "$name" >/dev/null; then
        return 0
    fi
    log "starting $name"
    setsid "$@" >>"$LOGDIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN/$name.pid"
}

halt() {  # halt NAME: SIGTERM its process group, SIGKILL after 30 s
    local name=$1 pid
    pid=$(pid_of "$name") || { rm -f "$RUN/$name.pid"; return 0; }
    log "stopping $name ($pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not stop: SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # Stragglers of its process group (uwsgi workers, privsep daemons).
    pkill -KILL -g "$pid" 2>/dev/null || true
    rm -f "$RUN/$name.pid"
}

halt_all() {  # halt_all NAME...: halt them all at once
    local name
    for name in "$@"; do
        halt "$name" &
    done
    wait
}

wait_for() {  # wait_for WHAT TIMEOUT CMD...: until CMD succeeds
    local what=$1 timeout=$2 start=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - start > timeout)); then
            die "$what does not answer after ${timeout} s (see $LOGDIR)"
        fi
        sleep 0.5
    done
}

http_ok() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" | grep -q -E '^(2|3|401)'; }

uwsgi_app() {  # uwsgi_app NAME PORT MODULE [ENV=VALUE...] [-- uwsgi options]
    local name=$1 port=$2 module=$3 args=()
    shift 3
    while (($#)); do
        if [[ $1 == -- ]]; then
            shift
            args+=("$@")
            break
        fi
        args+=(--env "$1")
        shift
    done
    spawn "$name" "$VENV/bin/uwsgi" --http-socket "$IP:$port" --module "$module" \
        --master --processes 2 --threads 2 --enable-threads --lazy-apps \
        --die-on-term --need-app --buffer-size 65535 --http-keepalive \
        --http-auto-chunked --http-raw-body --chunked-input-limit 10485760 \
        --add-header "Connection: close" --hook-master-start "unix_signal:15 gracefully_kill_them_all" \
        --worker-reload-mercy 10 --home "$VENV" "${args[@]}"
}

# ------------------------------------------------------------ configuration

ini() {  # ini FILE: write FILE from stdin (the whole file, every start)
    mkdir -p "$(dirname "$1")"
    cat >"$1"
}

authtoken() {  # authtoken USER: a [keystone_authtoken]-like section body
    cat <<EOF
www_authenticate_uri = http://$IP:5000/v3
auth_url = http://$IP:5000/v3
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = $1
password = $PW
region_name = $REGION
EOF
}

client_auth() {  # client_auth USER: authtoken USER, for a client of a service
    authtoken "$1" | grep -v www_authenticate_uri
}
