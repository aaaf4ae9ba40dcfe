#!/usr/bin/env bash
# wsgate, nginx and HAProxy next to the floor (loadgen/src/bin/floor.rs: one bare
# edge-triggered epoll loop that only copies bytes) on one scenario, targets rotating each
# round: how much of a proxy's cost any event loop pays here, and how much the proxy adds.
# bench/RESULTS.md, "Run V".
#
#   bench/floor.sh [LOADGEN ARGS...]    default: scenario 1, throughput --conns 100 --inflight 16 --size 64
#
# WSGATE_BIN, LOADGEN_BIN, FLOOR_BIN, ROUNDS (default 6), SECS (measured seconds per run,
# default 3) and TARGETS (default "wsgate nginx haproxy floor"; also "wsgate-tokio": wsgate
# with --relay-threads 0, every relay on the async runtime; "floor-uring": the floor on
# io_uring, loadgen/src/bin/floor_uring.rs, issue 22 item 4) adjust it; FLOOR_ENV (e.g.
# "FLOOR_BATCH=1" or "FLOOR_WORK_NS=300") picks a variant of the floor (floor.rs lists them).
# WARM=1 first runs 1 s of small messages through every target, so a wsgate that moves busy
# relays to a relay thread has started one before, e.g., handshakes are measured.
# Pinning as in run.sh: proxies on core 0, echo backend and load generator on core 1;
# ECHO_CPU=0 puts the echo backend on core 0 with the proxies (side-by-side.sh).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WSGATE=${WSGATE_BIN:-$BENCH_DIR/../target/release/wsgate}
LOADGEN=${LOADGEN_BIN:-$BENCH_DIR/target/release/loadgen}
FLOOR=${FLOOR_BIN:-$(dirname "$LOADGEN")/floor}
ROUNDS=${ROUNDS:-6} SECS=${SECS:-3}
read -r -a TARGET_LIST <<<"${TARGETS:-wsgate nginx haproxy floor}"
[ $# -gt 0 ] || set -- throughput --conns 100 --inflight 16 --size 64
BASE=${BENCH_PORT_BASE:-19600}
for tool in nginx haproxy python3; do
    command -v "$tool" >/dev/null || { echo "floor.sh: needs $tool" >&2; exit 1; }
done

SIDE_BY_SIDE_NAME=floor
# shellcheck source=bench/side-by-side.sh
. "$BENCH_DIR/side-by-side.sh"
start_peers "$WSGATE"
read -r -a FLOOR_VARIANT <<<"${FLOOR_ENV:-}"
start_floor "$FLOOR" $((BASE + 6)) "${FLOOR_VARIANT[@]}"
[[ " ${TARGET_LIST[*]} " != *" wsgate-tokio "* ]] ||
    start_wsgate wsgate-tokio "$WSGATE" $((BASE + 8)) --relay-threads 0
if [[ " ${TARGET_LIST[*]} " == *" floor-uring "* ]]; then
    start_floor_uring "$(dirname "$FLOOR")/floor-uring" $((BASE + 10))
    sleep 0.2
    if ! kill -0 "${PID[floor-uring]}" 2>/dev/null; then
        # Exit 3: no io_uring on this kernel or in this sandbox. Said, and measured without it.
        echo "floor.sh: floor-uring did not start ($(cat "$WORK/floor-uring.log")); measuring without it" >&2
        read -r -a TARGET_LIST <<<"$(tr ' ' '\n' <<<"${TARGET_LIST[*]}" | grep -vx floor-uring | tr '\n' ' ')"
    fi
fi
wait_relaying "${TARGET_LIST[@]}"
if [ -n "${WARM:-}" ]; then
    for t in "${TARGET_LIST[@]}"; do
        taskset -c 1 "$LOADGEN" throughput --conns 10 --inflight 4 --size 64 --warmup 0s \
            --duration 1s --url "ws://127.0.0.1:${PORT[$t]}/warm" --target "$t" >/dev/null
    done
fi

n=${#TARGET_LIST[@]}
for round in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((n - 1))); do
        t=${TARGET_LIST[$(((i + round - 1) % n))]}
        pid=${PID[$t]}
        c0=$(cpu_ns "$pid") e0=$(cpu_ns "$ECHO_PID")
        out=$(taskset -c 1 "$LOADGEN" "$@" --warmup 1s --duration "${SECS}s" \
            --url "ws://127.0.0.1:${PORT[$t]}/bench" --target "$t")
        c1=$(cpu_ns "$pid") e1=$(cpu_ns "$ECHO_PID")
        printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$t" $((c1 - c0)) $((e1 - e0)) \
            "$(tail -n 1 <<<"$out")" >>"$WORK/rows.tsv"
    done
done

python3 - "$WORK/rows.tsv" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rnd, target, proxy_ns, echo_ns, out = line.rstrip("\n").split("\t", 4)
    r = json.loads(out)
    ops = r.get("total_messages") or r.get("total_cycles") or 0
    lat = r.get("rtt_us") or r.get("cycle_us") or {}
    rows[(int(rnd), target)] = {
        "rate": r.get("msgs_per_s") or r.get("per_s") or r.get("achieved_rate") or 0,
        "p50": lat.get("p50"), "p99": lat.get("p99"), "p999": lat.get("p999"),
        "proxy_us": int(proxy_ns) / 1e3 / max(ops, 1), "echo_us": int(echo_ns) / 1e3 / max(ops, 1),
    }
    x = rows[(int(rnd), target)]
    print(f"round {rnd} {target:12s} {x['rate']:>10,.0f}/s  p50 {x['p50']} µs  p99 {x['p99']} µs  p999 {x['p999']} µs"
          f"  proxy CPU {x['proxy_us']:.2f} µs/op  echo backend CPU {x['echo_us']:.2f} µs/op")
targets = list(dict.fromkeys(t for _, t in rows))
rounds = sorted({r for r, _ in rows})
print("\nmedians over", len(rounds), "rounds")
for t in targets:
    col = lambda k: statistics.median(rows[(r, t)][k] for r in rounds if rows[(r, t)][k] is not None)
    print(f"  {t:12s} {col('rate'):>10,.0f}/s  p99 {col('p99'):.0f} µs  p999 {col('p999'):.0f} µs  proxy CPU {col('proxy_us'):.2f} µs/op"
          f"  echo backend CPU {col('echo_us'):.2f} µs/op")
def versus(a, b, key, better):
    wins = sum(better(rows[(r, a)][key], rows[(r, b)][key]) for r in rounds)
    ratio = statistics.median(rows[(r, a)][key] / rows[(r, b)][key] for r in rounds)
    print(f"  {a} vs {b}, {key}: {ratio:.2f}× by round, {a} ahead in {wins} of {len(rounds)}")
print("round by round")
higher, lower = (lambda x, y: x > y), (lambda x, y: x < y)
for a, b in [("floor-uring", "floor"), ("floor", "haproxy"), ("floor", "nginx"), ("wsgate", "floor"), ("wsgate", "haproxy"),
             ("wsgate", "nginx"), ("wsgate", "wsgate-tokio"), ("wsgate-tokio", "haproxy"),
             ("wsgate-tokio", "nginx")]:
    if a in targets and b in targets:
        versus(a, b, "rate", higher)
        versus(a, b, "p99", lower)
        versus(a, b, "p999", lower)
        versus(a, b, "proxy_us", lower)
PY
