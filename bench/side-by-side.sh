# shellcheck shell=bash disable=SC2034  # sourced; the caller reads PORT, PID, ECHO_PID, WORK
# Shared set-up of the small side-by-side tools (pair.sh, syscall-mix.sh, floor.sh); sourced,
# not run.
# Pinning as in run.sh: proxies on core 0, echo backend and load generator on core 1.
# ECHO_CPU=0 moves the echo backend onto the proxies' core instead, so the load generator has
# a core to itself and the rate follows what the proxy and the backend spend together
# (bench/RESULTS.md, "After run Y").
# Needs BENCH_DIR, BASE (port base) and LOADGEN set by the caller.

ECHO_PORT=$((BASE + 1))
SCRATCH_NAME=${SIDE_BY_SIDE_NAME:-tool}
# shellcheck source=bench/scratch.sh
. "$BENCH_DIR/scratch.sh"
# shellcheck source=bench/release-build.sh
. "$BENCH_DIR/release-build.sh"
declare -A PORT PID
ulimit -n "$(ulimit -Hn)"

start_echo() { # wsgate binary; sets ECHO_PID
    fresh_release_wsgate "$1"
    taskset -c "${ECHO_CPU:-1}" "$1" echo --listen "127.0.0.1:$ECHO_PORT" >/dev/null 2>&1 &
    ECHO_PID=$!
    PIDS+=("$ECHO_PID")
    PORT[direct]=$ECHO_PORT
}

start_wsgate() { # name binary port [more wsgate run flags...] (the admin listener takes port + 1)
    fresh_release_wsgate "$2"
    RUST_LOG=warn taskset -c 0 "$2" run --routes "$WORK/routes.yaml" --listen "127.0.0.1:$3" \
        --admin-listen "127.0.0.1:$(($3 + 1))" "${@:4}" >"$WORK/$1.log" 2>&1 &
    PID[$1]=$!
    PORT[$1]=$3
    PIDS+=($!)
}

start_nginx() { # port; PID[nginx] is set by wait_relaying (the worker, once it exists)
    mkdir -p "$WORK/nginx/tmp"
    sed -e "s|@PREFIX@|$WORK/nginx|g" -e "s|@ECHO_PORT@|$ECHO_PORT|g" -e "s|@LISTEN_PORT@|$1|g" \
        -e "s|@NOFILE@|$(ulimit -n)|g" -e "s|@WORKER_CONNECTIONS@|4096|g" -e '/# wss only$/d' \
        "$BENCH_DIR/peers/nginx.conf.in" >"$WORK/nginx/nginx.conf"
    taskset -c 0 nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" -g 'daemon off;' &
    NGINX_MASTER=$!
    PIDS+=("$NGINX_MASTER")
    PORT[nginx]=$1
}

start_haproxy() { # port
    mkdir -p "$WORK/haproxy"
    sed -e "s|@PREFIX@|$WORK/haproxy|g" -e "s|@ECHO_PORT@|$ECHO_PORT|g" -e "s|@LISTEN_PORT@|$1|g" \
        -e "s|@MAXCONN@|4096|g" -e '/# wss only$/d' "$BENCH_DIR/peers/haproxy.cfg.in" >"$WORK/haproxy/haproxy.cfg"
    taskset -c 0 haproxy -db -f "$WORK/haproxy/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
    PID[haproxy]=$!
    PIDS+=($!)
    PORT[haproxy]=$1
}

start_peers() { # wsgate binary: the echo backend, wsgate, nginx and HAProxy (the usual four)
    start_echo "$1"
    start_wsgate wsgate "$1" $((BASE + 2))
    start_nginx $((BASE + 4))
    start_haproxy $((BASE + 5))
}

start_floor() { # binary port [VAR=VALUE...]: the bare epoll forwarder (loadgen/src/bin/floor.rs)
    env "${@:3}" taskset -c 0 "$1" "127.0.0.1:$2" "127.0.0.1:$ECHO_PORT" >"$WORK/floor.log" 2>&1 &
    PID[floor]=$!
    PIDS+=($!)
    PORT[floor]=$2
}

start_floor_uring() { # binary port: the same forwarder on io_uring (loadgen/src/bin/floor_uring.rs)
    taskset -c 0 "$1" "127.0.0.1:$2" "127.0.0.1:$ECHO_PORT" >"$WORK/floor-uring.log" 2>&1 &
    PID[floor-uring]=$!
    PIDS+=($!)
    PORT[floor-uring]=$2
}

wait_relaying() { # targets...: each relays a WebSocket echo (bounded: 50 tries, 0.2 s apart)
    local t
    for t in "$@"; do
        for _ in $(seq 50); do
            taskset -c 1 "$LOADGEN" handshakes --url "ws://127.0.0.1:${PORT[$t]}/probe" --target probe \
                --conns 1 --warmup 0s --duration 0.1s >/dev/null 2>&1 && break
            sleep 0.2
        done
    done
    if [ -n "${NGINX_MASTER:-}" ]; then
        PID[nginx]=$(tr ' ' '\n' <"/proc/$NGINX_MASTER/task/$NGINX_MASTER/children" | sed -n 1p)
    fi
}

# On-CPU nanoseconds of a process, all threads.
cpu_ns() { awk '{t += $1} END {printf "%.0f", t}' /proc/"$1"/task/*/schedstat; }
