//! A cheap per-thread random number source for what needs spreading or unpredictability to
//! a remote party, not secrecy: the mask keys of wsgate's own frames toward a backend, and
//! each connection's place in a drain budget. A xorshift per thread, seeded from the
//! process's random hasher keys; no lock, no system call after the seed.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new({
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9E37_79B9_7F4A_7C15);
        // Never zero: xorshift would stay there.
        h.finish() | 1
    });
}

/// The next 64 random bits of this thread.
pub(crate) fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    /// Successive values differ and use the high bits too (drain spreads take the top 16).
    #[test]
    fn values_differ_and_spread_over_the_high_bits() {
        let values: Vec<u64> = (0..1000).map(|_| super::next_u64()).collect();
        let distinct: std::collections::HashSet<_> = values.iter().collect();
        assert_eq!(distinct.len(), values.len());
        let high: std::collections::HashSet<_> = values.iter().map(|v| v >> 56).collect();
        assert!(high.len() > 100, "{} distinct top bytes", high.len());
    }
}
