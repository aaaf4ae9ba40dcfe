//! Metric families are registered once; `compile` resolves one `RouteMetrics` per route so
//! the data plane only increments handles it already holds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

    const ALL: [FailureReason; 8] = [
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

/// Process-wide counters of the relays that moved to relay threads (`proxy::relay`'s
/// offload), registered with the gateway's metrics.
#[derive(Clone, Default)]
pub struct OffloadMetrics {
    /// Relays moved to a relay thread.
    pub moved: Counter,
    /// Relays running on relay threads now.
    pub on_threads: Gauge,
}

/// Every metric family wsgate exports, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    connections_active: Family<RouteLabel, Gauge>,
    connections_total: Family<RouteLabel, Counter>,
    http_requests_total: Family<RouteLabel, Counter>,
    failures_total: Family<FailureLabel, Counter>,
    refusals_total: Family<RefusalLabel, Counter>,
    closes_sent_total: Family<CloseLabel, Counter>,
    bytes_total: Family<BytesLabel, Counter>,
    messages_total: Family<BytesLabel, Counter>,
    connect_seconds: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub table_generation: Gauge,
    pub table_reloads_ok: Counter,
    pub table_reloads_failed: Counter,
    pub route_problems: Gauge,
    offload: OffloadMetrics,
    /// Access log records dropped because the writer was behind (`--access-log`).
    pub access_log_dropped: Counter,
    /// Per-message telemetry (issue 21 item 3): process-wide histograms, closes per route.
    message_sizes: Family<DirectionLabel, MessageSizeHistogram>,
    connection_seconds: Histogram,
    closes_total: Family<ClosesLabel, Counter>,
    /// Handles already resolved, by route: a rebuild of 10,000 routes then costs one map
    /// lookup per route instead of sixteen family lookups with label allocations.
    resolved: std::sync::Mutex<std::collections::HashMap<String, RouteMetrics>>,
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
        let mut registry = Registry::with_prefix("wsgate");
        extra(&mut registry);
        let m = Metrics {
            connections_active: Family::default(),
            connections_total: Family::default(),
            http_requests_total: Family::default(),
            failures_total: Family::default(),
            refusals_total: Family::default(),
            closes_sent_total: Family::default(),
            bytes_total: Family::default(),
            messages_total: Family::default(),
            connect_seconds: Family::new_with_constructor(connect_histogram),
            table_generation: Gauge::default(),
            table_reloads_ok: Counter::default(),
            table_reloads_failed: Counter::default(),
            route_problems: Gauge::default(),
            offload: Default::default(),
            access_log_dropped: Counter::default(),
            message_sizes: Family::default(),
            connection_seconds: connection_duration_histogram(),
            closes_total: Family::default(),
            resolved: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections_active",
            "Upgraded WebSocket connections currently relayed",
            m.connections_active.clone(),
        );
        registry.register(
            "connections",
            "Upgraded WebSocket connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "http_requests",
            "Plain HTTP requests proxied (SignalR negotiate, SSE, long polling)",
            m.http_requests_total.clone(),
        );
        registry.register(
            "handshake_failures",
            "Requests answered by wsgate itself instead of a backend, by reason",
            m.failures_total.clone(),
        );
        registry.register(
            "refusals",
            "Requests the edge refused before dialling a backend (origin, ip, auth, scope, claims, rate, connections, path)",
            m.refusals_total.clone(),
        );
        registry.register(
            "closes_sent",
            "Close frames wsgate sent on its own behalf at the end of a relayed connection, by side and code (1001 going away, 1002/1007 a broken rule, 1008 rate or token expiry, 1009 message too big, 1011 backend lost, 1014 bad gateway)",
            m.closes_sent_total.clone(),
        );
        registry.register(
            "bytes",
            "Bytes relayed on upgraded connections",
            m.bytes_total.clone(),
        );
        registry.register(
            "messages",
            "WebSocket frames relayed on upgraded connections",
            m.messages_total.clone(),
        );
        registry.register(
            "upstream_connect_seconds",
            "Time to open a TCP connection to a backend",
            m.connect_seconds.clone(),
        );
        registry.register(
            "route_table_generation",
            "Generation of the route table serving new requests",
            m.table_generation.clone(),
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
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer was behind (the channel to it was full)",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "message_size_bytes",
            "Payload size of WebSocket data messages relayed, by direction (process-wide)",
            m.message_sizes.clone(),
        );
        registry.register(
            "connection_duration_seconds",
            "How long relayed WebSocket connections lasted, from the 101 to the end (process-wide)",
            m.connection_seconds.clone(),
        );
        registry.register(
            "closes",
            "Close frames seen on relayed connections when they end, by who sent them (client, backend, wsgate) and code",
            m.closes_total.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The relay threads' counters.
    pub fn offload(&self) -> OffloadMetrics {
        self.offload.clone()
    }

    /// Resolves one route's handles; called by `compile`, never per connection.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let mut resolved = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = resolved.get(route) {
            return m.clone();
        }
        let m = self.resolve_route(route);
        resolved.insert(route.to_string(), m.clone());
        m
    }

    fn resolve_route(&self, route: &str) -> RouteMetrics {
        // Each handle is cloned out in its own statement: `get_or_create` returns a read
        // guard, and a second call creating a new series while it is alive would deadlock.
        let l = RouteLabel {
            route: route.to_string(),
        };
        let bytes = |direction| BytesLabel {
            route: route.to_string(),
            direction,
        };
        // `_owned`: a `get_or_create` read guard would live to the end of this struct
        // literal, and the next creation in the same family would deadlock on its write lock.
        RouteMetrics {
            connections_active: self.connections_active.get_or_create_owned(&l),
            connections_total: self.connections_total.get_or_create_owned(&l),
            http_requests_total: self.http_requests_total.get_or_create_owned(&l),
            bytes_up: self
                .bytes_total
                .get_or_create_owned(&bytes(Direction::ClientToUpstream)),
            bytes_down: self
                .bytes_total
                .get_or_create_owned(&bytes(Direction::UpstreamToClient)),
            messages_up: self
                .messages_total
                .get_or_create_owned(&bytes(Direction::ClientToUpstream)),
            messages_down: self
                .messages_total
                .get_or_create_owned(&bytes(Direction::UpstreamToClient)),
            connect_seconds: self.connect_seconds.get_or_create_owned(&l),
            failures: FailureReason::ALL.map(|reason| {
                self.failures_total.get_or_create_owned(&FailureLabel {
                    route: route.to_string(),
                    reason,
                })
            }),
            closes_sent: self.closes_sent_total.clone(),
            route: route.into(),
            message_sizes: [Direction::ClientToUpstream, Direction::UpstreamToClient].map(
                |direction| {
                    self.message_sizes
                        .get_or_create_owned(&DirectionLabel { direction })
                },
            ),
            connection_seconds: self.connection_seconds.clone(),
            closes: self.closes_total.clone(),
            usual_closes: Arc::default(),
            refusals: RefusalReason::ALL.map(|reason| {
                self.refusals_total.get_or_create_owned(&RefusalLabel {
                    route: route.to_string(),
                    reason,
                })
            }),
        }
    }

    /// Failures that happen before any route is known (no route matched, bad request).
    pub fn unrouted_failure(&self, reason: FailureReason) {
        self.failures_total
            .get_or_create(&FailureLabel {
                route: String::new(),
                reason,
            })
            .inc();
    }

    /// Refusals that happen before any route is known (a path that cannot be normalized, a
    /// process-wide connection limit).
    pub fn unrouted_refusal(&self, reason: RefusalReason) {
        self.refusals_total
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

/// One route's resolved metric handles.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    pub connections_active: Gauge,
    pub connections_total: Counter,
    pub http_requests_total: Counter,
    pub bytes_up: Counter,
    pub bytes_down: Counter,
    pub messages_up: Counter,
    pub messages_down: Counter,
    pub connect_seconds: Histogram,
    failures: [Counter; 8],
    refusals: [Counter; 8],
    /// Series made when a connection ends with a Close of ours (few codes, so created on
    /// first use rather than eight per route up front).
    closes_sent: Family<CloseLabel, Counter>,
    route: std::sync::Arc<str>,
    /// The process-wide message-size histograms, client → backend and back (shared by
    /// every route: not per route unless a route asks, which none can yet).
    pub message_sizes: [MessageSizeHistogram; 2],
    /// The process-wide connection-duration histogram.
    pub connection_seconds: Histogram,
    /// `wsgate_closes_total`, series made on first use.
    closes: Family<ClosesLabel, Counter>,
    /// The series of the usual Closes ([`USUAL_CLOSES`]), kept once made: most connection
    /// ends then cost no label allocation and no family lookup.
    usual_closes: Arc<[std::sync::OnceLock<Counter>; USUAL_CLOSES.len()]>,
}

/// The Closes most connections end with.
const USUAL_CLOSES: [(CloseSide, u16); 5] = [
    (CloseSide::Client, 1000),
    (CloseSide::Backend, 1000),
    (CloseSide::Client, 1001),
    (CloseSide::Backend, 1001),
    (CloseSide::Wsgate, 1001),
];

impl RouteMetrics {
    pub fn failure(&self, reason: FailureReason) {
        let i = FailureReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.failures[i].inc();
    }

    /// A Close frame of wsgate's own (`code`) went `to` a side of a relay that ended.
    /// Called once per connection end, never per message.
    pub fn close_sent(&self, to: CloseTo, code: u16) {
        self.closes_sent
            .get_or_create(&CloseLabel {
                route: self.route.to_string(),
                to,
                code,
            })
            .inc();
    }

    /// A Close frame with `code` that `side` sent on a relay that ended. Called once per
    /// Close at a connection's end, never per message.
    pub fn close_seen(&self, side: CloseSide, code: u16) {
        let label = || ClosesLabel {
            route: self.route.to_string(),
            side,
            code,
        };
        match USUAL_CLOSES.iter().position(|usual| *usual == (side, code)) {
            Some(i) => self.usual_closes[i]
                .get_or_init(|| self.closes.get_or_create_owned(&label()))
                .inc(),
            None => self.closes.get_or_create(&label()).inc(),
        };
    }

    pub fn refusal(&self, reason: RefusalReason) {
        // `ALL` lists the variants in declaration order.
        self.refusals[reason as usize].inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            r#"wsgate_refusals_total{route="ns/chat",reason="ip"} 0"#,
            r#"wsgate_refusals_total{route="",reason="path"} 1"#,
            r#"wsgate_closes_sent_total{route="ns/chat",to="Client",code="1009"} 2"#,
            r#"wsgate_closes_sent_total{route="ns/chat",to="Backend",code="1001"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        for (i, reason) in RefusalReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "ALL is in declaration order");
        }
    }
}
