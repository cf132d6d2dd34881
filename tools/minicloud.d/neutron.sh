# shellcheck shell=bash
# minicloud: neutron (:9696), the API with ML2 under uwsgi, its RPC server
# (what the agents talk to over the message queue; the API under uwsgi
# runs no RPC workers) and periodic workers, and its agents on this host:
# the Open vSwitch agent (on the userspace datapath of openvswitch.sh;
# security groups by its own firewall), the DHCP agent
# (dnsmasq in a namespace qdhcp-<network> per network, which also answers
# on the metadata address 169.254.169.254 through haproxy) and the metadata
# agent, which takes those requests on to nova's metadata API. Tenant
# networks are VLANs of physnet1 on br-phys.

NEUTRON_ML2_INI=$ETC/neutron/plugins/ml2/ml2_conf.ini
# Every neutron command reads both; each agent its own file as well.
NEUTRON_CONF=(--config-file "$ETC/neutron/neutron.conf" --config-file "$NEUTRON_ML2_INI")
NEUTRON_SERVERS=(neutron-rpc-server neutron-periodic-workers)
NEUTRON_AGENTS=(neutron-openvswitch-agent neutron-dhcp-agent neutron-metadata-agent)
# The privsep contexts of neutron's agents (neutron/privileged): each would
# start its helper as `sudo privsep-helper` unless told otherwise; the
# cloud runs as root, without sudo.
NEUTRON_PRIVSEP_SECTIONS=(privsep privsep_dhcp_release privsep_ovs_vsctl privsep_link
                          privsep_namespace privsep_conntrack)

configure_neutron() {
    ini "$ETC/neutron/neutron.conf" <<EOF
[DEFAULT]
use_stderr = true
core_plugin = ml2
service_plugins = router,port_forwarding
auth_strategy = keystone
transport_url = $TRANSPORT
# nova waits for network-vif-plugged before it starts a server it boots.
notify_nova_on_port_status_changes = true
notify_nova_on_port_data_changes = true
dhcp_agents_per_network = 1
api_paste_config = $VENV/etc/neutron/api-paste.ini
state_path = $MC/neutron
[database]
connection = $DB/neutron?charset=utf8
[keystone_authtoken]
$(authtoken neutron)
[nova]
$(client_auth nova)
[oslo_concurrency]
lock_path = $MC/neutron/lock
[agent]
root_helper =
EOF
    configure_neutron_api
    ini "$NEUTRON_ML2_INI" <<EOF
[ml2]
type_drivers = flat,vlan
tenant_network_types = vlan
mechanism_drivers = openvswitch
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
[ml2_type_vlan]
network_vlan_ranges = physnet1:100:199
EOF
    configure_neutron_agents
}

# neutron 29's GET /v2.0/ports names Port.port_forwardings, a backref
# that SQLAlchemy (2.1 here) only adds when the mappers are configured,
# which the first other query of a worker does: a worker whose first
# request lists ports answers 500 (nova's first call is such a list).
configure_neutron_api() {  # the API's WSGI module, with the mappers configured at load
    ini "$ETC/neutron/minicloud_neutron_api.py" <<EOF
from neutron.wsgi.api import application  # noqa: F401
from sqlalchemy import orm

orm.configure_mappers()
EOF
}

configure_neutron_agents() {  # an .ini per agent
    neutron_agent_ini openvswitch_agent <<EOF
[ovs]
integration_bridge = br-int
datapath_type = netdev
bridge_mappings = physnet1:$OVS_PHYSICAL_BRIDGE
ovsdb_connection = unix:$OVS_DB_SOCK
[agent]
tunnel_types =
[securitygroup]
firewall_driver = openvswitch
enable_security_group = true
EOF
    # A veth pair into each namespace (ovs_use_veth), whose host end
    # ovs-vswitchd serves like any other port (the default, an internal
    # port moved into the namespace, is a tap of ovs-vswitchd's own).
    neutron_agent_ini dhcp_agent <<EOF
[DEFAULT]
interface_driver = openvswitch
ovs_use_veth = true
enable_isolated_metadata = true
force_metadata = true
[ovs]
ovsdb_connection = unix:$OVS_DB_SOCK
EOF
    neutron_agent_ini metadata_agent <<EOF
[DEFAULT]
nova_metadata_host = $IP
nova_metadata_port = $NOVA_METADATA_PORT
metadata_proxy_shared_secret = $PW
metadata_workers = 1
EOF
}

neutron_agent_ini() {  # neutron_agent_ini NAME: etc/neutron/NAME.ini from stdin, and privsep
    local file=$ETC/neutron/$1.ini section
    {
        cat
        for section in "${NEUTRON_PRIVSEP_SECTIONS[@]}"; do
            printf '[%s]\nhelper_command = %s/bin/privsep-helper %s --config-file %s\n' \
                "$section" "$VENV" "${NEUTRON_CONF[*]}" "$file"
        done
    } | ini "$file"
}

db_sync_neutron() {
    "$VENV/bin/neutron-db-manage" "${NEUTRON_CONF[@]}" upgrade heads >/dev/null
}

start_neutron() {  # the API and its workers, Open vSwitch, then the agents
    local server agent ini
    uwsgi_app neutron 9696 minicloud_neutron_api -- --pythonpath "$ETC/neutron" \
        --pyargv "${NEUTRON_CONF[*]}"
    for server in "${NEUTRON_SERVERS[@]}"; do
        spawn "$server" "$VENV/bin/$server" "${NEUTRON_CONF[@]}"
    done
    start_ovs
    for agent in "${NEUTRON_AGENTS[@]}"; do
        ini=${agent#neutron-}
        # PATH: privsep-helper and neutron's own helpers are in the venv.
        spawn "$agent" env PATH="$VENV/bin:$PATH" "$VENV/bin/$agent" "${NEUTRON_CONF[@]}" \
            --config-file "$ETC/neutron/${ini//-/_}.ini"
    done
}

stop_neutron_helpers() {  # what the DHCP agent started: dnsmasq and haproxy
    local pidfile pid
    # Each daemonizes into its own session, out of reach of halt's group.
    while IFS= read -r -d '' pidfile; do
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        if [[ $pid =~ ^[0-9]+$ ]]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done < <(find "$MC/neutron" \( -name pid -o -name '*.pid' \) -type f -print0 2>/dev/null)
}

remove_neutron_namespaces() {  # the DHCP agent's namespaces (for clean)
    local ns
    for ns in $(ip netns list | awk '/^qdhcp-/ {print $1}'); do
        ip netns delete "$ns"
    done
}
