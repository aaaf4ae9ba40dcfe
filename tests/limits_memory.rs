//! The per-client rate table's real heap use under a flood of a million distinct client
//! addresses, counted by a global allocator that tracks live bytes (one test in this binary,
//! so nothing else allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use wsgate::model::RateLimit;
use wsgate::table::admission::{rate_table_bound, CLIENT_CAPACITY};
use wsgate::table::Admission;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A million distinct IPv4 and IPv6 clients through one route's rate limiter: the heap it
/// holds stays within `rate_table_bound` (plus the shards' locks), however many addresses.
#[test]
fn a_flood_of_distinct_addresses_holds_bounded_memory() {
    let rule = RateLimit {
        period: Duration::from_secs(3600),
        wait: Duration::from_secs(3600),
        limit: 5,
        whitelist: vec![],
    };
    let admission = Admission::default();
    let before = LIVE.load(Ordering::Relaxed);
    let mut peak = 0;
    for i in 0..1_000_000u32 {
        let client = if i % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))
        } else {
            // A distinct /64 each time: 2001:db8:<i>::1.
            IpAddr::V6(((0x2001_0db8_0000_0000_u128 + u128::from(i)) << 64 | 1).into())
        };
        let _ = admission.check_rate(client, &rule, u64::from(i / 1000));
        if i % 10_000 == 0 {
            peak = peak.max(LIVE.load(Ordering::Relaxed) - before);
        }
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    peak = peak.max(held);
    let bound = rate_table_bound() as isize;
    // The shards' boxed slice of mutexes and the table's hash keys come on top.
    let overhead = 16 * 1024;
    eprintln!("held {held} bytes, peak {peak}, bound {bound} (+{overhead} overhead)");
    assert!(
        peak <= bound + overhead,
        "peak {peak} > {bound} + {overhead}"
    );
    assert!(admission.rate_footprint().0 <= CLIENT_CAPACITY);
}
