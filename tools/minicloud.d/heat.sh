# shellcheck shell=bash
# minicloud: heat-api (:8004) and heat-engine, with the stack user domain
# "heat" (made by keystone-setup.py).

HEAT_CONF=(--config-file "$ETC/heat/heat.conf")

configure_heat() {
    ini "$ETC/heat/heat.conf" <<EOF
[DEFAULT]
use_stderr = true
transport_url = $TRANSPORT
num_engine_workers = 1
graceful_shutdown_timeout = 10
stack_user_domain_name = heat
stack_domain_admin = heat_domain_admin
stack_domain_admin_password = $PW
heat_metadata_server_url = http://$IP:8000
heat_waitcondition_server_url = http://$IP:8000/v1/waitcondition
region_name_for_services = $REGION
[database]
connection = $DB/heat?charset=utf8
[keystone_authtoken]
$(authtoken heat)
[trustee]
auth_type = password
auth_url = http://$IP:5000/v3
username = heat
password = $PW
user_domain_name = Default
[clients_keystone]
auth_uri = http://$IP:5000
[paste_deploy]
api_paste_config = $VENV/etc/heat/api-paste.ini
[oslo_concurrency]
lock_path = $MC/heat/lock
EOF
}

db_sync_heat() {
    "$VENV/bin/heat-manage" "${HEAT_CONF[@]}" db_sync >/dev/null
}

start_heat() {
    uwsgi_app heat-api 8004 heat.wsgi.api -- --pyargv "${HEAT_CONF[*]}"
    spawn heat-engine "$VENV/bin/heat-engine" "${HEAT_CONF[@]}"
}
