#!/usr/bin/env bash
# Where a proxied message's CPU goes: wsgate's own code or the kernel. Runs wsgate alone on
# core 0 (echo backend and load generator on core 1), loads it with scenario 1 (100 conns ×
# 16 in flight, 64 B) over ws or wss, samples it with `perf record` for 4 s in the middle of
# the load, and prints the samples by shared object plus CPU per message in user space and in
# the kernel (samples ÷ frequency ÷ messages in the sampled window). One run: compare builds
# by running it for each, back to back. bench/RESULTS.md, "Issue 22: wss relays on relay
# threads".
#
#   bench/kernel-share.sh [WSGATE_BIN] [ws|wss]     default: target/release/wsgate, wss
#
# Needs perf, openssl and bench/target/release/loadgen (LOADGEN_BIN). Ports from
# BENCH_PORT_BASE (default 19700).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WSGATE=${1:-$BENCH_DIR/../target/release/wsgate}
SCHEME=${2:-wss}
LOADGEN=${LOADGEN_BIN:-$BENCH_DIR/target/release/loadgen}
BASE=${BENCH_PORT_BASE:-19700}
FREQ=2000 SAMPLE_SECS=4
for tool in perf openssl python3; do
    command -v "$tool" >/dev/null || { echo "kernel-share.sh: needs $tool" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/wsgate-kernel-share.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>"$WORK/openssl.log"
sed -e "s|@ECHO_PORT@|$((BASE + 1))|g" "$BENCH_DIR/peers/wsgate-routes.yaml.in" >"$WORK/routes.yaml"

taskset -c 1 "$WSGATE" echo --listen "127.0.0.1:$((BASE + 1))" --name echo >/dev/null 2>&1 &
PIDS+=($!)
RUST_LOG=warn taskset -c 0 "$WSGATE" run --routes "$WORK/routes.yaml" \
    --listen "127.0.0.1:$((BASE + 2))" --admin-listen "127.0.0.1:$((BASE + 3))" \
    --tls-listen "127.0.0.1:$((BASE + 4))" \
    --default-cert "$WORK/cert.pem" --default-key "$WORK/key.pem" >"$WORK/wsgate.log" 2>&1 &
GATE=$!
PIDS+=("$GATE")
if [ "$SCHEME" = wss ]; then
    URL="wss://127.0.0.1:$((BASE + 4))/bench" TLS_ARGS=(--cert "$WORK/cert.pem" --no-resume)
else
    URL="ws://127.0.0.1:$((BASE + 2))/bench" TLS_ARGS=()
fi
for _ in $(seq 50); do # bounded: wsgate relays an echo within 10 s
    taskset -c 1 "$LOADGEN" handshakes --url "$URL" "${TLS_ARGS[@]}" --target probe --conns 1 \
        --warmup 0s --duration 0.1s >/dev/null 2>&1 && break
    sleep 0.2
done

# The load runs 2 s before and after the sampled window; messages are counted over the window
# from the load's rate (closed loop, steady after its warm-up).
taskset -c 1 "$LOADGEN" throughput --conns 100 --inflight 16 --size 64 --warmup 1s \
    --duration $((SAMPLE_SECS + 4))s --url "$URL" "${TLS_ARGS[@]}" --target wsgate \
    >"$WORK/load.json" 2>"$WORK/load.err" &
LOAD=$!
sleep 3
perf record -F "$FREQ" -g -p "$GATE" -o "$WORK/perf.data" -- sleep "$SAMPLE_SECS" >/dev/null 2>&1
wait "$LOAD"
perf report -i "$WORK/perf.data" --no-children -g none -n --sort dso 2>/dev/null |
    grep -v '^#' | grep -v '^$' >"$WORK/dso.txt"
python3 - "$WORK/dso.txt" "$WORK/load.json" "$FREQ" "$SAMPLE_SECS" "$SCHEME" <<'PY'
import json, sys
dso, load, freq, secs, scheme = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rate = json.loads(open(load).read().strip().splitlines()[-1])["msgs_per_s"]
kernel = user = 0
for line in open(dso):
    parts = line.split()
    n, name = int(parts[1]), parts[2]
    if name.startswith("[kernel"):
        kernel += n
    else:
        user += n
    print(f"  {name:24s} {n:>7,} samples")
msgs = rate * secs
us = lambda n: n / freq / msgs * 1e6
total = kernel + user
print(f"{scheme}: {rate:,.0f} msg/s; kernel {kernel:,} samples ({100*kernel/total:.1f} %), "
      f"user space {user:,} ({100*user/total:.1f} %); per message: user space {us(user):.2f} µs, "
      f"kernel {us(kernel):.2f} µs")
PY
echo "perf data: $WORK/perf.data (perf report -i ... --no-children --sort sym)"
