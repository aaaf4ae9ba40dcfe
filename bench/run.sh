#!/usr/bin/env bash
# wsgate's benchmark harness (issue 7): the same WebSocket scenarios against the echo backend
# directly, wsgate, nginx and HAProxy, alternating targets, medians over rounds.
#
#   bench/run.sh            full run (3 rounds, ~20 min once built: ws ~8, wss ~13) -> bench/RESULTS.md
#   bench/run.sh --quick    smoke run (every scenario once, ~1 s each); asserts only that each
#                           scenario produced numbers; writes its report under /tmp
#
# Options: --targets direct,wsgate,nginx,haproxy   --rounds N   --out FILE
#          --scenarios throughput,bulk,latency,handshakes,idle,wss-throughput,wss-bulk,
#                      wss-latency,wss-handshakes,wss-resumed,wss-idle   (a subset, for focused runs)
# Environment: WSGATE_BIN / LOADGEN_BIN (skip building), BENCH_PORT_BASE (default 18000),
#              IDLE_CONNS, DURATION, WARMUP (override the mode's defaults).
#
# wss-* (issue 22): the same scenarios with TLS 1.3 between the load generator and the proxy
# (AES-128-GCM, X25519, one ECDSA P-256 certificate generated into the run's directory; ws from
# the proxy to the echo backend); wss-handshakes are full handshakes, wss-resumed resume a TLS
# session. "direct" over wss is `loadgen tls-echo`, a TLS WebSocket echo none of the proxies.
#
# Pinning: every proxy runs alone on core 0 (taskset -c 0); the load generator and the echo
# backend share core 1. All run at the same (default) priority. See bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
MODE=full
TARGETS="direct,wsgate,nginx,haproxy"
ROUNDS=""
OUT=""
ALL_SCENARIOS="throughput,bulk,latency,handshakes,idle,wss-throughput,wss-bulk,wss-latency,wss-handshakes,wss-resumed,wss-idle"
SCENARIO_SET=$ALL_SCENARIOS
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --targets) TARGETS="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --scenarios) SCENARIO_SET="$2"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
IFS=',' read -r -a TARGET_LIST <<<"$TARGETS"
for t in "${TARGET_LIST[@]}"; do
    case "$t" in direct|wsgate|nginx|haproxy) ;; *) echo "run.sh: unknown target $t" >&2; exit 2 ;; esac
done
has_target() { [[ ",$TARGETS," == *",$1,"* ]]; }
IFS=',' read -r -a SCENARIO_LIST <<<"$SCENARIO_SET"
for s in "${SCENARIO_LIST[@]}"; do
    case "$s" in
        throughput|bulk|latency|handshakes|idle) ;;
        wss-throughput|wss-bulk|wss-latency|wss-handshakes|wss-resumed|wss-idle) ;;
        *) echo "run.sh: unknown scenario $s" >&2; exit 2 ;;
    esac
done
has_scenario() { [[ ",$SCENARIO_SET," == *",$1,"* ]]; }
WSS=0
[[ ",$SCENARIO_SET," == *",wss-"* ]] && WSS=1

if [ "$MODE" = full ]; then
    ROUNDS=${ROUNDS:-3}; WARMUP=${WARMUP:-1s}; DURATION=${DURATION:-5s}
    COUNT_WARMUP=0.5s; COUNT_DURATION=2s
    IDLE_CONNS=${IDLE_CONNS:-9900}; IDLE_HOLD_S=8
else
    ROUNDS=${ROUNDS:-1}; WARMUP=${WARMUP:-0.2s}; DURATION=${DURATION:-1s}
    COUNT_WARMUP=0.1s; COUNT_DURATION=0.5s
    IDLE_CONNS=${IDLE_CONNS:-500}; IDLE_HOLD_S=3
fi
LATENCY_RATE=2000
PORT_BASE=${BENCH_PORT_BASE:-18000}
ECHO_PORT=$((PORT_BASE + 1))
WSGATE_PORT=$((PORT_BASE + 2))
WSGATE_ADMIN_PORT=$((PORT_BASE + 3))
NGINX_PORT=$((PORT_BASE + 4))
HAPROXY_PORT=$((PORT_BASE + 5))
# TLS listeners (wss-* scenarios): the direct baseline's TLS echo and each proxy's second listener.
TLS_ECHO_PORT=$((PORT_BASE + 6))
WSGATE_TLS_PORT=$((PORT_BASE + 7))
NGINX_TLS_PORT=$((PORT_BASE + 8))
HAPROXY_TLS_PORT=$((PORT_BASE + 9))
PROXY_CPU=0
LOAD_CPU=1

WORK=$(mktemp -d /tmp/wsgate-bench.XXXXXX)
RUNS="$WORK/runs.jsonl"
: >"$RUNS"
if [ -z "$OUT" ]; then
    # Only a full run of every scenario replaces the committed report.
    if [ "$MODE" = full ] && [ "$SCENARIO_SET" = "$ALL_SCENARIOS" ]; then
        OUT="$BENCH_DIR/RESULTS.md"
    else
        OUT="$WORK/RESULTS.md"
    fi
fi
STARTED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
START_S=$SECONDS
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- processes we start: tracked by PID, stopped on exit --------------------------------------
declare -A PID_OF=()
STARTED_CMDS=""
PIDS=()
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Raise the open-file limit to the hard limit: a proxy holding N connections needs 2N.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $((2 * IDLE_CONNS + 100)) -gt "$NOFILE" ]; then
    die "IDLE_CONNS=$IDLE_CONNS needs $((2 * IDLE_CONNS + 100)) descriptors in the proxy; the hard limit is $NOFILE"
fi
[ "$(nproc)" -ge 2 ] || die "needs 2 cores (proxy on core 0, load generator + backend on core 1)"

# --- tools --------------------------------------------------------------------------------------
if { has_target nginx && ! command -v nginx >/dev/null; } || { has_target haproxy && ! command -v haproxy >/dev/null; } \
    || ! command -v openssl >/dev/null; then
    log "installing nginx, haproxy and openssl from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy openssl >/dev/null
fi
command -v python3 >/dev/null || die "python3 is needed for the report"
# System calls per operation, when perf can count them here (root or perf_event_paranoid <= 1):
# the proxies' CPU per message is mostly kernel time, so this shows what it is spent on.
SYSCALLS=0
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
    SYSCALLS=1
fi

# shellcheck source=bench/release-build.sh
. "$BENCH_DIR/release-build.sh"
if [ -z "${LOADGEN_BIN:-}" ]; then
    log "building loadgen (release)"
    CARGO_TARGET_DIR="$BENCH_DIR/target" cargo build --release --quiet --manifest-path "$BENCH_DIR/loadgen/Cargo.toml"
    LOADGEN_BIN="$BENCH_DIR/target/release/loadgen"
fi
if [ -z "${WSGATE_BIN:-}" ]; then
    log "building wsgate (release)"
    cargo build --release --quiet --manifest-path "$REPO/Cargo.toml" --bin wsgate
    WSGATE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/wsgate"
else
    fresh_release_wsgate "$WSGATE_BIN"
fi
[ -x "$LOADGEN_BIN" ] || die "no loadgen binary at $LOADGEN_BIN"
[ -x "$WSGATE_BIN" ] || die "no wsgate binary at $WSGATE_BIN"
if has_target wsgate && ! "$WSGATE_BIN" run --help >/dev/null 2>&1; then
    die "$WSGATE_BIN has no working 'run' subcommand; use --targets direct,nginx,haproxy"
fi

# --- configs ------------------------------------------------------------------------------------
# One ECDSA P-256 certificate for every TLS listener (valid for 127.0.0.1; the load generator
# pins exactly this certificate with --cert). HAProxy wants certificate and key in one file.
TLS_DIR="$WORK/tls"
mkdir -p "$TLS_DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=wsgate-bench -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" 2>"$TLS_DIR/openssl.log" ||
    { cat "$TLS_DIR/openssl.log" >&2; die "openssl could not generate the benchmark certificate"; }
cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/cert-and-key.pem"

fill() { # template output prefix port tls_port: replaces @PLACEHOLDERS@
    sed -e "s|@PREFIX@|$WORK/$3|g" -e "s|@ECHO_PORT@|$ECHO_PORT|g" -e "s|@LISTEN_PORT@|$4|g" \
        -e "s|@TLS_LISTEN_PORT@|$5|g" -e "s|@CERT@|$TLS_DIR/cert.pem|g" -e "s|@KEY@|$TLS_DIR/key.pem|g" \
        -e "s|@CERT_AND_KEY@|$TLS_DIR/cert-and-key.pem|g" \
        -e "s|@NOFILE@|$NOFILE|g" -e "s|@WORKER_CONNECTIONS@|$((2 * IDLE_CONNS * 11 / 10 + 256))|g" \
        -e "s|@MAXCONN@|$((IDLE_CONNS + 32))|g" "$1" >"$2"
}
mkdir -p "$WORK/nginx/tmp" "$WORK/haproxy" "$WORK/wsgate" "$WORK/logs"
fill "$BENCH_DIR/peers/nginx.conf.in" "$WORK/nginx/nginx.conf" nginx "$NGINX_PORT" "$NGINX_TLS_PORT"
fill "$BENCH_DIR/peers/haproxy.cfg.in" "$WORK/haproxy/haproxy.cfg" haproxy "$HAPROXY_PORT" "$HAPROXY_TLS_PORT"
fill "$BENCH_DIR/peers/wsgate-routes.yaml.in" "$WORK/wsgate/routes.yaml" wsgate "$WSGATE_PORT" "$WSGATE_TLS_PORT"
has_target nginx && { nginx -t -q -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" || die "nginx config invalid"; }
has_target haproxy && { haproxy -c -q -f "$WORK/haproxy/haproxy.cfg" || die "haproxy config invalid"; }

# --- process helpers ------------------------------------------------------------------------------
port_of() { # target [scenario]: the TLS listener for wss-* scenarios
    case "${2:-}" in
        wss-*)
            case "$1" in
                direct) echo "$TLS_ECHO_PORT" ;; wsgate) echo "$WSGATE_TLS_PORT" ;;
                nginx) echo "$NGINX_TLS_PORT" ;; haproxy) echo "$HAPROXY_TLS_PORT" ;;
            esac ;;
        *)
            case "$1" in
                direct) echo "$ECHO_PORT" ;; wsgate) echo "$WSGATE_PORT" ;;
                nginx) echo "$NGINX_PORT" ;; haproxy) echo "$HAPROXY_PORT" ;;
            esac ;;
    esac
}
url_of() { # target [scenario]
    case "${2:-}" in
        wss-*) echo "wss://127.0.0.1:$(port_of "$1" "$2")/bench" ;;
        *) echo "ws://127.0.0.1:$(port_of "$1" "$2")/bench" ;;
    esac
}
tls_args() { # scenario -> the load generator's TLS options (the pinned certificate; resumption)
    # Only wss-resumed resumes sessions. Everywhere else every connection makes a full handshake,
    # so each target pays the same setup inside its measured CPU (resumption would otherwise hit a
    # share of the connections that depends on how soon each proxy sends its tickets).
    case "$1" in
        wss-resumed) echo "--cert $TLS_DIR/cert.pem" ;;
        wss-*) echo "--cert $TLS_DIR/cert.pem --no-resume" ;;
    esac
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port pid: until something listens, while pid lives, within 20 s
    local i
    for i in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

start_bg() { # name cpu command...: runs pinned, logs to $WORK/logs/name.log
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/logs/$name.log" 2>&1 &
    local pid=$!
    local cmdline
    printf -v cmdline '%q ' "$@"
    cmdline="taskset -c $cpu ${cmdline% }"
    grep -qxF "$cmdline" <<<"$STARTED_CMDS" || STARTED_CMDS+="$cmdline"$'\n'
    PIDS+=("$pid")
    PID_OF[$name]=$pid
}

forget_pid() {
    local pid=$1 kept=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}

start_echo() {
    port_free "$ECHO_PORT" || die "port $ECHO_PORT is in use (set BENCH_PORT_BASE)"
    start_bg echo "$LOAD_CPU" "$WSGATE_BIN" echo --listen "127.0.0.1:$ECHO_PORT" --name bench-echo
    wait_port "$ECHO_PORT" "${PID_OF[echo]}" || { cat "$WORK/logs/echo.log" >&2; die "echo backend did not start"; }
}

start_tls_echo() { # the direct wss baseline: loadgen's TLS WebSocket echo, next to the ws one
    port_free "$TLS_ECHO_PORT" || die "port $TLS_ECHO_PORT is in use (set BENCH_PORT_BASE)"
    start_bg tls-echo "$LOAD_CPU" "$LOADGEN_BIN" tls-echo --listen "127.0.0.1:$TLS_ECHO_PORT" \
        --cert "$TLS_DIR/cert.pem" --key "$TLS_DIR/key.pem" --lifetime 60m
    wait_port "$TLS_ECHO_PORT" "${PID_OF[tls-echo]}" || { cat "$WORK/logs/tls-echo.log" >&2; die "tls-echo did not start"; }
}

probe() { # target scenario: one WebSocket echo through the target's listener for that scenario
    local t=$1 i
    for i in $(seq 30); do
        # shellcheck disable=SC2046
        if taskset -c "$LOAD_CPU" "$LOADGEN_BIN" handshakes --url "$(url_of "$t" "$2")" $(tls_args "$2") \
            --target probe --conns 1 --warmup 0s --duration 0.1s >"$WORK/logs/probe-$t-$2.json" 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    cat "$WORK/logs/probe-$t-$2.json" >&2
    return 1
}

start_proxy() { # target
    local t=$1 port tls_port
    port=$(port_of "$t")
    tls_port=$(port_of "$t" wss-probe)
    port_free "$port" || die "port $port is in use (set BENCH_PORT_BASE)"
    port_free "$tls_port" || die "port $tls_port is in use (set BENCH_PORT_BASE)"
    case "$t" in
        wsgate)
            port_free "$WSGATE_ADMIN_PORT" || die "port $WSGATE_ADMIN_PORT is in use"
            RUST_LOG=warn start_bg wsgate "$PROXY_CPU" "$WSGATE_BIN" run --routes "$WORK/wsgate/routes.yaml" \
                --listen "127.0.0.1:$WSGATE_PORT" --admin-listen "127.0.0.1:$WSGATE_ADMIN_PORT" \
                --tls-listen "127.0.0.1:$WSGATE_TLS_PORT" \
                --default-cert "$TLS_DIR/cert.pem" --default-key "$TLS_DIR/key.pem" ;;
        nginx)
            start_bg nginx "$PROXY_CPU" nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" \
                -c "$WORK/nginx/nginx.conf" -g 'daemon off;' ;;
        haproxy)
            start_bg haproxy "$PROXY_CPU" haproxy -db -f "$WORK/haproxy/haproxy.cfg" ;;
    esac
    wait_port "$port" "${PID_OF[$t]}" || { tail -20 "$WORK/logs/$t.log" >&2; die "$t did not start listening on $port"; }
    wait_port "$tls_port" "${PID_OF[$t]}" || { tail -20 "$WORK/logs/$t.log" >&2; die "$t did not start listening on $tls_port"; }
    # The proxy must relay a real WebSocket echo before it is measured (wsgate may answer 404
    # until its routes file is loaded: probe retries for a few seconds), over wss too when a
    # wss scenario runs.
    probe "$t" ws || die "$t listens but does not relay WebSockets to the echo backend"
    [ "$WSS" = 0 ] || probe "$t" wss-probe || die "$t does not relay wss to the echo backend"
}

restart_proxy() {
    local pid=${PID_OF[$1]}
    stop_pid "$pid"
    forget_pid "$pid"
    start_proxy "$1"
}

tree_pids() { # pid and its child processes (nginx: master + worker)
    local pid=$1 t
    echo "$pid"
    for t in /proc/"$pid"/task/*/children; do
        [ -r "$t" ] && tr ' ' '\n' <"$t" | sed '/^$/d'
    done
}
cpu_ticks() { # utime+stime (clock ticks) summed over the tree; includes exited threads
    local total=0 p rest
    for p in $(tree_pids "$1"); do
        rest=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue
        # fields after "pid (comm)": state=1 ... utime=12 stime=13
        total=$((total + $(awk '{print $12 + $13}' <<<"$rest")))
    done
    echo "$total"
}
cpu_ns() { # on-CPU nanoseconds (schedstat) summed over the tree's live threads: ticks are 10 ms,
           # too coarse for a few seconds of light load
    local p
    for p in $(tree_pids "$1"); do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done |
        awk '{ total += $1 } END { printf "%.0f\n", total }'
}
pss_kb() { # proportional set size summed over the tree
    local total=0 p v
    for p in $(tree_pids "$1"); do
        v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null) || continue
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
secs() { awk -v t="$1" -v hz="$CLK_TCK" 'BEGIN {printf "%.3f", t / hz}'; }
ns_secs() { awk -v t="$1" 'BEGIN {printf "%.6f", t / 1e9}'; }

# --- scenarios ----------------------------------------------------------------------------------
scenario_args() { # scenario -> loadgen arguments (wss-X as X; wss-resumed as handshakes)
    local base=${1#wss-}
    [ "$base" = resumed ] && base=handshakes
    case "$base" in
        throughput) echo "throughput --conns 100 --inflight 16 --size 64 --warmup $WARMUP --duration $DURATION" ;;
        bulk) echo "bulk --conns 10 --inflight 1 --size 65536 --warmup $WARMUP --duration $DURATION" ;;
        latency) echo "latency --rate $LATENCY_RATE --conns 10 --size 64 --warmup $WARMUP --duration $DURATION" ;;
        handshakes) echo "handshakes --conns 8 --size 64 --warmup $WARMUP --duration $DURATION" ;;
    esac
}

FAILURES=0
record() { # round scenario target cmd proxy_cpu_s echo_cpu_s extra_json result_file status
    local result
    result=$(tail -n 1 "$8" 2>/dev/null || true)
    [ -n "$result" ] && [ "${result:0:1}" = "{" ] || result=null
    printf '{"round":%s,"scenario":"%s","target":"%s","cmd":%s,"proxy_cpu_s":%s,"echo_cpu_s":%s,"status":%s,%s"result":%s}\n' \
        "$1" "$2" "$3" "$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$4")" \
        "$5" "$6" "$9" "$7" "$result" >>"$RUNS"
}

# System calls per operation come from a separate short pass right after the measured run, with
# perf attached only then: tracing every system call slows the traced proxy (≈0.4 µs per small
# message here), which would distort the measured run's CPU and rate. Sets syscalls,
# epoll_waits and syscall_ops (the operations of the counting pass) in the caller.
count_syscalls() { # round scenario target proxy_pid
    [ "$SYSCALLS" = 1 ] || return 0
    case "$2" in throughput|handshakes|wss-throughput|wss-handshakes|wss-resumed) ;; *) return 0 ;; esac
    local args perf_pid out="$WORK/logs/r$1-$2-$3.count.json"
    args="$(WARMUP=$COUNT_WARMUP DURATION=$COUNT_DURATION scenario_args "$2") $(tls_args "$2")"
    perf stat -x, -e raw_syscalls:sys_enter,syscalls:sys_enter_epoll_wait \
        -p "$(tree_pids "$4" | paste -sd,)" -o "$out.syscalls" >/dev/null 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid")
    sleep 0.3 # perf attaches before the load starts; the idle proxy adds next to nothing
    # shellcheck disable=SC2086
    timeout 60 taskset -c "$LOAD_CPU" "$LOADGEN_BIN" $args --url "$(url_of "$3" "$2")" --target "$3" \
        >"$out" 2>"$out.err" || true
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    forget_pid "$perf_pid"
    syscalls=$(awk -F, '$3 == "raw_syscalls:sys_enter" && $1 ~ /^[0-9]+$/ {print $1}' "$out.syscalls" 2>/dev/null)
    epoll_waits=$(awk -F, '$3 == "syscalls:sys_enter_epoll_wait" && $1 ~ /^[0-9]+$/ {print $1}' "$out.syscalls" 2>/dev/null)
    # Every operation of the pass, warm-up included, as perf counted from its start.
    syscall_ops=$(python3 -c 'import json, sys
try:
    r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
    n = (r.get("total_messages") or r.get("total_cycles") or 0)
    print(n if n else "null")
except (OSError, ValueError, IndexError):
    print("null")' "$out")
    syscalls=${syscalls:-null} epoll_waits=${epoll_waits:-null}
}

run_load() { # round scenario target
    local round=$1 scenario=$2 t=$3 args cmd out status=0 proxy_pid="" p0=0 p1=0 k0=0 k1=0 e0 e1
    local proxy_cpu=null proxy_ticks_cpu=null echo_pid=${PID_OF[echo]}
    args="$(scenario_args "$scenario") $(tls_args "$scenario")"
    args=${args% }
    cmd="taskset -c $LOAD_CPU loadgen $args --url $(url_of "$t" "$scenario") --target $t"
    out="$WORK/logs/r$round-$scenario-$t.json"
    [ "$t" = direct ] || proxy_pid=${PID_OF[$t]}
    # Direct over wss talks to the TLS echo: its CPU is the backend's for that run.
    [[ "$t/$scenario" == direct/wss-* ]] && echo_pid=${PID_OF[tls-echo]}
    [ -z "$proxy_pid" ] || { p0=$(cpu_ns "$proxy_pid"); k0=$(cpu_ticks "$proxy_pid"); }
    e0=$(cpu_ns "$echo_pid")
    # shellcheck disable=SC2086
    timeout 120 taskset -c "$LOAD_CPU" "$LOADGEN_BIN" $args --url "$(url_of "$t" "$scenario")" --target "$t" \
        >"$out" 2>"$out.err" || status=$?
    e1=$(cpu_ns "$echo_pid")
    if [ -n "$proxy_pid" ]; then
        p1=$(cpu_ns "$proxy_pid")
        k1=$(cpu_ticks "$proxy_pid")
        proxy_cpu=$(ns_secs $((p1 - p0)))
        proxy_ticks_cpu=$(secs $((k1 - k0)))
    fi
    local syscalls=null epoll_waits=null syscall_ops=null
    if [ "$status" = 0 ] && [ -n "$proxy_pid" ]; then
        count_syscalls "$round" "$scenario" "$t" "$proxy_pid"
    fi
    record "$round" "$scenario" "$t" "$cmd" "$proxy_cpu" "$(ns_secs $((e1 - e0)))" \
        "\"proxy_cpu_ticks_s\":$proxy_ticks_cpu,\"proxy_syscalls\":$syscalls,\"proxy_epoll_waits\":$epoll_waits,\"syscall_ops\":$syscall_ops," "$out" "$status"
    if [ "$status" != 0 ]; then
        FAILURES=$((FAILURES + 1))
        log "  $scenario/$t failed (exit $status): $(head -c 300 "$out.err")"
    else
        log "  $scenario/$t: $(python3 "$BENCH_DIR/report.py" --one-line "$out")"
    fi
}

run_idle() { # round target scenario (idle or wss-idle; a proxy): fresh process, PSS before/while
            # holding, CPU while idle
    local round=$1 t=$2 scenario=$3 pid args cmd out status=0 pss0 pss1 pss2 c0 c1 ready i idle_window lg
    restart_proxy "$t"
    pid=${PID_OF[$t]}
    sleep 0.5
    pss0=$(pss_kb "$pid")
    args="idle --conns $IDLE_CONNS --hold ${IDLE_HOLD_S}s --parallel 64 $(tls_args "$scenario")"
    args=${args% }
    cmd="taskset -c $LOAD_CPU loadgen $args --url $(url_of "$t" "$scenario") --target $t --ready-file READY"
    out="$WORK/logs/r$round-$scenario-$t.json"
    ready="$WORK/idle-ready-$round-$scenario-$t"
    # shellcheck disable=SC2086
    timeout 180 taskset -c "$LOAD_CPU" "$LOADGEN_BIN" $args --url "$(url_of "$t" "$scenario")" --target "$t" \
        --ready-file "$ready" >"$out" 2>"$out.err" &
    lg=$!
    PIDS+=("$lg")
    for i in $(seq 1200); do
        [ -s "$ready" ] && break
        kill -0 "$lg" 2>/dev/null || break
        sleep 0.1
    done
    pss1=null pss2=null idle_window=null c0=0 c1=0
    if [ -s "$ready" ]; then
        sleep 0.5
        pss1=$(pss_kb "$pid")
        c0=$(cpu_ns "$pid")
        idle_window=$((IDLE_HOLD_S - 2))
        sleep "$idle_window"
        c1=$(cpu_ns "$pid")
        pss2=$(pss_kb "$pid")
    fi
    wait "$lg" || status=$?
    forget_pid "$lg"
    record "$round" "$scenario" "$t" "$cmd" null null \
        "\"pss_before_kb\":$pss0,\"pss_held_kb\":$pss1,\"pss_held_late_kb\":$pss2,\"idle_cpu_s\":$(ns_secs $((c1 - c0))),\"idle_window_s\":$idle_window," \
        "$out" "$status"
    if [ "$status" != 0 ]; then
        FAILURES=$((FAILURES + 1))
        log "  $scenario/$t failed (exit $status): $(head -c 300 "$out.err")"
    else
        log "  $scenario/$t: PSS ${pss0} kB -> ${pss1} kB with $IDLE_CONNS held; CPU while idle $(ns_secs $((c1 - c0))) s"
    fi
}

# --- the run ----------------------------------------------------------------------------------
log "mode=$MODE rounds=$ROUNDS targets=$TARGETS work=$WORK"
start_echo
if [ "$WSS" = 1 ] && has_target direct; then
    start_tls_echo
    probe direct wss-probe || die "loadgen tls-echo does not echo over wss"
fi
for t in "${TARGET_LIST[@]}"; do
    [ "$t" = direct ] || start_proxy "$t"
done

SCENARIOS=()
for scenario in throughput bulk latency handshakes wss-throughput wss-bulk wss-latency wss-handshakes wss-resumed; do
    has_scenario "$scenario" && SCENARIOS+=("$scenario")
done
for round in $(seq "$ROUNDS"); do
    # Rotate the target order each round so no target always runs first or last.
    order=()
    n=${#TARGET_LIST[@]}
    for i in $(seq 0 $((n - 1))); do order+=("${TARGET_LIST[$(((i + round - 1) % n))]}"); done
    log "round $round/$ROUNDS: ${order[*]}"
    for scenario in "${SCENARIOS[@]}"; do
        for t in "${order[@]}"; do run_load "$round" "$scenario" "$t"; done
    done
    for scenario in idle wss-idle; do
        has_scenario "$scenario" || continue
        for t in "${order[@]}"; do
            [ "$t" = direct ] || run_idle "$round" "$t" "$scenario"
        done
    done
done

# --- report -----------------------------------------------------------------------------------
# Every value is read with commands that read their whole input (no SIGPIPE under pipefail)
# and turned into JSON by Python, so odd characters in a version string cannot break it.
version_of() { # command args... -> first line of its output, or "absent"
    command -v "$1" >/dev/null || { echo absent; return; }
    "$@" 2>&1 | sed -n '1{s/ - http.*//;p}' || true
}
MODE="$MODE" STARTED_AT="$STARTED_AT" WALL_S=$((SECONDS - START_S)) ROUNDS="$ROUNDS" TARGETS="$TARGETS" \
IDLE_CONNS="$IDLE_CONNS" IDLE_HOLD_S="$IDLE_HOLD_S" WARMUP="$WARMUP" DURATION="$DURATION" NOFILE="$NOFILE" \
CPU_MODEL="$(awk -F': ' '/^model name/ {print $2}' /proc/cpuinfo | sed -n 1p) ($(nproc) cores)" \
MEMORY="$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)" \
KERNEL="$(uname -r)" OS_NAME="$(. /etc/os-release && echo "$PRETTY_NAME")" \
RUSTC="$(version_of rustc --version)" WSGATE_VERSION="$(version_of "$WSGATE_BIN" --version)" \
GIT_REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo '-dirty')" \
NGINX_VERSION="$(version_of nginx -v | sed 's/.*: //')" HAPROXY_VERSION="$(version_of haproxy -v)" \
STARTED_CMDS="$STARTED_CMDS" \
python3 - >"$WORK/meta.json" <<'PY'
import json, os
e = os.environ
print(json.dumps({
    "mode": e["MODE"], "started_at": e["STARTED_AT"], "wall_s": int(e["WALL_S"]),
    "rounds": int(e["ROUNDS"]), "targets": e["TARGETS"], "idle_conns": int(e["IDLE_CONNS"]),
    "idle_hold_s": int(e["IDLE_HOLD_S"]), "warmup": e["WARMUP"], "duration": e["DURATION"],
    "nofile": e["NOFILE"], "cpu": e["CPU_MODEL"], "memory": e["MEMORY"], "kernel": e["KERNEL"],
    "os": e["OS_NAME"], "rustc": e["RUSTC"], "wsgate": e["WSGATE_VERSION"], "git": e["GIT_REV"],
    "nginx": e["NGINX_VERSION"], "haproxy": e["HAPROXY_VERSION"],
    "started": [line for line in e["STARTED_CMDS"].splitlines() if line],
}))
PY
cp "$WORK/nginx/nginx.conf" "$WORK/haproxy/haproxy.cfg" "$WORK/wsgate/routes.yaml" "$WORK/logs/" 2>/dev/null || true

report_args=(--runs "$RUNS" --meta "$WORK/meta.json" --out "$OUT" --scenarios "$SCENARIO_SET")
[ "$MODE" = quick ] && report_args+=(--check)
python3 "$BENCH_DIR/report.py" "${report_args[@]}"
if [ "$OUT" = "$BENCH_DIR/RESULTS.md" ]; then cp "$RUNS" "$BENCH_DIR/results.jsonl"; fi
log "report: $OUT (raw runs: $RUNS; logs: $WORK/logs) in $((SECONDS - START_S)) s"
[ "$FAILURES" = 0 ] || die "$FAILURES scenario runs failed"
