//! What a route's limits count, kept across table generations: its upgraded connections,
//! its clients' live connections (`maxConnectionsPerClient`) and its clients' request
//! windows (`rateLimitOptions`). `compile_from` hands a route's `Admission` on to the next
//! generation by route id, so a reload never resets a count; a connection holds its
//! `ConnectionSlot` (and with it the `Admission`) until it ends, however it ends.
//!
//! Per-client state is bounded (see `CLIENT_CAPACITY` and `footprint`): a flood of distinct
//! client addresses cannot grow it. Both per-client tables are split into `SHARDS` shards
//! chosen by a keyed hash, each behind its own short lock taken once per handshake or
//! request (and once when a connection ends), never on the relay path.
//!
//! No clock is read here: the caller passes the time in (`now_ms`, any monotonic origin).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::model::{canonical, RateLimit};

/// Shards of each per-client table.
pub const SHARDS: usize = 64;
/// Clients each per-client table of a route tracks at most (`SHARDS` × per-shard share).
pub const CLIENT_CAPACITY: usize = 16_384;
const SHARD_CAPACITY: usize = CLIENT_CAPACITY / SHARDS;

/// A client as the per-client limits count it: an IPv4 address, or the /64 of an IPv6
/// address (one subscriber's usual allocation: counting single IPv6 addresses would give
/// a client 2^64 budgets). IPv4-mapped IPv6 counts as its IPv4 address.
///
/// One `u64`, so a connection carries its key cheaply: an IPv6 client is its /64 prefix; an
/// IPv4 client is `0000:0001:a.b.c.d` read as a /64, inside `::/8`, which is reserved and
/// never a client's prefix (its only addresses in use, `::1` and the IPv4-mapped ones, are
/// loopback, `0`, or canonicalized to IPv4 first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u64);

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match canonical(ip) {
            IpAddr::V4(v4) => ClientKey((1 << 32) | u64::from(u32::from(v4))),
            IpAddr::V6(v6) => ClientKey((u128::from(v6) >> 64) as u64),
        }
    }
}

/// A count of live connections with an optional ceiling, shared by everything that holds
/// a slot of it (a route's connections, the process's `--max-connections`).
#[derive(Debug, Default)]
pub struct ConnectionCount(AtomicU32);

impl ConnectionCount {
    /// Takes a slot unless `max` are taken; exact under concurrency (one compare-exchange).
    pub fn try_acquire(&self, max: Option<u32>) -> bool {
        let ceiling = max.unwrap_or(u32::MAX);
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < ceiling).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefusal {
    /// The route has `maxConnections` upgraded connections.
    Route { limit: u32 },
    /// The client has `maxConnectionsPerClient` on the route.
    Client { limit: u32 },
    /// The route's per-client table holds `CLIENT_CAPACITY` clients' live connections (its
    /// shard is full): the client's connections could not be counted, so it is refused.
    ClientTableFull,
}

/// A client over `rateLimitOptions`, and how long until it is counted afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRefusal {
    pub retry_after_ms: u64,
}

/// One route's lasting admission state.
#[derive(Debug, Default)]
pub struct Admission {
    connections: ConnectionCount,
    clients: OnceLock<ClientConnections>,
    rate: OnceLock<RateWindows>,
}

impl Admission {
    /// Upgraded connections on the route now.
    pub fn connections(&self) -> u32 {
        self.connections.get()
    }

    /// Clients with live connections on the route, as the per-client table tracks them.
    pub fn tracked_clients(&self) -> usize {
        self.clients.get().map_or(0, ClientConnections::len)
    }

    /// Admits one upgraded connection of `client` under the route's ceilings. Every
    /// connection is counted on the route (so a `maxConnections` added by a reload counts
    /// the connections already open); the client's only while the route has a per-client
    /// limit.
    pub fn try_connect(
        self: &Arc<Self>,
        client: IpAddr,
        max: Option<u32>,
        per_client: Option<u32>,
    ) -> Result<ConnectionSlot, ConnectionRefusal> {
        let key = match per_client {
            None => None,
            Some(limit) => {
                let key = ClientKey::of(client);
                self.clients
                    .get_or_init(ClientConnections::default)
                    .try_acquire(key, limit)?;
                Some(key)
            }
        };
        if !self.connections.try_acquire(max) {
            if let (Some(key), Some(clients)) = (key, self.clients.get()) {
                clients.release(key);
            }
            return Err(ConnectionRefusal::Route {
                limit: max.unwrap_or(u32::MAX),
            });
        }
        Ok(ConnectionSlot {
            admission: Arc::clone(self),
            client: key,
        })
    }

    /// Counts one handshake or request of `client` at `now_ms` under `rule` (Ocelot's
    /// fixed window): refused once the client made more than `rule.limit` in its window,
    /// until `rule.wait` has passed since it went over (or its window ends, with no wait).
    /// Whitelisted clients are not counted.
    pub fn check_rate(
        &self,
        client: IpAddr,
        rule: &RateLimit,
        now_ms: u64,
    ) -> Result<(), RateRefusal> {
        if rule.exempt(client) {
            return Ok(());
        }
        self.rate
            .get_or_init(RateWindows::default)
            .hit(ClientKey::of(client), rule, now_ms)
    }

    /// Entries in the rate table and an upper bound of the bytes it holds (test and metrics).
    pub fn rate_footprint(&self) -> (usize, usize) {
        self.rate.get().map_or((0, 0), RateWindows::footprint)
    }
}

/// One connection's claim on its route's counts, released when dropped. Small (24 bytes):
/// every live connection holds one.
#[derive(Debug)]
pub struct ConnectionSlot {
    admission: Arc<Admission>,
    client: Option<ClientKey>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.admission.connections.release();
        if let (Some(key), Some(clients)) = (self.client, self.admission.clients.get()) {
            clients.release(key);
        }
    }
}

/// Picks the shard of a key with a per-table random key, so a client cannot aim its
/// addresses at one shard.
#[derive(Debug, Default)]
struct ShardPicker(RandomState);

impl ShardPicker {
    fn pick(&self, key: ClientKey) -> usize {
        (self.0.hash_one(key) % SHARDS as u64) as usize
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard cannot leave a count half-written (each update is one
    // statement), so a poisoned shard is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Live connections per client. An entry exists only while its client has a connection
/// (removed at zero), so the table never holds a client that is gone; when a shard is full
/// of clients with live connections a new client is refused rather than left uncounted.
#[derive(Debug)]
struct ClientConnections {
    picker: ShardPicker,
    shards: Box<[Mutex<HashMap<ClientKey, u32>>]>,
}

impl Default for ClientConnections {
    fn default() -> Self {
        ClientConnections {
            picker: ShardPicker::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl ClientConnections {
    fn try_acquire(&self, key: ClientKey, limit: u32) -> Result<(), ConnectionRefusal> {
        let mut shard = lock(&self.shards[self.picker.pick(key)]);
        let full = shard.len() >= SHARD_CAPACITY;
        match shard.get_mut(&key) {
            Some(n) if *n >= limit => Err(ConnectionRefusal::Client { limit }),
            Some(n) => {
                *n += 1;
                Ok(())
            }
            None if full => Err(ConnectionRefusal::ClientTableFull),
            None => {
                shard.insert(key, 1);
                Ok(())
            }
        }
    }

    fn release(&self, key: ClientKey) {
        let mut shard = lock(&self.shards[self.picker.pick(key)]);
        if let Some(n) = shard.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&key);
            }
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

/// One client's window (Ocelot's `RateLimitCounter`).
#[derive(Debug, Clone, Copy)]
struct Window {
    key: ClientKey,
    started_ms: u64,
    count: u64,
    /// When the client went over the limit in this window (`u64::MAX`: it has not).
    exceeded_ms: u64,
    /// Hit again since the eviction hand last passed: kept for another round.
    referenced: bool,
}

impl Window {
    fn fresh(key: ClientKey, now_ms: u64) -> Window {
        Window {
            key,
            started_ms: now_ms,
            count: 0,
            exceeded_ms: u64::MAX,
            referenced: false,
        }
    }

    /// Still counting at `now_ms`: inside its window, or inside its wait after going over.
    fn live(&self, rule: &RateLimit, now_ms: u64) -> bool {
        let period = duration_ms(rule.period);
        let wait = duration_ms(rule.wait);
        now_ms < self.started_ms.saturating_add(period)
            || (self.exceeded_ms != u64::MAX && now_ms < self.exceeded_ms.saturating_add(wait))
    }
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Request windows per client, `SHARD_CAPACITY` per shard. A shard that is full makes room
/// with a CLOCK sweep: the hand takes the first window that is no longer live or was not
/// hit again since the hand last passed it, clearing the mark of those that were. A client
/// seen once (a flood of new addresses) is what goes; a client that keeps coming back (a
/// hot client being limited) keeps its window. The new client is always admitted to the
/// table: the limiter never refuses a client for lack of room.
#[derive(Debug)]
struct RateWindows {
    picker: ShardPicker,
    shards: Box<[Mutex<RateShard>]>,
}

#[derive(Debug, Default)]
struct RateShard {
    index: HashMap<ClientKey, usize>,
    windows: Vec<Window>,
    hand: usize,
}

impl Default for RateWindows {
    fn default() -> Self {
        RateWindows {
            picker: ShardPicker::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl RateWindows {
    fn hit(&self, key: ClientKey, rule: &RateLimit, now_ms: u64) -> Result<(), RateRefusal> {
        let mut guard = lock(&self.shards[self.picker.pick(key)]);
        let shard = &mut *guard;
        let at = match shard.index.get(&key) {
            Some(&at) => {
                let w = &mut shard.windows[at];
                if !w.live(rule, now_ms) {
                    *w = Window::fresh(key, now_ms);
                }
                w.referenced = true;
                at
            }
            None => {
                let at = shard.make_room(rule, now_ms);
                shard.index.insert(key, at);
                at
            }
        };
        if at == shard.windows.len() {
            shard.windows.push(Window::fresh(key, now_ms));
        } else if shard.windows[at].key != key {
            shard.windows[at] = Window::fresh(key, now_ms);
        }
        let w = &mut shard.windows[at];
        w.count = w.count.saturating_add(1);
        if w.count <= rule.limit {
            return Ok(());
        }
        if w.exceeded_ms == u64::MAX {
            w.exceeded_ms = now_ms;
        }
        let until = if rule.wait.is_zero() {
            w.started_ms.saturating_add(duration_ms(rule.period))
        } else {
            w.exceeded_ms.saturating_add(duration_ms(rule.wait))
        };
        Err(RateRefusal {
            retry_after_ms: until.saturating_sub(now_ms),
        })
    }

    /// (entries, an upper bound of the bytes the tables hold).
    fn footprint(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, bytes), s| {
            let s = lock(s);
            (n + s.windows.len(), bytes + s.bytes())
        })
    }
}

impl RateShard {
    /// Where a new window goes: the end while there is room, else the slot the hand frees.
    fn make_room(&mut self, rule: &RateLimit, now_ms: u64) -> usize {
        if self.windows.len() < SHARD_CAPACITY {
            if self.windows.capacity() == 0 {
                self.reserve();
            }
            return self.windows.len();
        }
        // Two rounds at most: the first clears every mark it passes.
        loop {
            let at = self.hand;
            self.hand = (self.hand + 1) % self.windows.len();
            let w = &mut self.windows[at];
            if w.referenced && w.live(rule, now_ms) {
                w.referenced = false;
                continue;
            }
            self.index.remove(&w.key);
            return at;
        }
    }

    /// Room for a full shard, allocated once. The index gets twice the room it needs: with
    /// at most half its capacity in use, the tombstones evictions leave are cleared by
    /// rehashing in place, so it never grows.
    fn reserve(&mut self) {
        self.windows.reserve_exact(SHARD_CAPACITY);
        self.index.reserve(2 * SHARD_CAPACITY);
    }

    /// Bytes held by this shard's tables (allocated capacity, not entries), as hashbrown
    /// lays them out: a bucket per 7/8 of capacity (a power of two), each with its entry
    /// and a control byte, plus a group of trailing control bytes.
    fn bytes(&self) -> usize {
        let buckets = (self.index.capacity() * 8).div_ceil(7).next_power_of_two();
        let entry = std::mem::size_of::<(ClientKey, usize)>() + 1;
        self.windows.capacity() * std::mem::size_of::<Window>() + buckets * entry + 16
    }
}

/// The most bytes one route's rate table holds: `SHARDS` shards with their room for
/// `SHARD_CAPACITY` clients allocated (1,770,496 bytes, about 1.7 MiB).
pub fn rate_table_bound() -> usize {
    let mut shard = RateShard::default();
    shard.reserve();
    SHARDS * shard.bytes()
}

#[cfg(test)]
mod tests;
