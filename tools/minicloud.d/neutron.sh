# shellcheck shell=bash
# minicloud: neutron (:9696), the API and ML2 with no L2 agent (servers
# have no ports: see doc/source/minicloud.rst).

# Every neutron command reads both.
NEUTRON_CONF=(--config-file "$ETC/neutron/neutron.conf"
              --config-file "$ETC/neutron/plugins/ml2/ml2_conf.ini")

configure_neutron() {
    ini "$ETC/neutron/neutron.conf" <<EOF
[DEFAULT]
use_stderr = true
core_plugin = ml2
service_plugins = router,port_forwarding
auth_strategy = keystone
transport_url = $TRANSPORT
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
api_paste_config = $VENV/etc/neutron/api-paste.ini
state_path = $MC/neutron
[database]
connection = $DB/neutron?charset=utf8
[keystone_authtoken]
$(authtoken neutron)
[oslo_concurrency]
lock_path = $MC/neutron/lock
[agent]
root_helper =
EOF
    configure_neutron_api
    ini "$ETC/neutron/plugins/ml2/ml2_conf.ini" <<EOF
[ml2]
type_drivers = flat
tenant_network_types =
mechanism_drivers =
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
EOF
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

db_sync_neutron() {
    "$VENV/bin/neutron-db-manage" "${NEUTRON_CONF[@]}" upgrade heads >/dev/null
}

start_neutron() {
    uwsgi_app neutron 9696 minicloud_neutron_api -- --pythonpath "$ETC/neutron" \
        --pyargv "${NEUTRON_CONF[*]}"
}
