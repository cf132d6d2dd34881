# shellcheck shell=bash
# minicloud: placement (:8778).

configure_placement() {
    ini "$ETC/placement/placement.conf" <<EOF
[DEFAULT]
use_stderr = true
[api]
auth_strategy = keystone
[placement_database]
connection = $DB/placement?charset=utf8
[keystone_authtoken]
$(authtoken placement)
EOF
}

db_sync_placement() {
    "$VENV/bin/placement-manage" --config-file "$ETC/placement/placement.conf" db sync
}

start_placement() {
    uwsgi_app placement 8778 placement.wsgi.api OS_PLACEMENT_CONFIG_DIR="$ETC/placement"
}
