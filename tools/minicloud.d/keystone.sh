# shellcheck shell=bash
# minicloud: keystone (:5000, fernet tokens): its configuration and schema,
# the bootstrap (admin and keystone's own endpoints), then every other
# service's user, service and endpoints (keystone-setup.py), and the
# admin's openrc for the CLI.

keystone_manage() { "$VENV/bin/keystone-manage" --config-file "$ETC/keystone/keystone.conf" "$@"; }

configure_keystone() {
    ini "$ETC/keystone/keystone.conf" <<EOF
[DEFAULT]
use_stderr = true
[database]
connection = $DB/keystone?charset=utf8
[token]
provider = fernet
[fernet_tokens]
key_repository = $ETC/keystone/fernet-keys
[credential]
key_repository = $ETC/keystone/credential-keys
EOF
}

configure_openrc() {  # the admin's credentials, for the CLI
    ini "$ETC/openrc" <<EOF
# minicloud admin credentials: source $ETC/openrc
export OS_AUTH_URL=http://$IP:5000/v3
export OS_IDENTITY_API_VERSION=3
export OS_USERNAME=admin
export OS_PASSWORD=$PW
export OS_PROJECT_NAME=admin
export OS_USER_DOMAIN_NAME=Default
export OS_PROJECT_DOMAIN_NAME=Default
export OS_REGION_NAME=$REGION
export OS_COMPUTE_API_VERSION=2.95
export PATH=$VENV/bin:\$PATH
EOF
}

db_sync_keystone() {  # the schema, its keys, the admin and its endpoints
    local url=http://$IP:5000/v3/
    keystone_manage db_sync
    keystone_manage fernet_setup --keystone-user root --keystone-group root
    keystone_manage credential_setup --keystone-user root --keystone-group root
    keystone_manage bootstrap --bootstrap-password "$PW" --bootstrap-region-id "$REGION" \
        --bootstrap-admin-url "$url" --bootstrap-public-url "$url" --bootstrap-internal-url "$url"
}

start_keystone() {  # and wait: the others' setup needs it
    uwsgi_app keystone 5000 keystone.wsgi.api OS_KEYSTONE_CONFIG_DIR="$ETC/keystone"
    wait_for keystone 60 http_ok "http://$IP:5000/v3"
}

keystone_setup() {  # users, services, endpoints, heat's domain (idempotent)
    log "keystone: projects, users, services, endpoints"
    PW=$PW IP=$IP REGION=$REGION "$VENV/bin/python" "$PARTS/keystone-setup.py"
}
