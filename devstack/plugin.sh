#!/bin/bash
# devstack plugin of nova-clonedriver; devstack/settings lists its variables.
#
#   stack pre-install  FUSE 3 (the page service's pyfuse3 builds against it),
#                      qemu-img
#   stack install      the package, non-editable, into nova's Python, and
#                      nova/virt/clonedriver into nova's own package folder
#   stack post-config  nova-compute: CloneDriver, [clone], [pageserver] and
#                      its PKI; nova-scheduler: LiveCloneWeigher
#   stack extra        n-clone-pageserver (as root), example clone flavors
#   unstack            stop n-clone-pageserver, unmount what it left
#   clean              the state dir, the generated PKI, the driver shim
#
# devstack sources this file with `set -o errexit` and its functions
# (iniset, pip_install, run_process, ...) and globals ($NOVA_CONF,
# $STACK_USER, ...) defined.

NOVA_CLONEDRIVER_WEIGHER=nova_clonedriver.scheduler.weights.LiveCloneWeigher

# The Python that runs nova (and that pip_install installs into).
function _nova_clonedriver_python {
    if [[ -x $NOVA_BIN_DIR/python3 ]]; then
        echo "$NOVA_BIN_DIR/python3"
    else
        echo "python$PYTHON3_VERSION"
    fi
}

function install_nova_clonedriver_packages {
    if is_ubuntu; then
        install_package fuse3 libfuse3-dev pkg-config qemu-utils
    elif is_fedora; then
        install_package fuse3 fuse3-devel pkgconf-pkg-config qemu-img
    else
        exit_distro_not_supported "installing FUSE 3 for nova-clonedriver"
    fi
}

function install_nova_clonedriver {
    local requirements python purelib nova_package shim sudo_cmd=()
    # nova and libvirt-python are devstack's (nova from its git tree,
    # libvirt-python under upper-constraints): installing the project's
    # requirements as they are would replace that nova with the release
    # pinned in requirements.txt.
    requirements=$(mktemp)
    grep -v -E '^(nova|libvirt-python)([^A-Za-z0-9._-]|$)' \
        "$NOVA_CLONEDRIVER_DIR/requirements.txt" > "$requirements" || true
    pip_install -r "$requirements"
    rm -f "$requirements"
    # Not editable: nova finds the driver only as nova/virt/clonedriver in
    # its own package folder, which an editable install does not create.
    pip_install --no-deps --force-reinstall "$NOVA_CLONEDRIVER_DIR"

    # devstack installs nova editable (setup_develop): its package folder is
    # $NOVA_DIR/nova, and pip has just put the shim into a site-packages
    # folder nova/ that has no __init__.py. Left there, that folder would
    # hide the real nova from every nova service (Python takes it for a
    # namespace package before setuptools' editable finder is asked), so it
    # goes, and the shim (it only re-exports nova_clonedriver's driver) is
    # copied into nova's real package folder.
    python=$(_nova_clonedriver_python)
    purelib=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    [[ -w $purelib ]] || sudo_cmd=(sudo)
    if [[ -d $purelib/nova && ! -f $purelib/nova/__init__.py ]]; then
        "${sudo_cmd[@]}" rm -rf "$purelib/nova/virt/clonedriver"
        "${sudo_cmd[@]}" rmdir "$purelib/nova/virt" "$purelib/nova" 2>/dev/null || true
    fi
    nova_package=$("$python" -c 'import os, nova; print(os.path.dirname(nova.__file__))') \
        || die $LINENO "$python cannot import nova"
    shim=$nova_package/virt/clonedriver
    sudo_cmd=()
    [[ -w $nova_package/virt ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" install -d -m 0755 "$shim"
    "${sudo_cmd[@]}" install -m 0644 "$NOVA_CLONEDRIVER_DIR/nova/virt/clonedriver/__init__.py" \
        "$shim/__init__.py"
    # On other nodes (n-api, n-sch) the package is there for the flavor
    # extra spec validators and the scheduler weigher.
    if is_service_enabled n-cpu \
            && ! "$python" -c 'from nova.virt.clonedriver import CloneDriver'; then
        die $LINENO "nova cannot load clonedriver.CloneDriver with $python"
    fi
}

# [pageserver] node_name: nova's [DEFAULT] host, whose default is the host
# name; live images record it as their origin host.
function _nova_clonedriver_node_name {
    local name=$NOVA_CLONEDRIVER_NODE_NAME
    [[ -n $name ]] || name=$(iniget "$NOVA_CONF" DEFAULT host)
    [[ -n $name ]] || name=$(hostname)
    echo "$name"
}

# subjectAltName of the node certificate: every name and address peers may
# use to reach this node's page service.
function _nova_clonedriver_san {
    local node=$1 entries=() entry san="" name ip
    for name in "$node" "$(hostname)" "$(hostname -f 2>/dev/null || true)"; do
        [[ -n $name ]] && entries+=("DNS:$name")
    done
    for ip in "${HOST_IP:-}" "${HOST_IPV6:-}" "$(iniget "$NOVA_CONF" DEFAULT my_ip)"; do
        [[ -n $ip ]] && entries+=("IP:$ip")
    done
    for entry in "${entries[@]}"; do
        [[ ",$san," == *",$entry,"* ]] || san+="${san:+,}$entry"
    done
    echo "$san"
}

# Is $1 a certificate of node $3 from the CA $2, valid for a day at least?
function _nova_clonedriver_cert_ok {
    local cert=$1 ca=$2 node=$3
    sudo test -f "$cert" || return 1
    sudo openssl verify -CAfile "$ca" "$cert" >/dev/null 2>&1 || return 1
    sudo openssl x509 -in "$cert" -noout -checkend 86400 >/dev/null || return 1
    [[ "$(sudo openssl x509 -in "$cert" -noout -subject -nameopt RFC2253)" == "subject=CN=$node" ]]
}

function configure_nova_clonedriver_pki {
    local pki=$NOVA_CLONEDRIVER_PKI_DIR node ca_cert ca_key cert key ext csr
    ca_cert=${NOVA_CLONEDRIVER_CA_CERT:-$pki/ca.crt}
    ca_key=${NOVA_CLONEDRIVER_CA_KEY:-$pki/ca.key}
    cert=${NOVA_CLONEDRIVER_TLS_CERT:-$pki/node.crt}
    key=${NOVA_CLONEDRIVER_TLS_KEY:-$pki/node.key}
    if [[ -n $NOVA_CLONEDRIVER_TLS_CERT && -z $NOVA_CLONEDRIVER_TLS_KEY ]]; then
        die $LINENO "NOVA_CLONEDRIVER_TLS_CERT is set but NOVA_CLONEDRIVER_TLS_KEY is not"
    fi
    if [[ -n $NOVA_CLONEDRIVER_CA_CERT && -z $NOVA_CLONEDRIVER_CA_KEY \
          && -z $NOVA_CLONEDRIVER_TLS_CERT ]]; then
        die $LINENO "Set NOVA_CLONEDRIVER_CA_KEY (to sign this node's certificate)" \
            "or NOVA_CLONEDRIVER_TLS_CERT/NOVA_CLONEDRIVER_TLS_KEY"
    fi
    sudo install -d -m 0755 "$pki"

    if [[ -z $NOVA_CLONEDRIVER_CA_CERT ]] && ! sudo test -f "$ca_cert"; then
        echo_summary "Generating a nova-clonedriver CA in $pki"
        sudo openssl req -x509 -new -nodes -days 3650 \
            -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
            -keyout "$ca_key" -out "$ca_cert" \
            -subj "/CN=nova-clonedriver devstack CA $(hostname)" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        sudo chmod 0600 "$ca_key"
        sudo chmod 0644 "$ca_cert"
    fi

    if [[ -z $NOVA_CLONEDRIVER_TLS_CERT ]]; then
        node=$(_nova_clonedriver_node_name)
        if ! _nova_clonedriver_cert_ok "$cert" "$ca_cert" "$node"; then
            echo_summary "Generating the page service certificate of node $node"
            ext=$(mktemp)
            csr=$(mktemp)
            cat > "$ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = $(_nova_clonedriver_san "$node")
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF
            sudo openssl req -new -nodes \
                -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
                -keyout "$key" -out "$csr" -subj "/CN=$node"
            sudo openssl x509 -req -in "$csr" -CA "$ca_cert" -CAkey "$ca_key" \
                -set_serial "0x$(openssl rand -hex 16)" \
                -days "$NOVA_CLONEDRIVER_CERT_DAYS" -extfile "$ext" -out "$cert"
            sudo chmod 0600 "$key"
            sudo chmod 0644 "$cert"
            rm -f "$ext" "$csr"
        fi
        iniset "$NOVA_CONF" pageserver node_name "$node"
    elif [[ -n $NOVA_CLONEDRIVER_NODE_NAME ]]; then
        iniset "$NOVA_CONF" pageserver node_name "$NOVA_CLONEDRIVER_NODE_NAME"
    fi  # else the service takes the CN of the operator's certificate
    iniset "$NOVA_CONF" pageserver tls_cert_file "$cert"
    iniset "$NOVA_CONF" pageserver tls_key_file "$key"
    iniset "$NOVA_CONF" pageserver tls_ca_file "$ca_cert"
}

NOVA_CLONEDRIVER_APPARMOR_LOCAL=/etc/apparmor.d/local/abstractions/libvirt-qemu

# QEMU maps a clone's memory image from the snapshot store by a path on its
# command line (a qemu:commandline memory backend), which libvirt's
# virt-aa-helper does not see: under AppArmor (Ubuntu, Debian) the domain's
# profile must allow the store through the site-local part of libvirt's
# libvirt-qemu abstraction. Disks are in the domain XML and need nothing.
function configure_nova_clonedriver_apparmor {
    local local_rules=$NOVA_CLONEDRIVER_APPARMOR_LOCAL
    if [[ ! -d /sys/kernel/security/apparmor ]] \
            || ! grep -qs "local/abstractions/libvirt-qemu" /etc/apparmor.d/abstractions/libvirt-qemu; then
        return 0
    fi
    unconfigure_nova_clonedriver_apparmor
    sudo tee -a "$local_rules" >/dev/null <<EOF
# BEGIN nova-clonedriver (devstack plugin)
  "$NOVA_CLONEDRIVER_STATE_DIR/" r,
  "$NOVA_CLONEDRIVER_STATE_DIR/**" rwk,
# END nova-clonedriver
EOF
}

function unconfigure_nova_clonedriver_apparmor {
    if [[ -f $NOVA_CLONEDRIVER_APPARMOR_LOCAL ]]; then
        sudo sed -i '/^# BEGIN nova-clonedriver/,/^# END nova-clonedriver/d' \
            "$NOVA_CLONEDRIVER_APPARMOR_LOCAL"
    fi
}

function configure_nova_clonedriver_compute {
    local state=$NOVA_CLONEDRIVER_STATE_DIR
    # The compute options go into $NOVA_CONF, not $NOVA_CPU_CONF: devstack
    # makes nova-cpu.conf only when it starts nova-compute, after this
    # phase, by copying $NOVA_CONF to $NOVA_CPU_CONF (lib/nova,
    # start_nova_compute) and merging local.conf's
    # [[post-config|$NOVA_CPU_CONF]] into it. What this phase wrote into
    # $NOVA_CPU_CONF would be overwritten; this way nova-cpu.conf has it,
    # and local.conf can still override it there.
    iniset "$NOVA_CONF" DEFAULT compute_driver clonedriver.CloneDriver
    # [libvirt] virt_type stays devstack's $LIBVIRT_TYPE: CloneDriver is
    # LibvirtDriver plus live clones.
    iniset "$NOVA_CONF" clone state_dir "$state"
    if [[ -n $NOVA_CLONEDRIVER_MIN_FREE_MEMORY_MIB ]]; then
        iniset "$NOVA_CONF" clone min_free_memory_mib "$NOVA_CLONEDRIVER_MIN_FREE_MEMORY_MIB"
    fi
    # nova-compute runs as $STACK_USER and writes the store; QEMU (another
    # user) only traverses it. Made here so that the page service (root)
    # finds them and does not create them as root.
    sudo install -d -o "$STACK_USER" -m 0711 "$state" "$state/generations" "$state/clones"
    configure_nova_clonedriver_apparmor
    configure_nova_clonedriver_pki
    configure_nova_clonedriver_object_store
}

# [pageserver] object_store: publish generations to devstack's Swift (when
# s-proxy is enabled, unless NOVA_CLONEDRIVER_OBJECT_STORE says otherwise),
# as nova's service user.
function configure_nova_clonedriver_object_store {
    local store=$NOVA_CLONEDRIVER_OBJECT_STORE
    if [[ $store == auto ]]; then
        store=""
        if is_service_enabled s-proxy; then
            store=swift
        fi
    fi
    if [[ -z $store ]]; then
        return 0
    fi
    iniset "$NOVA_CONF" pageserver object_store "$store"
    configure_keystone_authtoken_middleware "$NOVA_CONF" nova pageserver_swift
    iniset "$NOVA_CONF" pageserver_swift region_name "$REGION_NAME"
}

function configure_nova_clonedriver_scheduler {
    local weighers
    weighers=$(iniget "$NOVA_CONF" filter_scheduler weight_classes)
    weighers=${weighers:-nova.scheduler.weights.all_weighers}
    if [[ ",$weighers," != *",$NOVA_CLONEDRIVER_WEIGHER,"* ]]; then
        iniset "$NOVA_CONF" filter_scheduler weight_classes "$weighers,$NOVA_CLONEDRIVER_WEIGHER"
    fi
}

function start_nova_clonedriver_pageserver {
    [[ -e /dev/fuse ]] || sudo modprobe fuse
    # As root: run_process's user argument (its unit gets User=root;
    # devstack refuses "sudo" in the command of a systemd service). The
    # service mounts its FUSE file system with allow_other, so that QEMU
    # (running as libvirt's qemu user) can read remote generations through
    # it, which an unprivileged user may do only with user_allow_other in
    # /etc/fuse.conf; it also reads the node's private key (mode 0600, root).
    run_process n-clone-pageserver \
        "$NOVA_BIN_DIR/nova-clone-pageserver --config-file $NOVA_CPU_CONF" "" root
}

function _nova_clonedriver_flavor {  # name, then extra `flavor create` options
    local name=$1
    shift
    if ! openstack --os-region-name="$REGION_NAME" flavor show "$name" >/dev/null 2>&1; then
        openstack --os-region-name="$REGION_NAME" flavor create \
            --ram "$NOVA_CLONEDRIVER_FLAVOR_RAM" --vcpus "$NOVA_CLONEDRIVER_FLAVOR_VCPUS" \
            --disk "$NOVA_CLONEDRIVER_FLAVOR_DISK" \
            --property trait:CUSTOM_LIVE_CLONE=required "$@" "$name"
    fi
}

# A master flavor and a clone flavor of the same size (a clone must match
# its master's RAM and vCPUs). Both require the trait that CloneDriver hosts
# report; the clone flavor claims only what a clone is expected to write
# (doc/source/nova.rst, "Scheduling and memory").
function create_nova_clonedriver_flavors {
    _nova_clonedriver_flavor "$NOVA_CLONEDRIVER_MASTER_FLAVOR"
    _nova_clonedriver_flavor "$NOVA_CLONEDRIVER_FLAVOR" \
        --property clone:enabled=true \
        --property "resources:MEMORY_MB=$NOVA_CLONEDRIVER_FLAVOR_CLAIM_MB"
}

# The page service's FUSE mount, if one is left (a killed service leaves
# it; a dead one is still listed in /proc/mounts but cannot be stat'ed).
function unmount_nova_clonedriver_pageserver {
    local mount_dir=""
    if [[ -f $NOVA_CPU_CONF ]]; then
        mount_dir=$(iniget "$NOVA_CPU_CONF" pageserver mount_dir)
    fi
    mount_dir=${mount_dir:-$NOVA_CLONEDRIVER_STATE_DIR/remote}
    if awk -v dir="$mount_dir" '$2 == dir {found = 1} END {exit !found}' /proc/mounts; then
        sudo fusermount3 -u -z "$mount_dir" || sudo umount -l "$mount_dir"
    fi
}

function cleanup_nova_clonedriver {
    local pki=$NOVA_CLONEDRIVER_PKI_DIR
    unmount_nova_clonedriver_pageserver
    sudo rm -rf --one-file-system "$NOVA_CLONEDRIVER_STATE_DIR"
    unconfigure_nova_clonedriver_apparmor
    # Only what the plugin generated: files the operator gave stay.
    if [[ -z $NOVA_CLONEDRIVER_CA_CERT ]]; then
        sudo rm -f "$pki/ca.crt" "$pki/ca.key"
    fi
    if [[ -z $NOVA_CLONEDRIVER_TLS_CERT ]]; then
        sudo rm -f "$pki/node.crt" "$pki/node.key"
    fi
    sudo rmdir "$pki" 2>/dev/null || true
    # The shim copied into nova's git tree (nova itself has no clonedriver).
    if [[ -d $NOVA_DIR/.git && -d $NOVA_DIR/nova/virt/clonedriver ]]; then
        sudo rm -rf "$NOVA_DIR/nova/virt/clonedriver"
    fi
}

if [[ "$1" == "stack" ]]; then
    case "$2" in
        pre-install)
            echo_summary "Installing nova-clonedriver's system packages"
            install_nova_clonedriver_packages
            ;;
        install)
            echo_summary "Installing nova-clonedriver"
            install_nova_clonedriver
            ;;
        post-config)
            echo_summary "Configuring nova-clonedriver"
            if is_service_enabled n-cpu; then
                configure_nova_clonedriver_compute
            fi
            if is_service_enabled n-sch; then
                configure_nova_clonedriver_scheduler
            fi
            ;;
        extra)
            if is_service_enabled n-clone-pageserver; then
                if is_service_enabled n-cpu; then
                    echo_summary "Starting nova-clone-pageserver"
                    start_nova_clonedriver_pageserver
                else
                    echo "WARNING: n-clone-pageserver not started: it runs next to n-cpu only"
                fi
            fi
            if is_service_enabled n-api && [[ "$NOVA_CLONEDRIVER_CREATE_FLAVORS" == "True" ]]; then
                echo_summary "Creating nova-clonedriver flavors"
                create_nova_clonedriver_flavors
            fi
            ;;
        test-config)
            # Nothing for tempest: servers that are not clones take
            # LibvirtDriver's path unchanged.
            :
            ;;
    esac
elif [[ "$1" == "unstack" ]]; then
    stop_process n-clone-pageserver
    unmount_nova_clonedriver_pageserver
elif [[ "$1" == "clean" ]]; then
    cleanup_nova_clonedriver
fi
