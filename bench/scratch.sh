# shellcheck shell=bash disable=SC2034  # sourced; the caller reads WORK and PIDS
# A tool's scratch directory (removed when the tool succeeds, unless KEEP_SCRATCH is set), the
# processes to stop when it exits, and the routes file that points wsgate at the echo backend.
# Sourced by side-by-side.sh and under-valgrind.sh.
# Needs BENCH_DIR, SCRATCH_NAME (for the directory's name) and ECHO_PORT.

WORK=$(mktemp -d "/tmp/wsgate-${SCRATCH_NAME}.XXXXXX")
PIDS=()
stop_all() { # the directory goes too unless the tool failed or KEEP_SCRATCH is set
    local rc=$? p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$rc" -eq 0 ] && [ -z "${KEEP_SCRATCH:-}" ]; then
        rm -rf "$WORK"
    else
        echo "logs and configs kept in $WORK" >&2
    fi
}
trap stop_all EXIT
sed -e "s|@ECHO_PORT@|$ECHO_PORT|" "$BENCH_DIR/peers/wsgate-routes.yaml.in" >"$WORK/routes.yaml"
# WSGATE_ROUTE_EXTRA: YAML lines added under the route's `spec` (two-space indent), to
# measure a route with more fields set (bench/edge-cost.sh).
if [ -n "${WSGATE_ROUTE_EXTRA:-}" ]; then
    printf '%s\n' "$WSGATE_ROUTE_EXTRA" >>"$WORK/routes.yaml"
fi
