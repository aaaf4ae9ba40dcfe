//! The plain, validated model both sources produce: what a route is once every field has
//! been checked and every backend reference resolved. Nothing here knows whether it came
//! from the API server or a file.

mod access;
mod auth;
mod drain;
mod duration;
pub mod host;
mod keepalive;
mod limits;
mod problem;
mod tls;
mod validate;

pub use access::{IpNet, IpNetError, IpRules, OriginPattern, OriginPatternError};
pub use auth::{
    Authentication, ClaimHeader, ClaimSelector, Jwks, JwksError, JwksRef, JwksUnavailable,
    VerifiedTokens, VerifyingKey,
};
pub use drain::{DrainPolicy, Rebalance, DEFAULT_REBALANCE_PER_SECOND, MAX_DRAIN_BUDGET};
pub use duration::{parse_duration, DurationError};
pub use host::{HostPattern, HostPatternError};
pub use keepalive::Keepalive;
pub use limits::{canonical, AddrRange, RateLimit};
pub use problem::{ProblemReason, RouteProblem};
pub use tls::{crypto_provider, BackendTls, CaBundle, CertificateError, ServerCertificate};
pub use validate::{route_from_spec, FieldError, SpecBackends};

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Stable name of a route, used in logs, metrics labels and status:
/// `namespace/name` for cluster routes, `file#index(name)` for file routes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteId(pub String);

impl fmt::Display for RouteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Scheme {
    #[default]
    Ws,
    Wss,
}

impl Scheme {
    /// The scheme plain HTTP requests on this route use towards the backend.
    pub fn http(self) -> &'static str {
        match self {
            Scheme::Ws => "http",
            Scheme::Wss => "https",
        }
    }
}

/// One backend address. `host` is an IP literal (pods) or a DNS name (static routes);
/// `addr` is filled when `host` is an IP literal so the dial skips resolution.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub addr: Option<SocketAddr>,
    pub state: EndpointState,
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        let addr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        Endpoint {
            host,
            port,
            addr,
            state: EndpointState::Ready,
        }
    }

    pub fn with_state(mut self, state: EndpointState) -> Self {
        self.state = state;
        self
    }

    /// `host:port` as it goes into a `Host` header or a log line (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Whether an endpoint takes new connections. Terminating endpoints keep the connections
/// they have but get no new handshakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointState {
    Ready,
    Terminating,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum LoadBalancer {
    /// The first ready endpoint (Ocelot's default).
    #[default]
    NoLoadBalancer,
    RoundRobin,
    /// Fewest live connections (upgraded sockets and in-flight HTTP requests).
    LeastConnection,
    /// Ocelot's sticky sessions: the cookie `key` names the endpoint first chosen (signed,
    /// so every replica honours it and a client cannot forge it); each use extends it by
    /// `expiry`.
    CookieStickySessions {
        key: String,
        expiry: Duration,
    },
    /// Rendezvous hashing of one request value: the same value reaches the same endpoint on
    /// every replica, and an endpoint leaving moves only the values it had.
    ConsistentHash {
        on: HashOn,
    },
}

/// The request value `ConsistentHash` hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    ClientIp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
    pub idle: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(30),
            idle: None,
        }
    }
}

/// Per-route limits (`spec.limits`). `None` = no limit. The message limits are enforced by
/// the relay from the frame headers it already reads (`proxy::relay::machine`); the
/// connection limits on the handshake, before a backend is dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Limits {
    /// A message (all its frames) over this many payload bytes → Close 1009 to its sender.
    pub max_message_bytes: Option<u64>,
    /// Messages per second per connection and direction (token bucket) → Close 1008.
    pub messages_per_second: Option<u32>,
    /// The bucket's size; `messages_per_second` when absent.
    pub message_burst: Option<u32>,
    /// Upgraded connections on the route → 503 with `Retry-After`.
    pub max_connections: Option<u32>,
    /// Upgraded connections per client address on the route → 429.
    pub max_connections_per_client: Option<u32>,
}

/// A validated route. Templates are kept as text here: `table::compile` parses them and
/// reports template problems per route.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub id: RouteId,
    /// Declaration order (file order, or creation order in a cluster): the last tie-break.
    pub order: u64,
    pub upstream_path_template: String,
    pub upstream_host: Option<String>,
    /// Upper-case method names; empty = any method.
    pub methods: Vec<http::Method>,
    pub case_sensitive: bool,
    pub priority: i32,
    pub downstream_path_template: String,
    pub scheme: Scheme,
    pub endpoints: Vec<Endpoint>,
    pub load_balancer: LoadBalancer,
    /// Learn SignalR connection tokens from negotiate responses and send requests carrying
    /// `?id=<token>` to the endpoint that issued it (for clients without cookies).
    pub pin_signalr_connections: bool,
    pub insecure_skip_verify: bool,
    pub timeouts: Timeouts,
    /// Served on the TLS listener to clients whose SNI matches `upstream_host`. Filled by
    /// the source once `spec.tls` resolved; `None` when absent or unresolved.
    pub certificate: Option<ServerCertificate>,
    /// Name and trust for `wss` backends; the CA is filled by the source.
    pub backend_tls: BackendTls,
    pub limits: Limits,
    /// `spec.rateLimitOptions`; `None`: requests are not counted.
    pub rate_limit: Option<RateLimit>,
    /// Authentication (`spec.authenticationOptions` and the claim fields); `None` = open.
    pub authentication: Option<Authentication>,
    // Who may use the route (`model::access`, checked by `proxy::access`).
    /// `spec.allowedOrigins`; `None` = any origin.
    pub allowed_origins: Option<Vec<OriginPattern>>,
    /// `spec.securityOptions`; `None` = any client address.
    pub ip_rules: Option<IpRules>,
    // Gentle drains and rebalancing (issue 21, items 5 and 6; `model::drain`).
    /// `spec.drain`; `None` = the process-wide default (`--drain-timeout`, `--drain-jitter`).
    pub drain: Option<DrainPolicy>,
    /// `spec.rebalance`; `None` = never rebalanced.
    pub rebalance: Option<Rebalance>,
    /// `spec.keepalive`; `None` = wsgate never pings (quiet connections stay open).
    pub keepalive: Option<Keepalive>,
}

#[cfg(test)]
pub(crate) mod tests;
