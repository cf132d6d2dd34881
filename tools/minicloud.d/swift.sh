# shellcheck shell=bash
# minicloud: OpenStack Swift (:8080, keystone auth) from Debian's packages:
# a proxy, an account, a container and an object server, one device
# (swift/devices/d1), one replica, rings in swift/; memcached for tokens.
# The page service publishes the generations blessed here to it
# ([pageserver] object_store = swift). The proxy listens on every address
# of the host, so that the page services of the hosts the benchmarks
# simulate in network namespaces reach it.

SWIFT_DIR=$MC/swift
SWIFT_PORT=8080
MEMCACHED_PORT=11211
declare -A SWIFT_SERVER_PORTS=([account]=6202 [container]=6201 [object]=6200)
# Processes per server: the proxy and the object server carry the data (a
# process per core of this 2-core machine); 0 runs the server in one process.
declare -A SWIFT_WORKERS=([account]=0 [container]=0 [object]=2 [proxy]=2)

configure_swift() {
    local name
    install -d -m 0755 "$SWIFT_DIR" "$SWIFT_DIR/devices/d1" "$ETC/swift"
    for name in account container object; do
        ini "$ETC/swift/$name-server.conf" <<EOF
[DEFAULT]
bind_ip = $IP
bind_port = ${SWIFT_SERVER_PORTS[$name]}
devices = $SWIFT_DIR/devices
mount_check = false
swift_dir = $SWIFT_DIR
workers = ${SWIFT_WORKERS[$name]}
user = root
log_name = swift-$name
[pipeline:main]
pipeline = $name-server
[app:$name-server]
use = egg:swift#$name
EOF
        if [[ ! -f $SWIFT_DIR/$name.ring.gz ]]; then
            swift-ring-builder "$SWIFT_DIR/$name.builder" create 8 1 1 >/dev/null
            swift-ring-builder "$SWIFT_DIR/$name.builder" add \
                "r1z1-$IP:${SWIFT_SERVER_PORTS[$name]}/d1" 100 >/dev/null
            swift-ring-builder "$SWIFT_DIR/$name.builder" rebalance >/dev/null
        fi
    done
    ini "$ETC/swift/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 0.0.0.0
bind_port = $SWIFT_PORT
swift_dir = $SWIFT_DIR
workers = ${SWIFT_WORKERS[proxy]}
user = root
log_name = swift-proxy
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache authtoken keystoneauth proxy-logging proxy-server
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = http://$IP:5000/v3
auth_url = http://$IP:5000/v3
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = swift
password = $PW
delay_auth_decision = True
memcached_servers = $IP:$MEMCACHED_PORT
[filter:keystoneauth]
use = egg:swift#keystoneauth
operator_roles = admin, member
[filter:cache]
use = egg:swift#memcache
memcache_servers = $IP:$MEMCACHED_PORT
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
EOF
}

pageserver_swift_conf() {  # nova.conf: how the page service reaches Swift
    cat <<EOF
[pageserver_swift]
auth_type = password
auth_url = http://$IP:5000/v3
username = nova
password = $PW
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = $REGION
EOF
}

start_swift() {
    local name
    spawn memcached memcached -u nobody -l "$IP" -p "$MEMCACHED_PORT"
    for name in account container object proxy; do
        spawn "swift-$name" "swift-$name-server" "$ETC/swift/$name-server.conf"
    done
    wait_for swift 60 http_ok "http://$IP:$SWIFT_PORT/healthcheck"
}
