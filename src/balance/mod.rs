//! Load balancers: built once per route in `compile`, asked for an order of endpoints to
//! try for each new connection. `pick` returns a fallback order so the dial can retry the
//! next endpoint when a connect fails.
//!
//! | `type` | first choice | state |
//! |---|---|---|
//! | `NoLoadBalancer` | the first ready endpoint | none |
//! | `RoundRobin` | the next endpoint in turn | a counter per compiled route, kept while the route and its endpoints do not change |
//! | `LeastConnection` | fewest live connections (ties rotate) | `EndpointLoads`, kept across generations |
//! | `CookieStickySessions` | the endpoint its signed cookie names, else round robin | none: the cookie carries it |
//! | `ConsistentHash` | highest rendezvous score for the hashed value, else round robin | none |
//!
//! With `pinSignalRConnections`, a request whose `?id=` was learned from a negotiate
//! response goes to the endpoint that answered it, before any of the above.

mod hash;
mod load;
mod pins;
mod sticky;

pub use load::{ConnectionGuard, EndpointLoad, EndpointLoads};
pub use pins::{PinMap, PinRegistry, PIN_CAPACITY, PIN_IDLE_MS};
pub use sticky::{StickyKey, StickyKeyError, MIN_STICKY_KEY_BYTES};

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use crate::model::{Endpoint, EndpointState, HashOn, LoadBalancer, Route, RouteId};
use hash::{rendezvous_score, stable_hash};
use sticky::StickyCookie;

/// What balancers keep across table generations: live-connection counts, the key that
/// signs sticky cookies, and SignalR connection pins.
#[derive(Debug, Default)]
pub struct BalanceState {
    pub loads: EndpointLoads,
    key: StickyKey,
    pins: PinRegistry,
}

impl BalanceState {
    pub fn new(key: StickyKey) -> Self {
        BalanceState {
            loads: EndpointLoads::default(),
            key,
            pins: PinRegistry::default(),
        }
    }

    pub fn sticky_key(&self) -> &StickyKey {
        &self.key
    }

    pub fn pins_for(&self, route: &RouteId) -> Arc<PinMap> {
        self.pins.for_route(route)
    }
}

/// The request facts a balancer may look at, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    pub headers: &'a HeaderMap,
    /// The client's query string (without `?`).
    pub query: Option<&'a str>,
    pub client_ip: IpAddr,
    /// Wall-clock Unix milliseconds: cookie expiry must mean the same on every replica.
    pub now_ms: u64,
    /// The client reached wsgate over TLS (sticky cookies get `Secure`).
    pub secure: bool,
}

/// An endpoint as the data plane holds it: the address plus its live-connection counter,
/// shared with every table generation that contains the same endpoint.
#[derive(Debug)]
pub struct Backend {
    pub endpoint: Endpoint,
    /// `host:port` as the `Host` header and logs want it, formatted once per table build
    /// rather than per handshake (bench/instructions.sh: ~800 instructions each time).
    pub authority: Arc<str>,
    pub load: EndpointLoad,
    /// Unkeyed, stable identity: rendezvous hashing and pins.
    id: u64,
    /// Keyed identity in sticky cookies (0 when the route is not cookie-sticky).
    cookie_id: u64,
}

/// A route's balancer over its ready endpoints. Terminating endpoints are kept out of
/// `ready` so they get no new connections.
#[derive(Debug)]
pub struct Balancer {
    kind: LoadBalancer,
    ready: Vec<Backend>,
    terminating: usize,
    next: AtomicUsize,
    sticky: Option<StickyCookie>,
    pins: Option<Arc<PinMap>>,
}

impl Balancer {
    pub fn new(kind: &LoadBalancer, endpoints: &[Endpoint], state: &BalanceState) -> Self {
        let sticky = match kind {
            LoadBalancer::CookieStickySessions { key, expiry } => {
                Some(StickyCookie::new(key, *expiry, &state.key))
            }
            _ => None,
        };
        let ready: Vec<Backend> = endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Ready)
            .map(|e| {
                let authority = e.authority();
                Backend {
                    endpoint: e.clone(),
                    load: state.loads.for_endpoint(e),
                    id: stable_hash(authority.as_bytes()),
                    cookie_id: sticky
                        .as_ref()
                        .map_or(0, |s| s.key().endpoint_id(&authority)),
                    authority: authority.into(),
                }
            })
            .collect();
        Balancer {
            kind: kind.clone(),
            terminating: endpoints.len() - ready.len(),
            ready,
            next: AtomicUsize::new(0),
            sticky,
            pins: None,
        }
    }

    /// The balancer a route asks for, with its SignalR pins when it wants them.
    pub fn for_route(route: &Route, state: &BalanceState) -> Self {
        let mut b = Balancer::new(&route.load_balancer, &route.endpoints, state);
        if route.pin_signalr_connections {
            b.pins = Some(state.pins_for(&route.id));
        }
        b
    }

    pub fn ready(&self) -> &[Backend] {
        &self.ready
    }

    /// Endpoints that still serve existing connections but take no new ones.
    pub fn terminating(&self) -> usize {
        self.terminating
    }

    /// The order in which to try endpoints for one new connection: the balancer's choice
    /// first, then the others as fallbacks. Empty when no endpoint is ready.
    pub fn pick(&self, ctx: &PickContext<'_>) -> Pick<'_> {
        let first = if self.ready.is_empty() {
            0
        } else {
            self.pinned(ctx).unwrap_or_else(|| self.choose(ctx))
        };
        Pick {
            backends: &self.ready,
            first,
            taken: 0,
        }
    }

    fn choose(&self, ctx: &PickContext<'_>) -> usize {
        match &self.kind {
            LoadBalancer::NoLoadBalancer => 0,
            LoadBalancer::RoundRobin => self.round_robin(),
            LoadBalancer::LeastConnection => self.least_loaded(),
            LoadBalancer::CookieStickySessions { .. } => self
                .sticky
                .as_ref()
                .and_then(|s| s.read(ctx.headers, ctx.now_ms))
                .and_then(|id| self.ready.iter().position(|b| b.cookie_id == id))
                .unwrap_or_else(|| self.round_robin()),
            LoadBalancer::ConsistentHash { on } => match hash_input(on, ctx) {
                Some(key) => self.rendezvous(key),
                // Nothing to hash (header absent): spread rather than pile onto one pod.
                None => self.round_robin(),
            },
        }
    }

    /// The endpoint a SignalR `?id=` token was pinned to, if it is still ready.
    fn pinned(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let pins = self.pins.as_ref()?;
        let token = percent_decode(query_param(ctx.query?, "id")?);
        let id = pins.get(&token, ctx.now_ms)?;
        self.ready.iter().position(|b| b.id == id)
    }

    fn round_robin(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.ready.len()
    }

    fn least_loaded(&self) -> usize {
        // Ties rotate so equal loads spread instead of piling onto the first endpoint.
        let n = self.ready.len();
        let start = self.round_robin();
        (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&i| self.ready[i].load.current())
            .unwrap_or(0)
    }

    fn rendezvous(&self, key: u64) -> usize {
        self.ready
            .iter()
            .enumerate()
            .max_by_key(|(_, b)| rendezvous_score(key, b.id))
            .map_or(0, |(i, _)| i)
    }

    /// The `Set-Cookie` for a response served by `chosen`, when the route is cookie-sticky:
    /// a fresh expiry on every response (Ocelot refreshes on use), naming the endpoint that
    /// actually served it (a fallback after a failed connect included).
    pub fn set_cookie(&self, chosen: &Backend, ctx: &PickContext<'_>) -> Option<HeaderValue> {
        self.sticky
            .as_ref()
            .map(|s| s.set_cookie(chosen.cookie_id, ctx.now_ms, ctx.secure))
    }

    /// Whether negotiate responses should be read for their connection token.
    pub fn pins_signalr(&self) -> bool {
        self.pins.is_some()
    }

    /// Sends later requests carrying `?id=<token>` to `chosen`.
    pub fn pin_signalr(&self, token: &str, chosen: &Backend, now_ms: u64) {
        if let Some(pins) = &self.pins {
            pins.insert(token, chosen.id, now_ms);
        }
    }
}

/// The stable hash of the value `on` names, or None when the request lacks it.
fn hash_input(on: &HashOn, ctx: &PickContext<'_>) -> Option<u64> {
    match on {
        HashOn::Header(name) => {
            let v = ctx.headers.get(name)?;
            Some(stable_hash(v.as_bytes()))
        }
        HashOn::Cookie(name) => ctx
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (n, v) = pair.trim().split_once('=')?;
                (n.trim() == name).then(|| stable_hash(v.trim().as_bytes()))
            }),
        HashOn::Query(name) => {
            query_param(ctx.query?, name).map(|v| stable_hash(percent_decode(v).as_bytes()))
        }
        HashOn::ClientIp => Some(match ctx.client_ip {
            IpAddr::V4(ip) => stable_hash(&ip.octets()),
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => stable_hash(&v4.octets()),
                None => stable_hash(&ip.octets()),
            },
        }),
    }
}

/// The raw value of the first `name=` parameter of a query string.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

/// `%XX` decoding (not `+`: SignalR clients encode with `encodeURIComponent`); allocates
/// only when there is something to decode.
fn percent_decode(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Fallback order over a route's ready backends, starting at the balancer's choice.
pub struct Pick<'a> {
    backends: &'a [Backend],
    first: usize,
    taken: usize,
}

impl<'a> Iterator for Pick<'a> {
    type Item = &'a Backend;

    fn next(&mut self) -> Option<&'a Backend> {
        if self.taken >= self.backends.len() {
            return None;
        }
        let i = (self.first + self.taken) % self.backends.len();
        self.taken += 1;
        Some(&self.backends[i])
    }
}

#[cfg(test)]
mod tests;
