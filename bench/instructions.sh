#!/usr/bin/env bash
# User-space instructions per proxied WebSocket handshake (or message), counted by valgrind's
# callgrind (exact, not timed, so it resolves differences of a few per cent that this
# machine's timing noise hides). Start-up is taken out: wsgate runs twice, for a short and a
# longer load, and the figure is the difference in instructions over the difference in
# operations.
#
#   bench/instructions.sh [WSGATE_BIN...]    default: target/release/wsgate (rebuilt first if stale)
#   LOAD="throughput --conns 10 --inflight 4 --size 64" bench/instructions.sh ...   per message
#   WSGATE_ROUTE_EXTRA (YAML under the route's spec), BENCH_URL_QUERY (`?a=b` on every URL):
#   a route with more checks (bench/edge-cost.sh)
#
# Several binaries are measured one after another, each against the same echo backend (the
# first binary's `wsgate echo`). Prints instructions per handshake and, for the last binary,
# the functions that executed the most of them. Needs valgrind and bench/target/release/loadgen.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
[ $# -gt 0 ] || set -- "$REPO/target/release/wsgate"
LOADGEN=${LOADGEN_BIN:-$BENCH_DIR/target/release/loadgen}
LOAD=${LOAD:-handshakes --conns 1}
PORT_BASE=${BENCH_PORT_BASE:-19150}
ECHO=127.0.0.1:$((PORT_BASE + 1))
GATEWAY=127.0.0.1:$((PORT_BASE + 2))
ADMIN=127.0.0.1:$((PORT_BASE + 3))
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind" >&2; exit 1; }
# shellcheck source=bench/release-build.sh
. "$BENCH_DIR/release-build.sh"
for bin in "$@" "$LOADGEN"; do
    fresh_release_wsgate "$bin"
    [ -x "$bin" ] || { echo "instructions.sh: build $bin first" >&2; exit 1; }
done

VALGRIND_TOOL_NAME=instructions
# shellcheck source=bench/under-valgrind.sh
. "$BENCH_DIR/under-valgrind.sh"
start_echo "$1"

# One callgrind run of BIN under SECS seconds of load: writes $WORK/NAME.{out,json}.
measure() { # bin name secs
    # One CPU, as in the benchmark: one worker on a current-thread runtime.
    RUST_LOG=warn taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/$2.out" "$1" run \
        --routes "$WORK/routes.yaml" --listen "$GATEWAY" --admin-listen "$ADMIN" >"$WORK/$2.log" 2>&1 &
    local gw=$!
    PIDS+=("$gw")
    wait_gateway
    # shellcheck disable=SC2086
    "$LOADGEN" $LOAD --url "ws://$GATEWAY/bench${BENCH_URL_QUERY:-}" --target wsgate --warmup 0s \
        --duration "${3}s" >"$WORK/$2.json"
    kill -INT "$gw"
    wait "$gw" || true
}

i=0
for bin in "$@"; do
    i=$((i + 1))
    measure "$bin" "b$i-short" 1
    measure "$bin" "b$i-long" 4
    python3 - "$WORK" "b$i" "$bin" <<'PY'
import json, re, sys
work, name, bin_ = sys.argv[1:]
def run(kind):
    with open(f"{work}/{name}-{kind}.json") as f:
        r = json.loads(f.read().strip().splitlines()[-1])
        n = r.get("total_cycles") or r.get("total_messages") or 0
    with open(f"{work}/{name}-{kind}.out") as f:
        ir = next(int(l.split()[1]) for l in f if l.startswith("summary:") or l.startswith("totals:"))
    return n, ir
(n1, i1), (n2, i2) = run("short"), run("long")
print(f"{bin_}: {(i2 - i1) / max(n2 - n1, 1):,.0f} instructions per operation "
      f"({n2 - n1} operations apart)")
PY
done
echo "functions of the last binary (4 s run, start-up included):"
callgrind_annotate "$WORK/b$i-long.out" 2>/dev/null | sed -n '/^Ir/,$p' | sed -n '1,40p'
echo "callgrind profiles: $WORK"
