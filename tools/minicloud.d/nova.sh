# shellcheck shell=bash
# minicloud: nova 34.0.0 (this checkout's driver installed into it):
# nova-api (:8774), nova-api-metadata (:8775), nova-conductor, nova-scheduler (with LiveCloneWeigher)
# and nova-compute with CloneDriver on qemu:///system, domains named
# mc-%08x. One nova.conf for every nova process; nova-db.conf, the
# databases, for every one but nova-compute (which has none: it complains
# of any DB access it is configured for).

NOVA_CONF=(--config-file "$ETC/nova/nova.conf")
NOVA_DB_CONF=("${NOVA_CONF[@]}" --config-file "$ETC/nova/nova-db.conf")

nova_manage() { "$VENV/bin/nova-manage" "${NOVA_DB_CONF[@]}" "$@"; }

configure_nova() {
    install -d "$ETC/nova"
    cp "$VENV/etc/nova/api-paste.ini" "$ETC/nova/api-paste.ini"
    {
        nova_conf_api
        nova_conf_compute
        pageserver_conf
        pageserver_swift_conf
        nova_conf_host
    } | ini "$ETC/nova/nova.conf"
    ini "$ETC/nova/nova-db.conf" <<EOF
[api_database]
connection = $DB/nova_api?charset=utf8
[database]
connection = $DB/nova_cell1?charset=utf8
EOF
}

nova_conf_api() {  # nova.conf: [DEFAULT], the API and the services it uses
    cat <<EOF
[DEFAULT]
use_stderr = true
transport_url = $TRANSPORT
my_ip = $IP
state_path = $MC/nova
instances_path = $MC/nova/instances
instance_name_template = ${DOMAIN_PREFIX}%08x
compute_driver = clonedriver.CloneDriver
graceful_shutdown_timeout = 10
# Clones share their master's memory; TCG guests idle on 2 cores.
cpu_allocation_ratio = 32.0
ram_allocation_ratio = 4.0
reserved_host_memory_mb = 1024
[wsgi]
api_paste_config = $ETC/nova/api-paste.ini
[api]
auth_strategy = keystone
[keystone_authtoken]
$(authtoken nova)
[placement]
$(client_auth nova)
[neutron]
$(client_auth nova)
service_metadata_proxy = true
metadata_proxy_shared_secret = $PW
[glance]
region_name = $REGION
[service_user]
send_service_user_token = true
$(client_auth nova)
EOF
}

nova_conf_compute() {  # nova.conf: libvirt and CloneDriver's [clone]
    cat <<EOF
[libvirt]
virt_type = qemu
connection_uri = qemu:///system
[clone]
state_dir = $MC/nova/clones
min_free_memory_mib = 1024
EOF
}

nova_conf_host() {  # nova.conf: the scheduler, locks, privsep, quotas
    cat <<EOF
[filter_scheduler]
weight_classes = nova.scheduler.weights.all_weighers,nova_clonedriver.scheduler.weights.LiveCloneWeigher
[scheduler]
discover_hosts_in_cells_interval = 10
[oslo_concurrency]
lock_path = $MC/nova/lock
[vnc]
enabled = false
[nova_sys_admin]
helper_command = $VENV/bin/privsep-helper --config-file $ETC/nova/nova.conf
[privsep_osbrick]
helper_command = $VENV/bin/privsep-helper --config-file $ETC/nova/nova.conf
[vif_plug_ovs_privileged]
helper_command = $VENV/bin/privsep-helper --config-file $ETC/nova/nova.conf
[os_vif_privileged]
helper_command = $VENV/bin/privsep-helper --config-file $ETC/nova/nova.conf
[os_vif_ovs]
ovsdb_connection = unix:$OVS_DB_SOCK
[image_cache]
manager_interval = 60
[quota]
# The default quota (10 instances, 20 cores) is below a cluster of clones.
instances = 100
cores = 200
ram = 204800
EOF
}

db_sync_nova() {  # the API and cell databases, cell0 and cell1 mapped
    nova_manage api_db sync
    if ! nova_manage cell_v2 list_cells | grep -q ' cell0 '; then
        nova_manage cell_v2 map_cell0 \
            --database_connection "$DB/nova_cell0?charset=utf8"
    fi
    if ! nova_manage cell_v2 list_cells | grep -q ' cell1 '; then
        nova_manage cell_v2 create_cell --name cell1
    fi
    nova_manage db sync
}

start_nova() {  # the page service before nova-compute, whose driver uses it
    local n=$VENV/bin
    uwsgi_app nova-api 8774 nova.wsgi.osapi_compute OS_NOVA_CONFIG_DIR="$ETC/nova" \
        "OS_NOVA_CONFIG_FILES=api-paste.ini;nova.conf;nova-db.conf"
    # What neutron's metadata agent asks for the guests (169.254.169.254).
    uwsgi_app nova-api-metadata "$NOVA_METADATA_PORT" nova.wsgi.metadata \
        OS_NOVA_CONFIG_DIR="$ETC/nova" "OS_NOVA_CONFIG_FILES=api-paste.ini;nova.conf;nova-db.conf"
    spawn nova-conductor "$n/nova-conductor" "${NOVA_DB_CONF[@]}"
    spawn nova-scheduler "$n/nova-scheduler" "${NOVA_DB_CONF[@]}"
    start_pageserver
    spawn nova-compute env PATH="$n:$PATH" "$n/nova-compute" "${NOVA_CONF[@]}"
}

# nova-compute refuses its very first start when the hypervisor already has
# domains (_sanity_check_new_host: "My hypervisor has existing instances,
# but I appear to be a new service in this database"), a guard against a
# compute pointed at the wrong database. This host's libvirtd is shared with
# other users' domains, none of them nova's, so the cloud registers its
# compute service the way that first start would (its service record, and
# the node identity file <state_path>/compute_id) before starting it: nova
# then starts as on any later day. Nothing else in nova looks at domains
# that are not in its database.
register_compute() {
    [[ -f $MC/nova/compute_id ]] && return 0
    log "registering the nova-compute service of $(hostname)"
    "$VENV/bin/python" "$PARTS/register-compute.py" "${NOVA_DB_CONF[@]}"
}

our_domains() {  # the cloud's libvirt domains (instance_name_template)
    virsh -c qemu:///system list --all --name 2>/dev/null | grep "^$DOMAIN_PREFIX" || true
}
