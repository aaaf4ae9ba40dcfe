#!/usr/bin/env bash
# Memory per idle relayed WebSocket, user space and kernel, for the capacity page
# (docs/scale.md, issue 22): what one more idle connection costs wsgate's process (PSS) and
# the kernel (the slab objects of its sockets and their buffers), against a direct
# connection to the same echo backend, so the kernel cost of the extra hop shows.
#
#   bench/kernel-memory.sh [WSGATE_BIN] [LOADGEN_BIN]     # as root (reads /proc/slabinfo)
#
# Opens IDLE_CONNS (default 5,000) idle connections direct, then through wsgate, and prints
# per connection: the change in the socket-related slab caches (TCP, sockets' inodes and
# dentries, open files, epoll entries) and in the TCP buffer memory of /proc/net/sockstat,
# and wsgate's PSS. The caches are read by name, so other work on the machine (a compiler)
# moves them little; dentries and files are shared with everything else and are the noisy
# part. Ports BENCH_PORT_BASE (default 23400) .. +1 on 127.0.0.1.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$BENCH_DIR")
WSGATE_BIN=${1:-${WSGATE_BIN:-$REPO/target/release/wsgate}}
LOADGEN_BIN=${2:-${LOADGEN_BIN:-$BENCH_DIR/target/release/loadgen}}
N=${IDLE_CONNS:-5000}
BASE=${BENCH_PORT_BASE:-23400}
ECHO_PORT=$BASE
GW_PORT=$((BASE + 1))
WORK=$(mktemp -d /tmp/wsgate-kmem.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
[ -r /proc/slabinfo ] || { echo "kernel-memory.sh: needs root (/proc/slabinfo)" >&2; exit 2; }
[ -x "$WSGATE_BIN" ] && [ -x "$LOADGEN_BIN" ] || { echo "kernel-memory.sh: WSGATE_BIN and LOADGEN_BIN must be built" >&2; exit 2; }
ulimit -n "$(ulimit -Hn)"

# Bytes held by the socket-related slab caches (active objects × object size).
slab_bytes() {
    awk '$1 ~ /^(TCP|TCPv6|sock_inode_cache|dentry|filp|eventpoll_epi|eventpoll_pwq|skbuff_head_cache|kmalloc-rcl-.*)$/ {s += $2 * $4} END {printf "%.0f\n", s}' /proc/slabinfo
}
# TCP buffer memory (pages) from sockstat, in bytes.
tcp_mem_bytes() {
    awk -v pg="$(getconf PAGESIZE)" '$1 == "TCP:" {for (i = 2; i < NF; i++) if ($i == "mem") print $(i + 1) * pg}' /proc/net/sockstat
}
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "kernel-memory.sh: nothing listens on $1" >&2
    exit 1
}

"$WSGATE_BIN" echo --listen "127.0.0.1:$ECHO_PORT" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
sed -e "s|@ECHO_PORT@|$ECHO_PORT|g" "$BENCH_DIR/peers/wsgate-routes.yaml.in" >"$WORK/routes.yaml"
"$WSGATE_BIN" run --routes "$WORK/routes.yaml" --listen "127.0.0.1:$GW_PORT" \
    --admin-listen 127.0.0.1:0 >"$WORK/wsgate.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_port "$ECHO_PORT"
wait_port "$GW_PORT"

# measure TARGET PORT: prints "slab_bytes tcp_mem_bytes pss_kb" deltas per connection.
measure() {
    local target=$1 port=$2 ready=$WORK/ready-$1 s0 m0 p0 s1 m1 p1 lg
    sync
    s0=$(slab_bytes) m0=$(tcp_mem_bytes) p0=$(pss_kb "$GW_PID")
    "$LOADGEN_BIN" idle --conns "$N" --hold 6s --parallel 64 --url "ws://127.0.0.1:$port/bench" \
        --target "$target" --ready-file "$ready" >"$WORK/$target.json" 2>"$WORK/$target.err" &
    lg=$!
    for _ in $(seq 600); do [ -s "$ready" ] && break; sleep 0.05; done
    [ -s "$ready" ] || { echo "kernel-memory.sh: $target never got $N connections open: $(cat "$WORK/$target.err")" >&2; exit 1; }
    sleep 1
    s1=$(slab_bytes) m1=$(tcp_mem_bytes) p1=$(pss_kb "$GW_PID")
    wait "$lg"
    awk -v n="$N" -v t="$target" -v s="$((s1 - s0))" -v m="$((m1 - m0))" -v p="$((p1 - p0))" \
        'BEGIN {printf "%-7s per idle connection: kernel slab %6.0f B, TCP buffers %5.0f B, wsgate PSS %6.0f B\n", t, s / n, m / n, p * 1024 / n}'
}

echo "# $N idle connections; kernel figures count every socket of the path (client, proxy, backend)"
measure direct "$ECHO_PORT"
sleep 2 # the direct connections' sockets leave the slab caches (TIME_WAIT) before the next pass
measure wsgate "$GW_PORT"
