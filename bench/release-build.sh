# shellcheck shell=bash  # sourced
# The bench scripts' guard against measuring the wrong build of the repository's binary;
# sourced, not run.
#
# `cargo bench` and `cargo test --release` leave a target/release/wsgate that was built with
# the dev-dependencies' tokio features (`process`, `test-util`): 5-15 % more user-space
# instructions per handshake and ~3 % per small message (bench/instructions.sh side by side,
# 44,129 vs 42,149 and 47,611 vs 41,339; 991 vs 959 per message; bench/RESULTS.md, "Run W").
# side-by-side.sh calls it as it starts each wsgate; run.sh, instructions.sh and allocs.sh
# call it for the binaries they are given.
# `cargo build --release` puts the real one back, in well under a second when it is up to date.

fresh_release_wsgate() { # binary path: rebuilt first when it is the repository's own release binary
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [ -z "${CARGO_TARGET_DIR:-}" ] &&
        [ "$(realpath -m "$1")" = "$(realpath -m "$repo/target/release/wsgate")" ]; then
        cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin wsgate
    fi
}
