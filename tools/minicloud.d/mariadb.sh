# shellcheck shell=bash
# minicloud: MariaDB, its own mariadbd on 127.0.0.1:3306 with data in
# $MC/mysql, and a database for each service.

sql() { mariadb --no-defaults -uroot --socket="$RUN/mysql.sock" "$@"; }

start_mariadb() {
    if [[ ! -d $MC/mysql/mysql ]]; then
        log "initialising MariaDB in $MC/mysql"
        install -d -o mysql -g mysql -m 0700 "$MC/mysql"
        mariadb-install-db --no-defaults --user=mysql --datadir="$MC/mysql" \
            --auth-root-authentication-method=socket >"$LOGDIR/mariadb-install.log" 2>&1
    fi
    chown mysql:mysql "$RUN"
    spawn mariadb /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$MC/mysql" \
        --socket="$RUN/mysql.sock" --bind-address="$IP" --port=3306 \
        --pid-file="$RUN/mariadbd.pid" --log-error="$LOGDIR/mariadb.err" \
        --max-connections=1000 --character-set-server=utf8mb4 \
        --innodb-buffer-pool-size=256M --skip-name-resolve
    wait_for MariaDB 60 sql -e "select 1"
    local db
    for db in keystone glance placement neutron nova_api nova_cell0 nova_cell1 heat; do
        sql -e "CREATE DATABASE IF NOT EXISTS $db CHARACTER SET utf8"
    done
    sql -e "CREATE USER IF NOT EXISTS 'minicloud'@'127.0.0.1' IDENTIFIED BY '$PW';
            GRANT ALL PRIVILEGES ON *.* TO 'minicloud'@'127.0.0.1'; FLUSH PRIVILEGES;"
}
