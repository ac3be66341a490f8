#!/usr/bin/env bash
# Make sure a local RabbitMQ runs and can hold many quorum queues.
#
# Why: each quorum queue keeps about 3 files open, and a broker left at the
# usual open-files limit of 1024 silently hangs at ~300 quorum queues (no
# alarm, no log line; connections, declares and `rabbitmqctl status` stall).
# See docs: DESIGN.md "Broker facts", fact 5.
#
# What it does, idempotently:
#   * installs rabbitmq-server with apt when missing (root only);
#   * makes a raised open-files limit (N = hard limit, capped at 65536)
#     stick for every way the Debian broker is started:
#       - systemd (when PID 1 is systemd and runs the unit): a drop-in with
#         LimitNOFILE=N;
#       - otherwise `rabbitmq-server -detached` as root goes through `su`,
#         whose PAM stack runs pam_limits, so /etc/security/limits.d/ gets
#         `rabbitmq - nofile N`; and /etc/rabbitmq/rabbitmq-env.conf (sourced
#         by the broker's own start script on every path, including the
#         init.d one that bypasses PAM) raises the soft limit as far as the
#         hard one allows;
#   * starts the broker if it is down, restarts it if it runs with a lower
#     limit (root only), then checks /proc/<beam pid>/limits and that the
#     AMQP port answers.
# When everything is already right it only reads /proc and probes the port.
#
# Environment:
#   S2SQ_AMQP_URL          a non-local broker is only probed, never managed
#   S2SQ_BROKER_TIMEOUT    seconds to wait for start-up/shutdown (default 60)
set -euo pipefail

PATH="$PATH:/usr/sbin:/sbin"

readonly NOFILE_CAP=65536
readonly TIMEOUT="${S2SQ_BROKER_TIMEOUT:-60}"
readonly UNIT=rabbitmq-server.service
readonly LIMITS_FILE=/etc/security/limits.d/rabbitmq.conf
readonly ENV_FILE=/etc/rabbitmq/rabbitmq-env.conf
readonly DROPIN_FILE=/etc/systemd/system/rabbitmq-server.service.d/s2s-queue-limits.conf
readonly MARK_BEGIN='# >>> s2s-queue: open-files limit (scripts/ensure-rabbitmq.sh) >>>'
readonly MARK_END='# <<< s2s-queue <<<'

say() { printf 'ensure-rabbitmq: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
is_root() { [[ $EUID -eq 0 ]]; }
under_systemd() { [[ -d /run/systemd/system ]] && systemctl cat "$UNIT" >/dev/null 2>&1; }

# --- broker address -----------------------------------------------------------

# Sets HOST, PORT and TLS from S2SQ_AMQP_URL (default: the local broker).
parse_url() {
    local url="${S2SQ_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
    local rest="${url#*://}"
    rest="${rest%%[/?]*}"
    rest="${rest##*@}"
    if [[ $rest =~ ^\[([^]]+)\](:([0-9]+))?$ ]]; then
        HOST="${BASH_REMATCH[1]}" PORT="${BASH_REMATCH[3]}"
    else
        HOST="${rest%%:*}" PORT=""
        [[ $rest == *:* ]] && PORT="${rest##*:}"
    fi
    TLS=false
    [[ $url == amqps://* ]] && TLS=true
    if [[ -z $PORT ]]; then
        if [[ $TLS == true ]]; then PORT=5671; else PORT=5672; fi
    fi
}

is_local_host() {
    case "$HOST" in
        127.* | localhost | ::1 | "$HOSTNAME") return 0 ;;
        *) return 1 ;;
    esac
}

# True when something on HOST:PORT answers the AMQP 0-9-1 header with a frame.
# A broker out of file handles still completes the TCP handshake (the kernel
# does that) but never sends connection.start, so connecting alone proves
# nothing. The broker logs the aborted connection; that is harmless.
# Over TLS (amqps) bash cannot speak the protocol: a TCP connect must do.
# shellcheck disable=SC2016  # the probe script expands its own arguments
amqp_answers() {
    if [[ $TLS == true ]]; then
        timeout 10 bash -c 'exec {fd}<>"/dev/tcp/$1/$2"' probe "$HOST" "$PORT" 2>/dev/null
        return
    fi
    timeout 10 bash -c '
        exec {fd}<>"/dev/tcp/$1/$2" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&"$fd"
        IFS= read -r -t 5 -N 1 -u "$fd" reply || exit 1
        [[ $reply == $'"'"'\x01'"'"' ]]
    ' probe "$HOST" "$PORT" 2>/dev/null
}

# --- limits -------------------------------------------------------------------

target_nofile() {
    local hard
    hard="$(ulimit -Hn)"
    if [[ $hard == unlimited ]] || ((hard > NOFILE_CAP)); then
        echo "$NOFILE_CAP"
    else
        echo "$hard"
    fi
}

# PID of the local broker's Erlang VM, or nothing. Reads /proc rather than
# calling pgrep: minimal Debian images have no procps.
broker_pid() {
    local dir pids=()
    for dir in /proc/[0-9]*; do
        [[ -r $dir/comm && $(<"$dir/comm") == beam.smp ]] 2>/dev/null || continue
        [[ $(stat -c %U "$dir" 2>/dev/null) == rabbitmq ]] && pids+=("${dir#/proc/}")
    done
    if ((${#pids[@]} > 1)) && is_root; then
        # Several VMs (other nodes of the rabbitmq user): ask the node itself.
        rabbitmqctl -q eval 'list_to_integer(os:getpid()).' 2>/dev/null || true
    elif ((${#pids[@]})); then
        echo "${pids[0]}"
    fi
}

# Soft "Max open files" of a process.
nofile_of() { awk '/^Max open files/ { print $4 }' "/proc/$1/limits"; }

# Writes a whole file only when its content differs.
write_file() {
    local path="$1" content="$2"
    if [[ -f $path ]] && [[ $(<"$path") == "$content" ]]; then
        return 0
    fi
    mkdir -p "$(dirname "$path")"
    printf '%s\n' "$content" >"$path"
    say "wrote $path"
}

# Puts our marked block into rabbitmq-env.conf, keeping everything else.
write_env_block() {
    local n="$1" block current=""
    block="$MARK_BEGIN
# Quorum queues keep ~3 files open each; the usual 1024 hangs the broker at
# ~300 of them. This file is sourced by the broker's start script on every
# start path; raise the soft limit as far as the hard one allows, never lower.
if [ \"\$(ulimit -S -n)\" != unlimited ] && [ \"\$(ulimit -S -n)\" -lt $n ]; then
    ulimit -S -n $n 2>/dev/null || ulimit -S -n \"\$(ulimit -H -n)\" 2>/dev/null || true
fi
$MARK_END"
    [[ -f $ENV_FILE ]] && current="$(<"$ENV_FILE")"
    if [[ $current == *"$MARK_BEGIN"*"$MARK_END"* ]]; then
        local old="${current#*"$MARK_BEGIN"}"
        old="$MARK_BEGIN${old%%"$MARK_END"*}$MARK_END"
        [[ $old == "$block" ]] && return 0
        current="${current/"$old"/"$block"}"
    else
        current="${current:+$current$'\n'}$block"
    fi
    mkdir -p "$(dirname "$ENV_FILE")"
    printf '%s\n' "$current" >"$ENV_FILE"
    say "updated $ENV_FILE"
}

configure_limits() {
    local n="$1"
    if under_systemd; then
        write_file "$DROPIN_FILE" "# Written by s2s-queue scripts/ensure-rabbitmq.sh: quorum queues keep ~3
# files open each; the default limit hangs the broker at ~300 of them.
[Service]
LimitNOFILE=$n"
        systemctl daemon-reload
        return 0
    fi
    write_file "$LIMITS_FILE" "# Written by s2s-queue scripts/ensure-rabbitmq.sh: quorum queues keep ~3
# files open each; the default limit hangs the broker at ~300 of them.
# Applied by pam_limits when root starts the broker (rabbitmq-server goes
# through su). Takes effect at the next broker start.
rabbitmq - nofile $n"
    write_env_block "$n"
}

# --- start / stop -------------------------------------------------------------

wait_started() {
    local deadline=$((SECONDS + TIMEOUT))
    until rabbitmqctl -q -t 10 await_startup >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            say "the broker did not start within ${TIMEOUT}s; last log lines:"
            tail -n 20 /var/log/rabbitmq/startup_err /var/log/rabbitmq/*.log 2>/dev/null >&2 || true
            die "RabbitMQ failed to start (see /var/log/rabbitmq/)"
        fi
        sleep 1
    done
}

start_broker() {
    say "starting RabbitMQ"
    if under_systemd; then
        systemctl start "$UNIT"
    else
        rabbitmq-server -detached
    fi
    wait_started
}

stop_broker() {
    local pid="$1" deadline=$((SECONDS + TIMEOUT))
    say "stopping RabbitMQ (pid $pid)"
    rabbitmqctl -q shutdown >/dev/null 2>&1 || true
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "RabbitMQ (pid $pid) did not stop within ${TIMEOUT}s"
        sleep 0.5
    done
}

restart_broker() {
    local pid="$1"
    if under_systemd && systemctl is-active --quiet "$UNIT"; then
        say "restarting $UNIT"
        systemctl restart "$UNIT"
        wait_started
    else
        stop_broker "$pid"
        start_broker
    fi
}

# --- main ---------------------------------------------------------------------

ensure_installed() {
    command -v rabbitmqctl >/dev/null && command -v rabbitmq-server >/dev/null && return 0
    if ! is_root; then
        say "RabbitMQ is not installed. Either install it:"
        say "    sudo apt-get install -y rabbitmq-server && sudo $0"
        say "or point S2SQ_AMQP_URL at another broker, e.g."
        say "    export S2SQ_AMQP_URL=amqp://user:password@broker.example:5672/"
        exit 1
    fi
    say "installing rabbitmq-server with apt"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server
}

ensure_external() {
    amqp_answers || die "no AMQP broker answers at $HOST:$PORT (S2SQ_AMQP_URL)"
    say "using the broker at $HOST:$PORT (not managed here)"
}

main() {
    parse_url
    if ! is_local_host; then
        ensure_external
        return 0
    fi
    ensure_installed

    local n pid limit
    n="$(target_nofile)"
    if is_root; then configure_limits "$n"; fi

    pid="$(broker_pid)"
    if [[ -z $pid ]]; then
        if amqp_answers; then
            say "warning: a broker answers on $HOST:$PORT but no beam.smp of user rabbitmq"
            say "was found, so its open-files limit is unknown: make sure it is >= $n"
            return 0
        fi
        is_root || die "RabbitMQ is installed but not running; run: sudo $0"
        start_broker
    else
        limit="$(nofile_of "$pid")"
        if ((limit < n)); then
            if ! is_root; then
                say "warning: RabbitMQ (pid $pid) runs with an open-files limit of $limit;"
                say "it hangs at ~$((limit / 3)) quorum queues. Fix it with: sudo $0"
                amqp_answers || die "RabbitMQ (pid $pid) does not answer on $HOST:$PORT"
                return 0
            fi
            say "RabbitMQ (pid $pid) runs with an open-files limit of $limit < $n: restarting it"
            restart_broker "$pid"
        fi
    fi

    pid="$(broker_pid)"
    [[ -n $pid ]] || die "RabbitMQ is not running after start-up"
    limit="$(nofile_of "$pid")"
    if ((limit < n)); then
        is_root && die "RabbitMQ (pid $pid) still has an open-files limit of $limit < $n; see $0"
        say "warning: RabbitMQ (pid $pid) has an open-files limit of $limit < $n"
    fi
    amqp_answers || die "RabbitMQ (pid $pid) does not answer AMQP on $HOST:$PORT"
    say "ok: RabbitMQ pid $pid, open files $limit, AMQP on $HOST:$PORT"
}

main "$@"
