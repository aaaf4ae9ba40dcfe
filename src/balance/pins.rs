//! SignalR connection pins: connection token → endpoint, learned from negotiate responses,
//! so follow-up requests (`?id=<token>`) from clients without cookies reach the endpoint
//! that holds the connection. Bounded in size and expiring; kept per route across table
//! generations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::model::RouteId;

/// Pins one route keeps at most; past it, expired pins go first, then the least recently
/// used eighth.
pub const PIN_CAPACITY: usize = 100_000;
/// A pin unused this long is forgotten. Long polling re-polls at least every 100 s and
/// sends refresh it too; a WebSocket needs its pin only for the one upgrade request.
pub const PIN_IDLE_MS: u64 = 60 * 60 * 1000;

#[derive(Debug, Clone, Copy)]
struct Pin {
    endpoint: u64,
    last_used_ms: u64,
}

/// One route's pins.
#[derive(Debug)]
pub struct PinMap {
    pins: Mutex<HashMap<Box<str>, Pin>>,
    capacity: usize,
    idle_ms: u64,
}

impl PinMap {
    pub fn new(capacity: usize, idle_ms: u64) -> Self {
        PinMap {
            pins: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            idle_ms,
        }
    }

    /// The endpoint `token` is pinned to, refreshing the pin; expired pins are removed.
    pub fn get(&self, token: &str, now_ms: u64) -> Option<u64> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        let pin = pins.get_mut(token)?;
        if now_ms.saturating_sub(pin.last_used_ms) >= self.idle_ms {
            pins.remove(token);
            return None;
        }
        pin.last_used_ms = now_ms;
        Some(pin.endpoint)
    }

    pub fn insert(&self, token: &str, endpoint: u64, now_ms: u64) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if pins.len() >= self.capacity && !pins.contains_key(token) {
            let idle = self.idle_ms;
            pins.retain(|_, p| now_ms.saturating_sub(p.last_used_ms) < idle);
            if pins.len() >= self.capacity {
                evict_oldest(&mut pins, (self.capacity / 8).max(1));
            }
        }
        pins.insert(
            token.into(),
            Pin {
                endpoint,
                last_used_ms: now_ms,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.pins.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Evicting a batch at once keeps inserts amortised O(1) when the map is full of live pins.
fn evict_oldest(pins: &mut HashMap<Box<str>, Pin>, count: usize) {
    let mut ages: Vec<u64> = pins.values().map(|p| p.last_used_ms).collect();
    let count = count.min(ages.len());
    if count == 0 {
        return;
    }
    let (_, cutoff, _) = ages.select_nth_unstable(count - 1);
    let cutoff = *cutoff;
    let mut removed = 0;
    pins.retain(|_, p| {
        if removed < count && p.last_used_ms <= cutoff {
            removed += 1;
            false
        } else {
            true
        }
    });
}

/// Pins per route, consulted only while compiling: a route keeps its pins across table
/// generations as long as some table still has it.
#[derive(Debug, Default)]
pub struct PinRegistry {
    by_route: Mutex<HashMap<RouteId, Weak<PinMap>>>,
}

impl PinRegistry {
    pub fn for_route(&self, route: &RouteId) -> Arc<PinMap> {
        let mut map = self.by_route.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = map.get(route).and_then(Weak::upgrade) {
            return live;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let pins = Arc::new(PinMap::new(PIN_CAPACITY, PIN_IDLE_MS));
        map.insert(route.clone(), Arc::downgrade(&pins));
        pins
    }
}
