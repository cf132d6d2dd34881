# shellcheck shell=bash
# minicloud: RabbitMQ, the node minicloud@localhost on 127.0.0.1:5672 with
# its state in $MC/rabbitmq, and the user the services connect as.

export RABBITMQ_NODENAME=minicloud@localhost
export RABBITMQ_NODE_IP_ADDRESS=$IP RABBITMQ_NODE_PORT=5672
export RABBITMQ_MNESIA_BASE=$MC/rabbitmq/mnesia RABBITMQ_LOG_BASE=$LOGDIR
export RABBITMQ_LOGS=- RABBITMQ_ENABLED_PLUGINS_FILE=$MC/rabbitmq/enabled_plugins
export RABBITMQ_CONFIG_FILE=$MC/rabbitmq/rabbitmq RABBITMQ_PID_FILE=$RUN/rabbitmq.beam.pid

rabbitmqctl() { HOME=$MC/rabbitmq /usr/lib/rabbitmq/bin/rabbitmqctl "$@"; }

start_rabbitmq() {
    [[ -f $RABBITMQ_ENABLED_PLUGINS_FILE ]] || echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    touch "$RABBITMQ_CONFIG_FILE.conf"
    if [[ ! -f $MC/rabbitmq/.erlang.cookie ]]; then
        openssl rand -hex 20 >"$MC/rabbitmq/.erlang.cookie"
        chmod 0400 "$MC/rabbitmq/.erlang.cookie"
    fi
    if ! pgrep -x epmd >/dev/null; then
        touch "$RUN/epmd.ours"   # started by our node: `stop` ends it
    fi
    spawn rabbitmq env HOME="$MC/rabbitmq" /usr/lib/rabbitmq/bin/rabbitmq-server
    wait_for RabbitMQ 120 rabbitmqctl await_startup
    if ! rabbitmqctl list_users -q | grep -q '^minicloud'; then
        rabbitmqctl add_user minicloud "$PW" >/dev/null
    fi
    rabbitmqctl set_permissions minicloud '.*' '.*' '.*' >/dev/null
}
