# shellcheck shell=bash
# minicloud: nova-clone-pageserver, mutual TLS on 127.0.0.1:18797 and
# metrics on :19798: its CA and node certificate (pki/, made once), its
# section of nova.conf, and the FUSE mount of remote pages nova-compute
# uses.

configure_pki() {
    local pki=$MC/pki node
    node=$(hostname)
    mkdir -p "$pki"
    if [[ ! -f $pki/ca.crt ]]; then
        openssl req -x509 -new -nodes -days 3650 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj "/CN=minicloud CA $node" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    fi
    if [[ ! -f $pki/node.crt ]]; then
        cat >"$pki/node.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:$node, DNS:localhost, IP:$IP
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
        openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout "$pki/node.key" -out "$pki/node.csr" -subj "/CN=$node" 2>/dev/null
        openssl x509 -req -in "$pki/node.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
            -set_serial "0x$(openssl rand -hex 16)" -days 825 -extfile "$pki/node.ext" \
            -out "$pki/node.crt" 2>/dev/null
    fi
    chmod 0600 "$pki/ca.key" "$pki/node.key"
}

pageserver_conf() {  # nova.conf's [pageserver]
    cat <<EOF
[pageserver]
node_name = $(hostname)
listen_host = $IP
listen_port = $PAGESERVER_PORT
advertise_address = $IP:$PAGESERVER_PORT
metrics_port = $PAGESERVER_METRICS_PORT
tls_cert_file = $MC/pki/node.crt
tls_key_file = $MC/pki/node.key
tls_ca_file = $MC/pki/ca.crt
object_store = swift
EOF
}

start_pageserver() {
    [[ -e /dev/fuse ]] || modprobe fuse || true
    spawn nova-clone-pageserver "$VENV/bin/nova-clone-pageserver" "${NOVA_CONF[@]}"
}

unmount_pageserver() {
    local dir=$MC/nova/clones/remote
    if awk -v d="$dir" '$2 == d {f = 1} END {exit !f}' /proc/mounts; then
        fusermount3 -u -z "$dir" 2>/dev/null || umount -l "$dir" || true
    fi
}
