#!/usr/bin/env bash
# Two wsgate builds and nginx side by side on one scenario: proxy CPU and system calls per
# operation, a few short rounds, targets alternating. For checking one change quickly; the
# full comparison is run.sh. Used for the handshake-path rows of bench/RESULTS.md.
#
#   bench/pair.sh BEFORE_BIN AFTER_BIN SCENARIO [LOADGEN ARGS...]
#   e.g. bench/pair.sh /tmp/wsgate-old target/release/wsgate handshakes --conns 8 --size 64
#
# ECHO_BIN (the echo backend; default AFTER), ROUNDS (default 3), SECS (measured seconds per run, default 3) and COUNT_SECS (the separate,
# traced pass that counts system calls, default 1) adjust it. Pinning as in
# run.sh: proxies on core 0, echo backend and load generator on core 1. System calls need
# `perf stat` (root or perf_event_paranoid <= 1).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 3 ] || { sed -n '2,12p' "$0"; exit 2; }
BEFORE=$1 AFTER=$2 SCENARIO=$3
shift 3
LOADGEN=${LOADGEN_BIN:-$BENCH_DIR/target/release/loadgen}
ROUNDS=${ROUNDS:-3} SECS=${SECS:-3} COUNT_SECS=${COUNT_SECS:-1}
BASE=${BENCH_PORT_BASE:-19200}
command -v nginx >/dev/null || { echo "pair.sh: needs nginx (apt-get install nginx)" >&2; exit 1; }

SIDE_BY_SIDE_NAME=pair
# shellcheck source=bench/side-by-side.sh
. "$BENCH_DIR/side-by-side.sh"
start_echo "${ECHO_BIN:-$AFTER}"
start_wsgate before "$BEFORE" $((BASE + 2))
start_wsgate after "$AFTER" $((BASE + 4))
start_nginx $((BASE + 6))
wait_relaying before after nginx

# Times the proxy went to sleep and was woken (voluntary context switches, all threads).
sleeps() { awk '/^voluntary_ctxt_switches/ {t += $2} END {print t}' /proc/"$1"/task/*/status; }
# User-space clock ticks, all threads (the kernel's tick sampling: coarse, fine over seconds).
uticks() { awk '{t += $14} END {print t}' /proc/"$1"/task/*/stat; }
sticks() { awk '{t += $15} END {print t}' /proc/"$1"/task/*/stat; }
for round in $(seq "$ROUNDS"); do
    for t in before after nginx; do
        pid=${PID[$t]}
        c0=$(cpu_ns "$pid") s0=$(sleeps "$pid") u0=$(uticks "$pid") k0=$(sticks "$pid")
        e0=$(cpu_ns "$ECHO_PID")
        out=$(taskset -c 1 "$LOADGEN" "$SCENARIO" "$@" --warmup 1s --duration "${SECS}s" \
            --url "ws://127.0.0.1:${PORT[$t]}/bench" --target "$t")
        c1=$(cpu_ns "$pid") s1=$(sleeps "$pid") u1=$(uticks "$pid") k1=$(sticks "$pid")
        e1=$(cpu_ns "$ECHO_PID")
        # System calls in a separate short pass: tracing the measured run would slow the
        # traced proxy (more for the one making more calls) and skew the CPU figures.
        perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$WORK/perf.$t" >/dev/null 2>&1 &
        perf_pid=$!
        counted=$(taskset -c 1 "$LOADGEN" "$SCENARIO" "$@" --warmup 0.2s --duration "${COUNT_SECS}s" \
            --url "ws://127.0.0.1:${PORT[$t]}/bench" --target "$t")
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        python3 - "$round" "$t" "$out" $((c1 - c0)) "$WORK/perf.$t" $((s1 - s0)) $((u1 - u0)) $((k1 - k0)) $((e1 - e0)) "$counted" <<'PY'
import json, sys
rnd, target, out, cpu_ns, perf, sleeps, uticks, kticks, echo_ns, counted = sys.argv[1:]
def ops_of(text):
    r = json.loads(text.strip().splitlines()[-1])
    return r, r.get("total_messages") or r.get("total_cycles") or 0
r, ops = ops_of(out)
rate = r.get("msgs_per_s") or r.get("per_s") or r.get("achieved_rate") or 0
calls = None
try:
    for line in open(perf):
        f = line.strip().split(",")
        if len(f) > 2 and f[2] == "raw_syscalls:sys_enter" and f[0].isdigit():
            calls = int(f[0])
except OSError:
    pass
# perf counted the whole pass; the total_* counts include its warm-up too.
_, counted_ops = ops_of(counted)
per = f"{calls / counted_ops:.2f}" if calls is not None and counted_ops else "—"
p99 = (r.get("rtt_us") or r.get("cycle_us") or {}).get("p99")
print(f"round {rnd} {target:6s} {rate:>10,.0f}/s  p99 {p99} µs  proxy CPU {int(cpu_ns) / 1e3 / max(ops, 1):.2f} µs/op  system calls {per}/op  sleeps {int(sleeps) / max(ops, 1):.2f}/op  user {100 * int(uticks) / max(int(uticks) + int(kticks), 1):.1f}%"
      f"  echo backend CPU {int(echo_ns) / 1e3 / max(ops, 1):.2f} µs/op")
PY
    done
done
