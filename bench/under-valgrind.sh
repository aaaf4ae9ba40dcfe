# shellcheck shell=bash disable=SC2034  # sourced
# Shared set-up of the valgrind tools (allocs.sh, instructions.sh); sourced, not run.
# Needs BENCH_DIR, ECHO (host:port of the echo backend), GATEWAY and LOADGEN set by the caller,
# and VALGRIND_TOOL_NAME (for the work directory's name).

ECHO_PORT=${ECHO##*:}
SCRATCH_NAME=${VALGRIND_TOOL_NAME:-valgrind}
KEEP_SCRATCH=1 # the profiles in it are what these tools are run for
# shellcheck source=bench/scratch.sh
. "$BENCH_DIR/scratch.sh"

start_echo() { # wsgate binary: the echo backend every measured gateway relays to
    "$1" echo --listen "$ECHO" >"$WORK/echo.log" 2>&1 &
    PIDS+=($!)
}

wait_gateway() { # until a gateway under valgrind relays an echo (bounded: 150 tries, 0.2 s apart)
    for _ in $(seq 150); do
        "$LOADGEN" handshakes --url "ws://$GATEWAY/probe${BENCH_URL_QUERY:-}" --target probe --conns 1 --warmup 0s \
            --duration 0.1s >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "gateway at $GATEWAY never relayed an echo" >&2
    return 1
}
