# shellcheck shell=bash
# minicloud: glance (:9292), the image API with its file store in
# $MC/glance.

configure_glance() {
    install -d "$ETC/glance"
    cp "$VENV/etc/glance/glance-api-paste.ini" "$ETC/glance/glance-api-paste.ini"
    ini "$ETC/glance/glance-api.conf" <<EOF
[DEFAULT]
use_stderr = true
enabled_backends = fs:file
bind_host = $IP
bind_port = 9292
public_endpoint = http://$IP:9292
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = $MC/glance/images
[os_glance_staging_store]
filesystem_store_datadir = $MC/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $MC/glance/tasks
[database]
connection = $DB/glance?charset=utf8
[paste_deploy]
flavor = keystone
config_file = $ETC/glance/glance-api-paste.ini
[keystone_authtoken]
$(authtoken glance)
[oslo_concurrency]
lock_path = $MC/glance/lock
EOF
}

db_sync_glance() {
    "$VENV/bin/glance-manage" --config-file "$ETC/glance/glance-api.conf" db_sync >/dev/null
}

start_glance() {
    uwsgi_app glance 9292 glance.wsgi.api OS_GLANCE_CONFIG_DIR="$ETC/glance"
}
