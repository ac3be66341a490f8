#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for tests (SPEC section 9).
#
#   scripts/rabbitmq-cluster.sh up        start the three nodes, join them, print their
#                                         amqp:// URLs on stdout (node 1 first)
#   scripts/rabbitmq-cluster.sh down      stop them and remove their data
#   scripts/rabbitmq-cluster.sh stop N    stop node N (1-3) gracefully, wait until it is gone
#   scripts/rabbitmq-cluster.sh start N   start node N, wait until it runs (in the cluster)
#   scripts/rabbitmq-cluster.sh kill N    SIGKILL node N's Erlang VM, wait until it is gone
#   scripts/rabbitmq-cluster.sh name N    print node N's Erlang node name
#
# Every command is idempotent. Progress goes to stderr; only `up` (the URLs)
# and `name` write to stdout. The broker on 5672 (rabbit@localhost) is never
# touched: the nodes have their own names, ports, config, env and data.
#
# Node N: name s2s-cluster-N@localhost, AMQP 127.0.0.1:568N, management
# 127.0.0.1:1568N, distribution 2568N (AMQP port + 20000), guest/guest on
# loopback. Data, logs, config and pid file under $S2SQ_CLUSTER_DIR/nodeN
# (default ${TMPDIR:-/tmp}/s2s-rabbitmq-cluster).
#
# Traps met on this machine (Debian 12, RabbitMQ 3.10.8, run as root):
#   * Run the Debian wrappers (/usr/sbin/rabbitmq-server, rabbitmqctl): they
#     switch to the rabbitmq user, so the nodes and the CLI share that user's
#     Erlang cookie (/var/lib/rabbitmq/.erlang.cookie). Each node's folder is
#     owned by that user.
#   * Each node needs its own config file and env file: otherwise it reads
#     /etc/rabbitmq/ (node name rabbit@localhost, port 5672) and collides
#     with the system broker. The wrappers pass RABBITMQ_CONF_ENV_FILE on
#     (su keeps the environment), and the env file sets the rest.
#   * Stay on loopback: listeners.tcp.1 = 127.0.0.1:568N, NODE_IP_ADDRESS and
#     `-kernel inet_dist_use_interface {127,0,0,1}` for the distribution port.
#   * beam's command line does not name the node: find a node's process from
#     its pid file. `-detached` reports start-up errors only in the node's log,
#     so wait with `rabbitmqctl wait <pidfile>` and show the log's tail on failure.
#   * Peer discovery is classic_config (all three nodes listed): node 1 starts
#     first, alone; nodes 2 and 3 then find it and join it while they boot,
#     faster than stop_app/join_cluster/start_app (kept as a fallback).
set -euo pipefail

PATH="$PATH:/usr/sbin:/sbin"

readonly NODES=(1 2 3)
readonly BASE="${S2SQ_CLUSTER_DIR:-${TMPDIR:-/tmp}/s2s-rabbitmq-cluster}"
readonly TIMEOUT="${S2SQ_CLUSTER_TIMEOUT:-120}"

say() { printf 'rabbitmq-cluster: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

node_name() { echo "s2s-cluster-$1@localhost"; }
amqp_port() { echo "568$1"; }
mgmt_port() { echo "1568$1"; }
node_dir() { echo "$BASE/node$1"; }
pid_file() { echo "$(node_dir "$1")/rabbitmq.pid"; }

check_n() {
    [[ ${1:-} =~ ^[1-3]$ ]] || die "node number must be 1, 2 or 3 (got '${1:-}')"
}

# The Erlang VM's pid of node N when it runs, else nothing.
node_pid() {
    local file pid
    file="$(pid_file "$1")"
    [[ -r $file ]] || return 0
    pid="$(<"$file")"
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/comm && $(<"/proc/$pid/comm") == beam.smp ]] \
        && echo "$pid"
    return 0
}

# rabbitmqctl (or another CLI tool) aimed at node N, with its env file.
ctl() {
    local n="$1" tool="$2"
    shift 2
    RABBITMQ_CONF_ENV_FILE="$(node_dir "$n")/rabbitmq-env.conf" \
        "$tool" -n "$(node_name "$n")" "$@"
}

# --- files of a node ------------------------------------------------------------

write_files() {
    local n="$1" dir peers="" m
    dir="$(node_dir "$n")"
    mkdir -p "$dir/mnesia" "$dir/log"
    for m in "${NODES[@]}"; do
        peers+="cluster_formation.classic_config.nodes.$m = $(node_name "$m")"$'\n'
    done
    cat >"$dir/rabbitmq.conf" <<EOF
# Node $n of the s2s-queue test cluster (scripts/rabbitmq-cluster.sh).
listeners.tcp.1 = 127.0.0.1:$(amqp_port "$n")
management.tcp.port = $(mgmt_port "$n")
management.tcp.ip = 127.0.0.1
loopback_users.guest = true
cluster_formation.peer_discovery_backend = classic_config
${peers}queue_leader_locator = balanced
cluster_partition_handling = pause_minority
consumer_timeout = 2147483647
heartbeat = 30
log.console = false
log.file.level = info
EOF
    cat >"$dir/rabbitmq-env.conf" <<EOF
# Node $n of the s2s-queue test cluster; sourced by the broker's scripts.
NODENAME=$(node_name "$n")
NODE_IP_ADDRESS=127.0.0.1
NODE_PORT=$(amqp_port "$n")
CONFIG_FILE=$dir/rabbitmq.conf
ADVANCED_CONFIG_FILE=$dir/advanced.config
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
PID_FILE=$(pid_file "$n")
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_ADDRESS
if [ "\$(ulimit -S -n)" != unlimited ] && [ "\$(ulimit -S -n)" -lt 20000 ]; then
    ulimit -S -n 20000 2>/dev/null || ulimit -S -n "\$(ulimit -H -n)" 2>/dev/null || true
fi
EOF
    # consumer_timeout off, as deploy/advanced.config does: parks last.
    echo '[{rabbit, [{consumer_timeout, undefined}]}].' >"$dir/advanced.config"
    echo '[rabbitmq_management].' >"$dir/enabled_plugins"
    chown -R rabbitmq:rabbitmq "$BASE"
}

# --- start and wait ---------------------------------------------------------------

launch() {
    local n="$1"
    [[ -n $(node_pid "$n") ]] && return 0
    write_files "$n"
    rm -f "$(pid_file "$n")"
    say "starting node $n ($(node_name "$n"), amqp 127.0.0.1:$(amqp_port "$n"))"
    RABBITMQ_CONF_ENV_FILE="$(node_dir "$n")/rabbitmq-env.conf" rabbitmq-server -detached \
        >/dev/null 2>&1 || true
}

wait_running() {
    local n="$1"
    if ! ctl "$n" rabbitmqctl -q wait --timeout "$TIMEOUT" "$(pid_file "$n")" >/dev/null 2>&1; then
        say "node $n did not start within ${TIMEOUT}s; the end of its log:"
        tail -n 30 "$(node_dir "$n")"/log/*.log >&2 2>/dev/null || true
        die "node $n failed to start (logs in $(node_dir "$n")/log)"
    fi
    say "node $n runs (pid $(node_pid "$n"))"
}

running_nodes() {
    ctl "$1" rabbitmqctl -q eval 'rabbit_nodes:all_running().' 2>/dev/null || true
}

# Join node N to node 1's cluster if peer discovery did not (say, a node left alone).
ensure_joined() {
    local n="$1" seed
    [[ $n == 1 ]] && return 0
    seed="$(node_name 1)"
    [[ $(running_nodes "$n") == *"$seed"* ]] && return 0
    say "node $n is not in node 1's cluster: joining it"
    ctl "$n" rabbitmqctl -q stop_app >/dev/null
    ctl "$n" rabbitmqctl -q reset >/dev/null
    ctl "$n" rabbitmqctl -q join_cluster "$seed" >/dev/null
    ctl "$n" rabbitmqctl -q start_app >/dev/null
}

cmd_up() {
    local n pids=()
    mkdir -p "$BASE"
    # A fresh node 1 starts alone, so the others find a running seed to join.
    if [[ -z $(node_pid 1) && ! -d $(node_dir 1)/mnesia/$(node_name 1) ]]; then
        launch 1
        wait_running 1
    fi
    for n in "${NODES[@]}"; do launch "$n"; done
    for n in "${NODES[@]}"; do wait_running "$n" & pids+=($!); done
    for n in "${pids[@]}"; do wait "$n" || exit 1; done
    for n in 2 3; do ensure_joined "$n"; done
    say "cluster: $(running_nodes 1)"
    for n in "${NODES[@]}"; do
        echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/"
    done
}

cmd_start() {
    local n="$1"
    [[ -d $BASE ]] || die "no cluster under $BASE: run '$0 up' first"
    launch "$n"
    wait_running "$n"
}

# --- stop -------------------------------------------------------------------------------

wait_gone() {
    local pid="$1" what="$2" deadline=$((SECONDS + TIMEOUT))
    while [[ -d /proc/$pid ]]; do
        ((SECONDS < deadline)) || die "$what (pid $pid) is still there after ${TIMEOUT}s"
        sleep 0.1
    done
}

cmd_stop() {
    local n="$1" pid
    pid="$(node_pid "$n")"
    if [[ -z $pid ]]; then
        say "node $n is not running"
        return 0
    fi
    say "stopping node $n (pid $pid)"
    ctl "$n" rabbitmqctl -q stop "$(pid_file "$n")" >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" "node $n"
    say "node $n stopped"
}

cmd_kill() {
    local n="$1" pid
    pid="$(node_pid "$n")"
    if [[ -z $pid ]]; then
        say "node $n is not running"
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" "node $n"
    say "node $n killed (pid $pid)"
}

cmd_down() {
    local n pid pids=()
    # The data goes too, so no need for the orderly rabbitmqctl stop: SIGTERM
    # makes the VM shut down (init:stop), SIGKILL whatever is left.
    for n in "${NODES[@]}"; do
        pid="$(node_pid "$n")"
        [[ -n $pid ]] || continue
        say "stopping node $n (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
    done
    local deadline=$((SECONDS + 30))
    for pid in "${pids[@]}"; do
        while [[ -d /proc/$pid ]] && ((SECONDS < deadline)); do sleep 0.1; done
        if [[ -d /proc/$pid ]]; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" "a node"
        fi
    done
    [[ -d $BASE ]] && say "removing $BASE"
    rm -rf "$BASE"
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        up) cmd_up ;;
        down) cmd_down ;;
        stop | start | kill)
            check_n "${2:-}"
            "cmd_$cmd" "$2"
            ;;
        name)
            check_n "${2:-}"
            node_name "$2"
            ;;
        *)
            sed -n 's/^#   scripts/scripts/p' "$0" >&2
            exit 2
            ;;
    esac
}

main "$@"
