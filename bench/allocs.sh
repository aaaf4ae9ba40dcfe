#!/usr/bin/env bash
# Heap allocations per proxied WebSocket handshake, counted by valgrind's dhat (exact, not
# timed, so it needs no quiet machine). Used for the handshake-path rows of bench/RESULTS.md.
#
#   bench/allocs.sh [WSGATE_BIN]        default: target/release/wsgate (rebuilt first if stale)
#
# The binary must use the system allocator, the only one dhat sees: build it with
# `cargo build --release --no-default-features` (the default build uses mimalloc).
#
# Starts `wsgate echo` and `wsgate run` under dhat on loopback, runs the load generator's
# handshake scenario (connect, one echo, close) with one client for 3 s, stops wsgate with
# SIGINT and prints allocations and bytes allocated per handshake (start-up included, so a
# longer run reads slightly lower). Needs valgrind and bench/target/release/loadgen.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
WSGATE=${1:-$REPO/target/release/wsgate}
LOADGEN=${LOADGEN_BIN:-$BENCH_DIR/target/release/loadgen}
PORT_BASE=${BENCH_PORT_BASE:-19100}
ECHO=127.0.0.1:$((PORT_BASE + 1))
GATEWAY=127.0.0.1:$((PORT_BASE + 2))
ADMIN=127.0.0.1:$((PORT_BASE + 3))
command -v valgrind >/dev/null || { echo "allocs.sh: needs valgrind" >&2; exit 1; }
# shellcheck source=bench/release-build.sh
. "$BENCH_DIR/release-build.sh"
fresh_release_wsgate "$WSGATE"
[ -x "$WSGATE" ] && [ -x "$LOADGEN" ] || { echo "allocs.sh: build $WSGATE and $LOADGEN first" >&2; exit 1; }

VALGRIND_TOOL_NAME=allocs
# shellcheck source=bench/under-valgrind.sh
. "$BENCH_DIR/under-valgrind.sh"
start_echo "$WSGATE"
RUST_LOG=warn valgrind --tool=dhat --dhat-out-file="$WORK/dhat.json" "$WSGATE" run \
    --routes "$WORK/routes.yaml" --listen "$GATEWAY" --admin-listen "$ADMIN" >"$WORK/dhat.log" 2>&1 &
GW=$!
PIDS+=("$GW")
wait_gateway
"$LOADGEN" handshakes --url "ws://$GATEWAY/bench" --target wsgate --conns 1 --warmup 0s \
    --duration 3s >"$WORK/run.json"
kill -INT "$GW"
wait "$GW" || true
python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
with open(f"{work}/run.json") as f:
    handshakes = json.loads(f.read().strip().splitlines()[-1])["total_cycles"]
with open(f"{work}/dhat.json") as f:
    points = json.load(f)["pps"]
blocks = sum(p["tbk"] for p in points)
size = sum(p["tb"] for p in points)
if blocks < handshakes:
    print("allocs.sh: dhat saw almost no allocations: is this a mimalloc build? "
          "Use one built with --no-default-features.", file=sys.stderr)
print(f"{handshakes} handshakes: {blocks / handshakes:.1f} allocations and "
      f"{size / handshakes / 1024:.1f} KiB allocated per handshake (start-up included)")
PY
echo "dhat profile: $WORK/dhat.json (open with dh_view.html)"
