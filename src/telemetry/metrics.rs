//! Metric families are registered once; `compile` takes one `RouteMetrics` per route so
//! the data plane only increments handles it already holds.
//!
//! **Per-route series appear when first used.** A `RouteMetrics` holds the route's label
//! once and a `OnceLock` per handle (or per group of handles used together: a connection's
//! gauge and counter, the four relayed-traffic counters); the first use resolves the
//! handle in its family (one label allocation and one write lock, once per route), every
//! later use is an atomic load and the increment. So a route that is compiled but never
//! used adds no series to `/metrics`, and an idle route costs a few hundred bytes.
//!
//! **Histograms are process-wide** unless `--per-route-histograms`
//! ([`MetricsOptions::per_route_histograms`]) asks for one per route (`RouteHistogram`).
//!
//! **A route's series leave with the route.** `Metrics::route` hands out the same
//! `RouteMetrics` for a route name while one is alive (a table generation or a connection
//! holds it); when the last one is dropped (the route left the table and its last
//! connection ended) its series are removed from the families, so neither `/metrics` nor
//! the map of live routes grows with route churn. A route that comes back starts its
//! counters at zero again, which Prometheus' `rate()` reads as a counter reset.
//!
//! A new per-route family follows the same steps: a `Family` in [`Families`] (registered in
//! `Metrics::with_options`), a `OnceLock` (or `[OnceLock; N]` for a small label enum) in
//! `RouteSeries`, an accessor on `RouteMetrics` that resolves it, and a line in
//! `RouteSeries::forget` and `RouteSeries::hand_over`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabel {
    route: String,
    direction: Direction,
}

/// Why a request did not become a relayed connection or a proxied response.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum FailureReason {
    NoRoute,
    NoEndpoint,
    ConnectFailed,
    ConnectTimeout,
    BadRequest,
    UpstreamStatus,
    UpstreamProtocol,
    UpstreamTimeout,
}

impl FailureReason {
    /// The reason in snake case, for the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NoRoute => "no_route",
            FailureReason::NoEndpoint => "no_endpoint",
            FailureReason::ConnectFailed => "connect_failed",
            FailureReason::ConnectTimeout => "connect_timeout",
            FailureReason::BadRequest => "bad_request",
            FailureReason::UpstreamStatus => "upstream_status",
            FailureReason::UpstreamProtocol => "upstream_protocol",
            FailureReason::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// In declaration order (`reason as usize` indexes it).
    pub const ALL: [FailureReason; 8] = [
        FailureReason::NoRoute,
        FailureReason::NoEndpoint,
        FailureReason::ConnectFailed,
        FailureReason::ConnectTimeout,
        FailureReason::BadRequest,
        FailureReason::UpstreamStatus,
        FailureReason::UpstreamProtocol,
        FailureReason::UpstreamTimeout,
    ];
}

/// Why the edge refused a request before any backend was dialled (issue 20's checks): the
/// `reason` label of `wsgate_refusals_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RefusalReason {
    /// The request target could not be normalized (`..` above the root, `%2F`, NUL...).
    Path,
    /// `Origin` not in the route's `allowedOrigins`.
    Origin,
    /// The client address is not allowed by the route's `securityOptions`.
    Ip,
    /// No token, or a token that is not valid.
    Auth,
    /// A valid token without every scope in `allowedScopes`.
    Scope,
    /// A valid token whose claims do not meet `routeClaimsRequirement`.
    Claims,
    /// Handshakes or requests per client over `rateLimitOptions`.
    Rate,
    /// `maxConnections`, `maxConnectionsPerClient` or `--max-connections` reached.
    Connections,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 8] = [
        RefusalReason::Path,
        RefusalReason::Origin,
        RefusalReason::Ip,
        RefusalReason::Auth,
        RefusalReason::Scope,
        RefusalReason::Claims,
        RefusalReason::Rate,
        RefusalReason::Connections,
    ];

    /// The label value, for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Path => "path",
            RefusalReason::Origin => "origin",
            RefusalReason::Ip => "ip",
            RefusalReason::Auth => "auth",
            RefusalReason::Scope => "scope",
            RefusalReason::Claims => "claims",
            RefusalReason::Rate => "rate",
            RefusalReason::Connections => "connections",
        }
    }
}

impl EncodeLabelValue for RefusalReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabel {
    route: String,
    reason: RefusalReason,
}

/// Which side a Close frame of wsgate's own went to.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CloseTo {
    Client,
    Backend,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabel {
    route: String,
    to: CloseTo,
    code: u16,
}

/// Keep-alive Pings of wsgate's own, by the side they went to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PingLabel {
    route: String,
    to: CloseTo,
}

/// Sides that did not answer a keep-alive Ping (treated as gone).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UnansweredLabel {
    route: String,
    side: CloseTo,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    route: String,
    reason: FailureReason,
}

/// Who sent a Close frame: the `side` label of `wsgate_closes_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CloseSide {
    Client,
    Backend,
    /// wsgate's own Close (to either side).
    Wsgate,
}

impl EncodeLabelValue for CloseSide {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            CloseSide::Client => "client",
            CloseSide::Backend => "backend",
            CloseSide::Wsgate => "wsgate",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosesLabel {
    route: String,
    side: CloseSide,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: Direction,
}

/// Upper bounds (bytes) of `wsgate_message_size_bytes`' buckets (64 × 4^i), one bucket
/// more above the last. The relay counts into buckets of these itself (`proxy::frame`).
pub const MESSAGE_SIZE_BOUNDS: [u64; 10] = [
    64,
    256,
    1024,
    4096,
    16 * 1024,
    64 * 1024,
    256 * 1024,
    1024 * 1024,
    4 * 1024 * 1024,
    16 * 1024 * 1024,
];

/// A histogram fed with bucket counts a relay kept itself (one add per bucket per flush,
/// never a call per message): `wsgate_message_size_bytes`. Lock-free; cloned handles
/// share the counts.
#[derive(Clone, Debug, Default)]
pub struct MessageSizeHistogram(Arc<SizeBuckets>);

#[derive(Debug, Default)]
struct SizeBuckets {
    /// Not cumulative, as the relay counts them; the encoder accumulates.
    counts: [AtomicU64; MESSAGE_SIZE_BOUNDS.len() + 1],
    sum: AtomicU64,
}

impl MessageSizeHistogram {
    /// Adds a relay's counts: `buckets[i]` messages in bucket i, `sum` bytes in all.
    pub fn add(&self, buckets: &[u32; MESSAGE_SIZE_BOUNDS.len() + 1], sum: u64) {
        for (count, n) in self.0.counts.iter().zip(buckets) {
            if *n > 0 {
                count.fetch_add(u64::from(*n), Ordering::Relaxed);
            }
        }
        self.0.sum.fetch_add(sum, Ordering::Relaxed);
    }
}

impl TypedMetric for MessageSizeHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for MessageSizeHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let mut buckets = [(f64::MAX, 0u64); MESSAGE_SIZE_BOUNDS.len() + 1];
        let mut count = 0;
        for (i, bucket) in buckets.iter_mut().enumerate() {
            if let Some(bound) = MESSAGE_SIZE_BOUNDS.get(i) {
                bucket.0 = *bound as f64;
            }
            bucket.1 = self.0.counts[i].load(Ordering::Relaxed);
            count += bucket.1;
        }
        let sum = self.0.sum.load(Ordering::Relaxed) as f64;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn connection_duration_histogram() -> Histogram {
    // 100 ms .. a day: a WebSocket lives from a page view to a shift.
    Histogram::new([
        0.1,
        1.0,
        10.0,
        60.0,
        300.0,
        900.0,
        1800.0,
        3600.0,
        4.0 * 3600.0,
        12.0 * 3600.0,
        86400.0,
    ])
}

fn connect_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// A histogram that is one process-wide series by default, or one series per route (created
/// on the route's first observation) when `--per-route-histograms` is on.
enum RouteHistogram {
    Shared(Histogram),
    PerRoute(Family<RouteLabel, Histogram, fn() -> Histogram>),
}

impl RouteHistogram {
    fn new(per_route: bool, buckets: fn() -> Histogram) -> Self {
        if per_route {
            RouteHistogram::PerRoute(Family::new_with_constructor(buckets))
        } else {
            RouteHistogram::Shared(buckets())
        }
    }

    fn register(&self, registry: &mut Registry, name: &str, help: &str) {
        match self {
            RouteHistogram::Shared(h) => registry.register(name, help, h.clone()),
            RouteHistogram::PerRoute(f) => registry.register(name, help, f.clone()),
        }
    }

    /// The histogram a route observes into.
    fn for_route(&self, route: &str) -> Histogram {
        match self {
            RouteHistogram::Shared(h) => h.clone(),
            RouteHistogram::PerRoute(f) => f.get_or_create_owned(&RouteLabel {
                route: route.to_string(),
            }),
        }
    }

    fn forget(&self, route: &str) {
        if let RouteHistogram::PerRoute(f) = self {
            f.remove(&RouteLabel {
                route: route.to_string(),
            });
        }
    }
}

/// Process-wide counters of the relays that moved to relay threads (`proxy::relay`'s
/// offload), registered with the gateway's metrics.
#[derive(Clone, Default)]
pub struct OffloadMetrics {
    /// Relays moved to a relay thread.
    pub moved: Counter,
    /// Relays running on relay threads now.
    pub on_threads: Gauge,
}

/// What the operator chose about metric cardinality.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricsOptions {
    /// `--per-route-histograms`: histograms (`wsgate_upstream_connect_seconds`) get a
    /// `route` label, one series set per used route, instead of one process-wide series set.
    pub per_route_histograms: bool,
}

/// The families that hold per-route series, shared by `Metrics` and every `RouteMetrics`.
struct Families {
    connections_active: Family<RouteLabel, Gauge>,
    connections_total: Family<RouteLabel, Counter>,
    http_requests_total: Family<RouteLabel, Counter>,
    failures_total: Family<FailureLabel, Counter>,
    refusals_total: Family<RefusalLabel, Counter>,
    closes_sent_total: Family<CloseLabel, Counter>,
    keepalive_pings_total: Family<PingLabel, Counter>,
    keepalive_timeouts_total: Family<UnansweredLabel, Counter>,
    bytes_total: Family<BytesLabel, Counter>,
    messages_total: Family<BytesLabel, Counter>,
    /// `wsgate_closes_total{route,side,code}`: every Close seen when a connection ends.
    closes_total: Family<ClosesLabel, Counter>,
    connect_seconds: RouteHistogram,
    /// Process-wide (no route label): `wsgate_message_size_bytes{direction}`, client →
    /// backend then back, and `wsgate_connection_duration_seconds`.
    message_sizes: [MessageSizeHistogram; 2],
    connection_seconds: Histogram,
    /// The `RouteMetrics` alive per route name: `Metrics::route` hands out the live one, so
    /// every generation and connection of a route shares one set of handles. An entry
    /// leaves when its `RouteSeries` is dropped, so the map holds the routes of live tables
    /// and connections only, however many routes came and went.
    live: Mutex<HashMap<Arc<str>, Weak<RouteSeries>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every metric family wsgate exports, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    families: Arc<Families>,
    pub table_generation: Gauge,
    pub tables_alive: Gauge,
    pub table_reloads_ok: Counter,
    pub table_reloads_failed: Counter,
    pub route_problems: Gauge,
    offload: OffloadMetrics,
    /// Gentle drains and rebalancing (`telemetry/drain.rs`).
    drain: super::DrainMetrics,
    /// Access log records dropped because the writer was behind (`--access-log`).
    pub access_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_extra(|_| {})
    }

    /// Registers wsgate's families plus those of a source (the kube source's watch and
    /// status metrics), all under the `wsgate_` prefix.
    pub fn with_extra(extra: impl FnOnce(&mut Registry)) -> Self {
        Self::with_options(MetricsOptions::default(), extra)
    }

    /// As `with_extra`, with the operator's cardinality choices.
    pub fn with_options(options: MetricsOptions, extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::with_prefix("wsgate");
        extra(&mut registry);
        // Both directions' series exist from the start: two process-wide series.
        let message_sizes = Family::<DirectionLabel, MessageSizeHistogram>::default();
        let f = Families {
            connections_active: Family::default(),
            connections_total: Family::default(),
            http_requests_total: Family::default(),
            failures_total: Family::default(),
            refusals_total: Family::default(),
            closes_sent_total: Family::default(),
            keepalive_pings_total: Family::default(),
            keepalive_timeouts_total: Family::default(),
            bytes_total: Family::default(),
            messages_total: Family::default(),
            closes_total: Family::default(),
            connect_seconds: RouteHistogram::new(options.per_route_histograms, connect_histogram),
            message_sizes: [
                message_sizes.get_or_create_owned(&DirectionLabel {
                    direction: Direction::ClientToUpstream,
                }),
                message_sizes.get_or_create_owned(&DirectionLabel {
                    direction: Direction::UpstreamToClient,
                }),
            ],
            connection_seconds: connection_duration_histogram(),
            live: Default::default(),
        };
        let m = Metrics {
            table_generation: Gauge::default(),
            tables_alive: Gauge::default(),
            table_reloads_ok: Counter::default(),
            table_reloads_failed: Counter::default(),
            route_problems: Gauge::default(),
            offload: Default::default(),
            drain: Default::default(),
            access_log_dropped: Counter::default(),
            registry: Registry::default(),
            families: Arc::new(f),
        };
        let f = &m.families;
        registry.register(
            "connections_active",
            "Upgraded WebSocket connections currently relayed",
            f.connections_active.clone(),
        );
        registry.register(
            "connections",
            "Upgraded WebSocket connections accepted",
            f.connections_total.clone(),
        );
        registry.register(
            "http_requests",
            "Plain HTTP requests proxied (SignalR negotiate, SSE, long polling)",
            f.http_requests_total.clone(),
        );
        registry.register(
            "handshake_failures",
            "Requests answered by wsgate itself instead of a backend, by reason",
            f.failures_total.clone(),
        );
        registry.register(
            "refusals",
            "Requests the edge refused before dialling a backend (origin, ip, auth, scope, claims, rate, connections, path)",
            f.refusals_total.clone(),
        );
        registry.register(
            "closes_sent",
            "Close frames wsgate sent on its own behalf at the end of a relayed connection, by side and code (1001 going away, 1002/1007 a broken rule, 1008 rate or token expiry, 1009 message too big, 1011 backend lost, 1014 bad gateway)",
            f.closes_sent_total.clone(),
        );
        registry.register(
            "keepalive_pings",
            "Keep-alive Pings wsgate sent on quiet connections of routes with keepalive, by the side they went to (counted when the connection ends)",
            f.keepalive_pings_total.clone(),
        );
        registry.register(
            "keepalive_timeouts",
            "Sides that sent nothing within keepalive.pongTimeout of wsgate's Ping and were treated as gone (the other side got Close 1001 or 1011)",
            f.keepalive_timeouts_total.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed on upgraded connections",
            f.bytes_total.clone(),
        );
        registry.register(
            "messages",
            "WebSocket frames relayed on upgraded connections",
            f.messages_total.clone(),
        );
        f.connect_seconds.register(
            &mut registry,
            "upstream_connect_seconds",
            "Time to open a TCP connection to a backend (per route with --per-route-histograms)",
        );
        registry.register(
            "route_table_generation",
            "Generation of the route table serving new requests",
            m.table_generation.clone(),
        );
        registry.register(
            "route_tables_alive",
            "Route table generations in memory: the serving one, and older ones until the last connection routed by them ends",
            m.tables_alive.clone(),
        );
        registry.register(
            "route_table_reloads_ok",
            "Route table rebuilds that were published",
            m.table_reloads_ok.clone(),
        );
        registry.register(
            "route_table_reloads_failed",
            "Route sources that could not be read; the last good table kept serving",
            m.table_reloads_failed.clone(),
        );
        registry.register(
            "route_problems",
            "Routes left out of the current table because they are invalid",
            m.route_problems.clone(),
        );
        registry.register(
            "relays_moved",
            "Busy plain-TCP relays moved from the async runtime to a relay thread",
            m.offload.moved.clone(),
        );
        registry.register(
            "relays_on_threads",
            "Relays running on relay threads now",
            m.offload.on_threads.clone(),
        );
        m.drain.register(&mut registry);
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was behind (the channel to it was full)",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "message_size_bytes",
            "Payload size of WebSocket data messages relayed, by direction (process-wide)",
            message_sizes,
        );
        registry.register(
            "connection_duration_seconds",
            "How long relayed WebSocket connections lasted, from the 101 to the end (process-wide)",
            f.connection_seconds.clone(),
        );
        registry.register(
            "closes",
            "Close frames seen on relayed connections when they end, by who sent them (client, backend, wsgate) and code",
            f.closes_total.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The families of gentle drains and rebalancing.
    pub fn drain(&self) -> super::DrainMetrics {
        self.drain.clone()
    }

    /// The relay threads' counters.
    pub fn offload(&self) -> OffloadMetrics {
        self.offload.clone()
    }

    /// One route's handles; called by `compile`, never per connection. Resolves nothing:
    /// each series appears on its first use. While a `RouteMetrics` of this route is alive
    /// (an earlier generation, a connection), the same one is returned.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let mut live = lock(&self.families.live);
        if let Some(m) = live.get(route).and_then(Weak::upgrade) {
            return RouteMetrics(m);
        }
        let route: Arc<str> = route.into();
        let m = Arc::new(RouteSeries::new(route.clone(), Arc::clone(&self.families)));
        live.insert(route, Arc::downgrade(&m));
        RouteMetrics(m)
    }

    /// Routes with a live `RouteMetrics` (in a table or held by a connection).
    pub fn live_routes(&self) -> usize {
        lock(&self.families.live).len()
    }

    /// Failures that happen before any route is known (no route matched, bad request).
    pub fn unrouted_failure(&self, reason: FailureReason) {
        self.families
            .failures_total
            .get_or_create(&FailureLabel {
                route: String::new(),
                reason,
            })
            .inc();
    }

    /// Refusals that happen before any route is known (a path that cannot be normalized, a
    /// process-wide connection limit).
    pub fn unrouted_refusal(&self, reason: RefusalReason) {
        self.families
            .refusals_total
            .get_or_create(&RefusalLabel {
                route: String::new(),
                reason,
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A route's WebSocket connection series, used together.
#[derive(Clone, Debug)]
struct ConnectionSeries {
    active: Gauge,
    total: Counter,
}

/// A route's relayed-traffic counters, flushed together from a relay's counts.
#[derive(Clone, Debug)]
pub struct Relayed {
    pub bytes_up: Counter,
    pub messages_up: Counter,
    pub bytes_down: Counter,
    pub messages_down: Counter,
}

/// One route's label and its handles, each resolved on first use.
struct RouteSeries {
    route: Arc<str>,
    families: Arc<Families>,
    connections: OnceLock<ConnectionSeries>,
    http_requests: OnceLock<Counter>,
    relayed: OnceLock<Relayed>,
    connect_seconds: OnceLock<Histogram>,
    failures: [OnceLock<Counter>; FailureReason::ALL.len()],
    refusals: [OnceLock<Counter>; RefusalReason::ALL.len()],
    /// Series made when a connection ends with a Close of ours: few codes per route, looked
    /// up once per connection end, never per message.
    closes_sent: Mutex<Vec<(CloseTo, u16, Counter)>>,
    /// Keep-alive Pings sent and sides gone silent, by side (`CloseTo` as the index): made
    /// when a connection of a route with `keepalive` ends.
    keepalive_pings: [OnceLock<Counter>; 2],
    keepalive_timeouts: [OnceLock<Counter>; 2],
    /// `wsgate_closes_total` of the usual Closes ([`USUAL_CLOSES`]), kept once made: most
    /// connection ends then cost no label allocation and no lock.
    usual_closes: [OnceLock<Counter>; USUAL_CLOSES.len()],
    /// The other Close codes seen, made on first use (few per route).
    other_closes: Mutex<Vec<(CloseSide, u16, Counter)>>,
}

/// The Closes most connections end with.
const USUAL_CLOSES: [(CloseSide, u16); 5] = [
    (CloseSide::Client, 1000),
    (CloseSide::Backend, 1000),
    (CloseSide::Client, 1001),
    (CloseSide::Backend, 1001),
    (CloseSide::Wsgate, 1001),
];

impl RouteSeries {
    fn new(route: Arc<str>, families: Arc<Families>) -> Self {
        RouteSeries {
            route,
            families,
            connections: OnceLock::new(),
            http_requests: OnceLock::new(),
            relayed: OnceLock::new(),
            connect_seconds: OnceLock::new(),
            failures: Default::default(),
            refusals: Default::default(),
            closes_sent: Mutex::new(Vec::new()),
            keepalive_pings: Default::default(),
            keepalive_timeouts: Default::default(),
            usual_closes: Default::default(),
            other_closes: Mutex::new(Vec::new()),
        }
    }

    fn closes_label(&self, side: CloseSide, code: u16) -> ClosesLabel {
        ClosesLabel {
            route: self.route.to_string(),
            side,
            code,
        }
    }

    fn label(&self) -> RouteLabel {
        RouteLabel {
            route: self.route.to_string(),
        }
    }

    fn bytes_label(&self, direction: Direction) -> BytesLabel {
        BytesLabel {
            route: self.route.to_string(),
            direction,
        }
    }

    /// Removes the series this `RouteSeries` resolved from their families.
    fn forget(&self) {
        let f = &self.families;
        if self.connections.get().is_some() {
            f.connections_active.remove(&self.label());
            f.connections_total.remove(&self.label());
        }
        if self.http_requests.get().is_some() {
            f.http_requests_total.remove(&self.label());
        }
        if self.relayed.get().is_some() {
            for d in [Direction::ClientToUpstream, Direction::UpstreamToClient] {
                f.bytes_total.remove(&self.bytes_label(d));
                f.messages_total.remove(&self.bytes_label(d));
            }
        }
        if self.connect_seconds.get().is_some() {
            f.connect_seconds.forget(&self.route);
        }
        for (cell, reason) in self.failures.iter().zip(FailureReason::ALL) {
            if cell.get().is_some() {
                f.failures_total.remove(&FailureLabel {
                    route: self.route.to_string(),
                    reason,
                });
            }
        }
        for (cell, reason) in self.refusals.iter().zip(RefusalReason::ALL) {
            if cell.get().is_some() {
                f.refusals_total.remove(&RefusalLabel {
                    route: self.route.to_string(),
                    reason,
                });
            }
        }
        for (i, to) in [CloseTo::Client, CloseTo::Backend].into_iter().enumerate() {
            let route = self.route.to_string();
            if self.keepalive_pings[i].get().is_some() {
                f.keepalive_pings_total.remove(&PingLabel {
                    route: route.clone(),
                    to,
                });
            }
            if self.keepalive_timeouts[i].get().is_some() {
                f.keepalive_timeouts_total
                    .remove(&UnansweredLabel { route, side: to });
            }
        }
        for (to, code, _) in lock(&self.closes_sent).iter() {
            f.closes_sent_total.remove(&CloseLabel {
                route: self.route.to_string(),
                to: *to,
                code: *code,
            });
        }
        for (cell, (side, code)) in self.usual_closes.iter().zip(USUAL_CLOSES) {
            if cell.get().is_some() {
                f.closes_total.remove(&self.closes_label(side, code));
            }
        }
        for (side, code, _) in lock(&self.other_closes).iter() {
            f.closes_total.remove(&self.closes_label(*side, *code));
        }
    }

    /// Gives the handles this one resolved to `next`, the live `RouteSeries` of the same
    /// route that replaced it, so that `next` removes them when it goes.
    fn hand_over(&self, next: &RouteSeries) {
        fn give<T: Clone>(from: &OnceLock<T>, to: &OnceLock<T>) {
            if let Some(v) = from.get() {
                let _ = to.set(v.clone());
            }
        }
        give(&self.connections, &next.connections);
        give(&self.http_requests, &next.http_requests);
        give(&self.relayed, &next.relayed);
        give(&self.connect_seconds, &next.connect_seconds);
        for (from, to) in self.failures.iter().zip(&next.failures) {
            give(from, to);
        }
        for (from, to) in self.refusals.iter().zip(&next.refusals) {
            give(from, to);
        }
        for (from, to) in self.keepalive_pings.iter().zip(&next.keepalive_pings) {
            give(from, to);
        }
        for (from, to) in self.keepalive_timeouts.iter().zip(&next.keepalive_timeouts) {
            give(from, to);
        }
        for (from, to) in self.usual_closes.iter().zip(&next.usual_closes) {
            give(from, to);
        }
        merge_by_key(&self.closes_sent, &next.closes_sent);
        merge_by_key(&self.other_closes, &next.other_closes);
    }
}

/// Moves the `(key, key, handle)` entries of `from` that `to` lacks into `to`.
fn merge_by_key<A: PartialEq + Copy, B: PartialEq + Copy, T>(
    from: &Mutex<Vec<(A, B, T)>>,
    to: &Mutex<Vec<(A, B, T)>>,
) {
    let mine = std::mem::take(&mut *lock(from));
    let mut theirs = lock(to);
    for entry in mine {
        if !theirs
            .iter()
            .any(|(a, b, _)| (*a, *b) == (entry.0, entry.1))
        {
            theirs.push(entry);
        }
    }
}

impl Drop for RouteSeries {
    fn drop(&mut self) {
        let families = Arc::clone(&self.families);
        let mut live = lock(&families.live);
        let me: *const RouteSeries = self;
        let next = match live.get(&self.route) {
            Some(entry) if std::ptr::eq(entry.as_ptr(), me) => {
                live.remove(&self.route);
                None
            }
            // Replaced by a newer one (made between this one's last drop and now).
            Some(entry) => entry.upgrade(),
            None => None,
        };
        match next {
            // Under the lock: no new `RouteSeries` of this route can resolve a series
            // between the check above and the removal.
            None => self.forget(),
            Some(next) => {
                drop(live);
                self.hand_over(&next);
                // May drop `next` (and run its `drop`), so only after the lock is released.
                drop(next);
            }
        }
    }
}

/// One route's metric handles: cheap to clone (one `Arc`), each series resolved on first
/// use, removed when the last clone of the route's handles is dropped.
#[derive(Clone)]
pub struct RouteMetrics(Arc<RouteSeries>);

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.0.route)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    fn connections(&self) -> &ConnectionSeries {
        let s = &self.0;
        s.connections.get_or_init(|| ConnectionSeries {
            active: s
                .families
                .connections_active
                .get_or_create_owned(&s.label()),
            total: s.families.connections_total.get_or_create_owned(&s.label()),
        })
    }

    /// `wsgate_connections_active{route}`.
    pub fn connections_active(&self) -> &Gauge {
        &self.connections().active
    }

    /// `wsgate_connections_total{route}`.
    pub fn connections_total(&self) -> &Counter {
        &self.connections().total
    }

    /// `wsgate_http_requests_total{route}`.
    pub fn http_requests_total(&self) -> &Counter {
        let s = &self.0;
        s.http_requests.get_or_init(|| {
            s.families
                .http_requests_total
                .get_or_create_owned(&s.label())
        })
    }

    /// `wsgate_bytes_total` and `wsgate_messages_total` of the route, both directions.
    /// A relay calls this when it flushes counts (on a timer, not per message); after the
    /// first call it is an atomic load.
    pub fn relayed(&self) -> &Relayed {
        let s = &self.0;
        s.relayed.get_or_init(|| {
            let (f, up, down) = (
                &s.families,
                s.bytes_label(Direction::ClientToUpstream),
                s.bytes_label(Direction::UpstreamToClient),
            );
            Relayed {
                bytes_up: f.bytes_total.get_or_create_owned(&up),
                messages_up: f.messages_total.get_or_create_owned(&up),
                bytes_down: f.bytes_total.get_or_create_owned(&down),
                messages_down: f.messages_total.get_or_create_owned(&down),
            }
        })
    }

    /// `wsgate_upstream_connect_seconds`: the process-wide histogram, or the route's own
    /// with `--per-route-histograms`.
    pub fn connect_seconds(&self) -> &Histogram {
        let s = &self.0;
        s.connect_seconds
            .get_or_init(|| s.families.connect_seconds.for_route(&s.route))
    }

    pub fn failure(&self, reason: FailureReason) {
        let s = &self.0;
        // `ALL` lists the variants in declaration order.
        s.failures[reason as usize]
            .get_or_init(|| {
                s.families
                    .failures_total
                    .get_or_create_owned(&FailureLabel {
                        route: s.route.to_string(),
                        reason,
                    })
            })
            .inc();
    }

    /// A Close frame with `code` that `side` sent on a relay that ended. Called once per
    /// Close at a connection's end, never per message.
    pub fn close_seen(&self, side: CloseSide, code: u16) {
        let s = &self.0;
        if let Some(i) = USUAL_CLOSES.iter().position(|usual| *usual == (side, code)) {
            s.usual_closes[i]
                .get_or_init(|| {
                    s.families
                        .closes_total
                        .get_or_create_owned(&s.closes_label(side, code))
                })
                .inc();
            return;
        }
        let mut closes = lock(&s.other_closes);
        if let Some((_, _, c)) = closes.iter().find(|(d, k, _)| (*d, *k) == (side, code)) {
            c.inc();
            return;
        }
        let c = s
            .families
            .closes_total
            .get_or_create_owned(&s.closes_label(side, code));
        c.inc();
        closes.push((side, code, c));
    }

    /// `wsgate_message_size_bytes`, client → backend then back (process-wide).
    pub fn message_sizes(&self) -> &[MessageSizeHistogram; 2] {
        &self.0.families.message_sizes
    }

    /// `wsgate_connection_duration_seconds` (process-wide).
    pub fn connection_seconds(&self) -> &Histogram {
        &self.0.families.connection_seconds
    }

    /// A Close frame of wsgate's own (`code`) went `to` a side of a relay that ended.
    /// Called once per connection end, never per message.
    pub fn close_sent(&self, to: CloseTo, code: u16) {
        let s = &self.0;
        let mut closes = lock(&s.closes_sent);
        if let Some((_, _, c)) = closes.iter().find(|(t, k, _)| (*t, *k) == (to, code)) {
            c.inc();
            return;
        }
        let c = s
            .families
            .closes_sent_total
            .get_or_create_owned(&CloseLabel {
                route: s.route.to_string(),
                to,
                code,
            });
        c.inc();
        closes.push((to, code, c));
    }

    /// `n` keep-alive Pings of wsgate's own went `to` a side of a relay that ended (none:
    /// no series). Called once per connection end.
    pub fn keepalive_pings(&self, to: CloseTo, n: u32) {
        if n == 0 {
            return;
        }
        let s = &self.0;
        s.keepalive_pings[to as usize]
            .get_or_init(|| {
                s.families
                    .keepalive_pings_total
                    .get_or_create_owned(&PingLabel {
                        route: s.route.to_string(),
                        to,
                    })
            })
            .inc_by(u64::from(n));
    }

    /// `side` did not answer a keep-alive Ping in time.
    pub fn keepalive_timeout(&self, side: CloseTo) {
        let s = &self.0;
        s.keepalive_timeouts[side as usize]
            .get_or_init(|| {
                s.families
                    .keepalive_timeouts_total
                    .get_or_create_owned(&UnansweredLabel {
                        route: s.route.to_string(),
                        side,
                    })
            })
            .inc();
    }

    pub fn refusal(&self, reason: RefusalReason) {
        let s = &self.0;
        // `ALL` lists the variants in declaration order.
        s.refusals[reason as usize]
            .get_or_init(|| {
                s.families
                    .refusals_total
                    .get_or_create_owned(&RefusalLabel {
                        route: s.route.to_string(),
                        reason,
                    })
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `/metrics` that carry `route="{route}"`.
    fn series_of(m: &Metrics, route: &str) -> Vec<String> {
        let label = format!("route=\"{route}\"");
        m.encode()
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&label))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn refusals_are_exported_per_route_and_reason_with_lowercase_labels() {
        let m = Metrics::new();
        let route = m.route("ns/chat");
        route.refusal(RefusalReason::Origin);
        route.refusal(RefusalReason::Origin);
        route.refusal(RefusalReason::Connections);
        m.unrouted_refusal(RefusalReason::Path);
        route.close_sent(CloseTo::Client, 1009);
        route.close_sent(CloseTo::Backend, 1001);
        route.close_sent(CloseTo::Client, 1009);
        let text = m.encode();
        for line in [
            r#"wsgate_refusals_total{route="ns/chat",reason="origin"} 2"#,
            r#"wsgate_refusals_total{route="ns/chat",reason="connections"} 1"#,
            r#"wsgate_refusals_total{route="",reason="path"} 1"#,
            r#"wsgate_closes_sent_total{route="ns/chat",to="Client",code="1009"} 2"#,
            r#"wsgate_closes_sent_total{route="ns/chat",to="Backend",code="1001"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"reason="ip""#),
            "a reason never counted has no series\n{text}"
        );
        for (i, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "ALL is in declaration order");
        }
        for (i, reason) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "ALL is in declaration order");
        }
    }

    /// A route that is compiled (its handles taken) but never used adds no series.
    #[test]
    fn a_route_never_used_adds_no_series() {
        let m = Metrics::new();
        let before = m.encode();
        let idle = m.route("ns/idle");
        let _ = idle.clone();
        assert_eq!(series_of(&m, "ns/idle"), Vec::<String>::new());
        assert_eq!(m.encode(), before, "no series, not even at zero");
        assert_eq!(m.live_routes(), 1);
    }

    /// A used route gets exactly the series of what it used: a connection its two
    /// connection series, relayed bytes its four traffic series, one failure and one
    /// refusal reason their own, and nothing at zero for the reasons it never met.
    #[test]
    fn a_used_route_adds_exactly_the_series_it_used() {
        let m = Metrics::new();
        let r = m.route("ns/chat");
        r.connections_total().inc();
        r.connections_active().inc();
        r.relayed().bytes_up.inc_by(10);
        r.relayed().messages_up.inc();
        r.failure(FailureReason::ConnectTimeout);
        r.refusal(RefusalReason::Rate);
        r.connect_seconds().observe(0.001);
        let mut got = series_of(&m, "ns/chat");
        got.sort();
        let mut want = vec![
            r#"wsgate_connections_active{route="ns/chat"} 1"#,
            r#"wsgate_connections_total{route="ns/chat"} 1"#,
            r#"wsgate_bytes_total{route="ns/chat",direction="ClientToUpstream"} 10"#,
            r#"wsgate_bytes_total{route="ns/chat",direction="UpstreamToClient"} 0"#,
            r#"wsgate_messages_total{route="ns/chat",direction="ClientToUpstream"} 1"#,
            r#"wsgate_messages_total{route="ns/chat",direction="UpstreamToClient"} 0"#,
            r#"wsgate_handshake_failures_total{route="ns/chat",reason="ConnectTimeout"} 1"#,
            r#"wsgate_refusals_total{route="ns/chat",reason="rate"} 1"#,
        ];
        want.sort();
        assert_eq!(
            got, want,
            "the process-wide connect histogram has no route label"
        );
        assert!(m
            .encode()
            .contains("wsgate_upstream_connect_seconds_count 1\n"));
    }

    /// `--per-route-histograms` gives each route that dialled its own histogram; by default
    /// every route observes into one process-wide histogram.
    #[test]
    fn connect_histogram_is_per_route_only_when_asked() {
        for per_route in [false, true] {
            let m = Metrics::with_options(
                MetricsOptions {
                    per_route_histograms: per_route,
                },
                |_| {},
            );
            let (a, b, idle) = (m.route("a"), m.route("b"), m.route("idle"));
            a.connect_seconds().observe(0.001);
            b.connect_seconds().observe(0.002);
            b.connect_seconds().observe(0.003);
            let text = m.encode();
            let buckets = text
                .lines()
                .filter(|l| l.starts_with("wsgate_upstream_connect_seconds_bucket"))
                .count();
            if per_route {
                assert!(text.contains(r#"wsgate_upstream_connect_seconds_count{route="a"} 1"#));
                assert!(text.contains(r#"wsgate_upstream_connect_seconds_count{route="b"} 2"#));
                assert_eq!(buckets, 2 * 17, "{text}");
            } else {
                assert!(
                    text.contains("wsgate_upstream_connect_seconds_count 3\n"),
                    "{text}"
                );
                assert_eq!(buckets, 17, "{text}");
            }
            assert!(!text.contains(r#"route="idle""#), "{text}");
            drop(idle);
        }
    }

    /// While any handle of a route lives, `route` returns the same handles and the series
    /// stay; once the last is dropped (the route left every table, its last connection
    /// ended), its series and its entry in the map of live routes go.
    #[test]
    fn series_leave_with_the_last_handles_of_a_route() {
        let m = Metrics::with_options(
            MetricsOptions {
                per_route_histograms: true,
            },
            |_| {},
        );
        let old_generation = m.route("gone");
        old_generation.connections_total().inc();
        old_generation.close_sent(CloseTo::Client, 1001);
        old_generation.failure(FailureReason::NoEndpoint);
        old_generation.connect_seconds().observe(0.1);
        let connection = old_generation.clone();
        let new_generation = m.route("gone");
        new_generation.connections_total().inc();
        assert!(series_of(&m, "gone")
            .contains(&r#"wsgate_connections_total{route="gone"} 2"#.to_string()));
        drop((old_generation, new_generation));
        assert!(
            !series_of(&m, "gone").is_empty(),
            "a connection still holds it"
        );
        drop(connection);
        assert_eq!(series_of(&m, "gone"), Vec::<String>::new());
        assert_eq!(m.live_routes(), 0);
        // Back again: counters start over.
        let back = m.route("gone");
        back.connections_total().inc();
        let mut again = series_of(&m, "gone");
        again.sort();
        assert_eq!(
            again,
            [
                r#"wsgate_connections_active{route="gone"} 0"#,
                r#"wsgate_connections_total{route="gone"} 1"#,
            ]
        );
    }

    /// A `RouteSeries` dropped after a newer one of the same route was made hands its
    /// resolved handles over instead of removing series the newer one shares.
    #[test]
    fn a_replaced_route_series_hands_its_series_over() {
        let m = Metrics::new();
        let older = RouteSeries::new("r".into(), Arc::clone(&m.families));
        let newer = m.route("r");
        older.refusals[RefusalReason::Auth as usize]
            .get_or_init(|| {
                m.families
                    .refusals_total
                    .get_or_create_owned(&RefusalLabel {
                        route: "r".into(),
                        reason: RefusalReason::Auth,
                    })
            })
            .inc();
        drop(older);
        assert_eq!(
            series_of(&m, "r"),
            vec![r#"wsgate_refusals_total{route="r",reason="auth"} 1"#.to_string()]
        );
        drop(newer);
        assert_eq!(series_of(&m, "r"), Vec::<String>::new());
    }

    #[test]
    fn keepalive_series_exist_only_for_routes_that_pinged() {
        let m = Metrics::new();
        let quiet = m.route("ns/quiet");
        let chat = m.route("ns/chat");
        quiet.keepalive_pings(CloseTo::Client, 0);
        chat.keepalive_pings(CloseTo::Client, 3);
        chat.keepalive_pings(CloseTo::Backend, 2);
        chat.keepalive_timeout(CloseTo::Backend);
        let text = m.encode();
        for line in [
            r#"wsgate_keepalive_pings_total{route="ns/chat",to="Client"} 3"#,
            r#"wsgate_keepalive_pings_total{route="ns/chat",to="Backend"} 2"#,
            r#"wsgate_keepalive_timeouts_total{route="ns/chat",side="Backend"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains(r#"keepalive_pings_total{route="ns/quiet""#));
        assert!(!text.contains(r#"side="Client""#));
    }
}
