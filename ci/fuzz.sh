#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes for a bounded time (fuzz/README.md): builds the
# targets of fuzz/ once, then runs each for FUZZ_SECONDS starting from its committed corpus
# and regressions. Any crash, failed check, timeout or memory blow-up fails the run; the
# input that caused it is left in fuzz/artifacts/<target>/ and named in the output.
#
#   bash ci/fuzz.sh                         # every target, 20 s each, two at a time
#   FUZZ_SECONDS=600 bash ci/fuzz.sh template frame_tracker
#
# Environment: FUZZ_SECONDS (per target, default 20), FUZZ_JOBS (targets run at once,
# default 2: one per core of the CI machine), FUZZ_SANITIZER (default none: the crate has
# no unsafe code, so AddressSanitizer finds nothing the fuzzer's own checks miss, and costs
# build time and speed; `address` works too).
#
# cargo-fuzz comes from crates.io, pinned and --locked, when the installed one is not that
# version. It passes -Z flags to rustc, which a stable toolchain accepts only with
# RUSTC_BOOTSTRAP=1. New inputs the fuzzer finds go to a scratch directory: the committed
# corpus changes only when someone copies inputs into it (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH=${FUZZ_SECONDS:-20}
JOBS=${FUZZ_JOBS:-2}
SANITIZER=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
# The fuzz crate's own target dir, whatever the caller uses for the main crate.
unset CARGO_TARGET_DIR

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != *" $CARGO_FUZZ_VERSION" ]]; then
  echo "-- installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# cargo fuzz has no --locked: check the lock file first, so a stale one fails here.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null

if (($# > 0)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

echo "-- building ${#targets[@]} targets (sanitizer: $SANITIZER)"
start=$(date +%s)
cargo fuzz build --fuzz-dir fuzz --sanitizer "$SANITIZER"
echo "-- built in $(($(date +%s) - start)) s"

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

# One target: SECONDS_EACH of fuzzing, its log in $SCRATCH/<target>.log.
run() {
  local target=$1
  local dirs=("$SCRATCH/$target" "fuzz/corpus/$target")
  [[ -d "fuzz/regressions/$target" ]] && dirs+=("fuzz/regressions/$target")
  mkdir -p "$SCRATCH/$target"
  # -timeout: one input taking this long is a hang and fails the run.
  cargo fuzz run --fuzz-dir fuzz --sanitizer "$SANITIZER" "$target" "${dirs[@]}" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$SCRATCH/$target.log" 2>&1
}

fuzz_stat() { sed -n "s/^stat::$1: *//p" "$SCRATCH/$2.log" | tail -1; }

failed=()
pids=()
names=()
report() {
  local i=$1 target=${names[$1]}
  if wait "${pids[$i]}"; then
    echo "-- $target: ok, $(fuzz_stat number_of_executed_units "$target") runs," \
      "$(fuzz_stat average_exec_per_sec "$target") runs/s, $(fuzz_stat new_units_added "$target") new inputs," \
      "peak RSS $(fuzz_stat peak_rss_mb "$target") MB"
  else
    failed+=("$target")
    echo "-- $target: FAILED; the end of its log:"
    tail -n 60 "$SCRATCH/$target.log"
  fi
}

echo "-- fuzzing each target for $SECONDS_EACH s, $JOBS at a time"
start=$(date +%s)
for target in "${targets[@]}"; do
  if ((${#pids[@]} >= JOBS)); then
    first=$((${#pids[@]} - JOBS))
    report "$first"
  fi
  run "$target" &
  pids+=($!)
  names+=("$target")
done
for ((i = ${#pids[@]} - JOBS < 0 ? 0 : ${#pids[@]} - JOBS; i < ${#pids[@]}; i++)); do
  report "$i"
done
echo "-- fuzzed in $(($(date +%s) - start)) s"

if ((${#failed[@]} > 0)); then
  echo "fuzzing failed: ${failed[*]} (inputs in fuzz/artifacts/; see fuzz/README.md)" >&2
  exit 1
fi
