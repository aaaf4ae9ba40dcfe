#!/usr/bin/env bash
# Per-message system calls and sleeps of the echo backend, the load generator and each proxy
# in one scenario (default: scenario 1), targets alternating, a few short rounds. Shows who
# pays for what on the shared core: bench/RESULTS.md, "Runs M and after".
#
#   bench/syscall-mix.sh [LOADGEN ARGS...]     e.g. bench/syscall-mix.sh throughput --conns 100 --inflight 16 --size 64
#
# WSGATE_BIN, LOADGEN_BIN, ROUNDS (default 3), SECS (default 4) and TARGETS (default
# "direct wsgate nginx haproxy") adjust it. Pinning as in run.sh. Needs perf with tracepoints
# (root or perf_event_paranoid <= 1). perf is attached to every process during the runs, so
# rates and CPU here are lower than run.sh's; compare the counts, not the speeds.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WSGATE=${WSGATE_BIN:-$BENCH_DIR/../target/release/wsgate}
LOADGEN=${LOADGEN_BIN:-$BENCH_DIR/target/release/loadgen}
ROUNDS=${ROUNDS:-3} SECS=${SECS:-4}
TARGETS=${TARGETS:-direct wsgate nginx haproxy}
[ $# -gt 0 ] || set -- throughput --conns 100 --inflight 16 --size 64
BASE=${BENCH_PORT_BASE:-19300}
for tool in perf nginx haproxy python3; do
    command -v "$tool" >/dev/null || { echo "syscall-mix.sh: needs $tool" >&2; exit 1; }
done

SIDE_BY_SIDE_NAME=mix
# shellcheck source=bench/side-by-side.sh
. "$BENCH_DIR/side-by-side.sh"
start_peers "$WSGATE"
# shellcheck disable=SC2086
wait_relaying $TARGETS

EVENTS=raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,sched:sched_switch
for round in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
        e0=$(cpu_ns "$ECHO_PID")
        perf stat -x, -e "$EVENTS" -p "$ECHO_PID" -o "$WORK/echo.stat" >/dev/null 2>&1 &
        echo_perf=$!
        proxy_perf=""
        if [ "$t" != direct ]; then
            perf stat -x, -e "$EVENTS" -p "${PID[$t]}" -o "$WORK/proxy.stat" >/dev/null 2>&1 &
            proxy_perf=$!
        fi
        sleep 0.3
        out=$(perf stat -x, -e "$EVENTS" -o "$WORK/loadgen.stat" -- taskset -c 1 "$LOADGEN" "$@" \
            --warmup 1s --duration "${SECS}s" --url "ws://127.0.0.1:${PORT[$t]}/bench" --target "$t")
        e1=$(cpu_ns "$ECHO_PID")
        kill -INT "$echo_perf" $proxy_perf 2>/dev/null || true
        wait "$echo_perf" $proxy_perf 2>/dev/null || true
        [ -n "$proxy_perf" ] || : >"$WORK/proxy.stat"
        python3 - "$round" "$t" "$out" $((e1 - e0)) "$WORK" <<'PY'
import json, os, sys
rnd, target, out, echo_ns, work = sys.argv[1:]
r = json.loads(out.strip().splitlines()[-1])
ops = r.get("total_messages") or r.get("total_cycles") or 0
rate = r.get("msgs_per_s") or r.get("per_s") or 0
def counts(name):
    got = {}
    for line in open(os.path.join(work, name + ".stat")):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            got[f[2].split(":")[-1].replace("sys_enter_", "")] = int(f[0]) / max(ops, 1)
    return got
def show(d):
    names = [("sys_enter", "calls"), ("recvfrom", "recv"), ("sendto", "send"), ("epoll_wait", "epoll"), ("sched_switch", "sleeps")]
    return "  ".join(f"{label} {d[k]:.3f}" for k, label in names if k in d)
print(f"round {rnd} {target:8s} {rate:>10,.0f}/s  echo backend CPU {int(echo_ns) / 1e3 / max(ops, 1):.2f} µs/op")
print(f"    echo backend   {show(counts('echo'))}")
print(f"    load generator {show(counts('loadgen'))}")
proxy = counts("proxy")
if proxy:
    print(f"    proxy          {show(proxy)}")
PY
    done
done
