use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One WebSocket route: which requests it takes (upstream side) and where they go
/// (downstream side).
//
// The CEL rules reject what the API server can check on its own, so a bad route fails at
// `kubectl apply` rather than only in its status.
// Each `printcolumn(...)` repeats `type_`, which clippy reads as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "wsgate.io",
    version = "v1alpha1",
    kind = "WsRoute",
    namespaced,
    status = "WsRouteStatus",
    shortname = "wsr",
    doc = "A WebSocket route served by wsgate: which requests it takes and which pods get them.",
    category = "wsgate",
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.upstreamHost"),
    printcolumn(
        name = "Path",
        type_ = "string",
        json_path = ".spec.upstreamPathTemplate"
    ),
    printcolumn(name = "Backend", type_ = "string", json_path = ".spec.serviceName"),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyEndpoints"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("has(self.serviceName) != has(self.downstreamHostAndPorts)")
        .message("set exactly one of serviceName and downstreamHostAndPorts")
        .reason(Reason::FieldValueInvalid),
    validation = Rule::new("has(self.serviceName) == has(self.servicePort)")
        .message("serviceName and servicePort go together")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new("has(self.authenticationOptions) || (!has(self.routeClaimsRequirement) && !has(self.addHeadersToRequest))")
        .message("routeClaimsRequirement and addHeadersToRequest need authenticationOptions")
        .reason(Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WsRouteSpec {
    /// Ocelot path template the request must match, e.g. `/chat/{room}` or `/{everything}`.
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub upstream_path_template: String,
    /// Host the request must carry: exact (`chat.example.com`), wildcard
    /// (`*.example.com`), with or without `:port`. Absent = any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    /// HTTP methods this route takes; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstream_http_method: Vec<String>,
    /// Whether literal parts of the upstream template compare case-sensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_is_case_sensitive: Option<bool>,
    /// Among routes of equal specificity, the higher priority wins (Ocelot semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Path sent to the backend, filled from the upstream template's placeholders.
    #[schemars(regex(pattern = r"^/"), length(max = 1024))]
    pub downstream_path_template: String,
    /// `ws` or `wss`; plain HTTP requests on the route go as `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_scheme: Option<DownstreamScheme>,
    /// Kubernetes Service in the route's namespace whose EndpointSlices give the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub service_name: Option<String>,
    /// Port of `serviceName`: a number or a port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // `string(self)` rather than `type(self)`: the API server types int-or-string as dyn
    // either way, and client-side evaluators (kube's `cel`, used in tests) lack `type()`.
    #[x_kube(validation = Rule::new(
        "string(self).matches('^[0-9]+$') ? int(string(self)) >= 1 && int(string(self)) <= 65535 : string(self).matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(string(self)) <= 15"
    ).message("servicePort is a port number (1-65535) or a port name"))]
    pub service_port: Option<IntOrString>,
    /// Static backends, instead of `serviceName`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub downstream_host_and_ports: Vec<HostAndPort>,
    /// How a backend is chosen for each new connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_options: Option<LoadBalancerOptions>,
    /// Skip verification of `wss` backends' certificates. Dangerous: anyone on the path
    /// to the backend can read and change the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dangerous_accept_any_server_certificate_validator: Option<bool>,
    /// Time limits for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeouts>,
    /// Certificate wsgate presents to clients of `upstreamHost` on the TLS listener
    /// (chosen by SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// How wsgate verifies `wss` backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<BackendTlsSpec>,
    /// Message and connection limits of this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Ocelot's rate limiting: handshakes and plain HTTP requests per client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_options: Option<RateLimitOptionsSpec>,
    // Authentication (issue 20): a JWT verified on the handshake and on plain HTTP.
    /// Require a valid JWT (Ocelot's `AuthenticationOptions`): missing or invalid → 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication_options: Option<super::AuthenticationOptions>,
    /// Claim values the token must carry (Ocelot's `RouteClaimsRequirement`), e.g.
    /// `{role: admin}`; otherwise 403. Needs `authenticationOptions`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_claims_requirement: BTreeMap<String, String>,
    /// Headers set from the token's claims (Ocelot's `AddHeadersToRequest`), e.g.
    /// `{X-User-Id: "Claims[sub] > value"}`; a client's header of the same name is dropped.
    /// Needs `authenticationOptions`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_headers_to_request: BTreeMap<String, String>,
    // Who may use the route (docs/security.md).
    /// Origins a browser may open a WebSocket from (`https://app.example.com`,
    /// `https://*.example.com`, `http://localhost:3000`): an upgrade with another `Origin`,
    /// or none, gets 403; so does plain HTTP carrying another `Origin`. Absent = any origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = Rule::new("self.all(o, o.matches('^[hH][tT][tT][pP][sS]?://[^/?#@]+$'))")
        .message("each origin is scheme://host[:port] with scheme http or https, without path")
        .reason(Reason::FieldValueInvalid))]
    pub allowed_origins: Option<Vec<String>>,
    /// Ocelot's IP lists: addresses and CIDR blocks allowed or blocked (403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_options: Option<SecurityOptions>,
    // Gentle drains and rebalancing (issue 21, items 5 and 6; docs/routes.md).
    /// How live connections are closed on wsgate's shutdown and when their endpoint is
    /// removed or terminating (Close 1001 spread over a budget). Default: the
    /// `--drain-timeout` budget and `--drain-jitter` (spread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<super::DrainSpec>,
    /// Opt-in: close connections (1012) on an endpoint holding more than `maxSkew` times
    /// its fair share, a few per second, so they reconnect to less loaded endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<super::RebalanceSpec>,
    // Keep-alive (issue 21): wsgate's own pings on quiet connections.
    /// Ping a side that was quiet for `pingInterval`; one that does not answer within
    /// `pongTimeout` is treated as gone (the other side gets Close 1001 or 1011). Absent =
    /// no pings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<super::KeepaliveSpec>,
}

/// Ocelot's `SecurityOptions`: which client addresses may use the route. A client in
/// `ipBlockedList` is refused; when `ipAllowedList` is not empty, so is every client outside
/// it. The client address is the TCP peer, or what `--trusted-proxies` and
/// `--proxy-protocol` say it is.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityOptions {
    /// Addresses and CIDR blocks allowed (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`);
    /// empty = every address not blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 64)))]
    pub ip_allowed_list: Vec<String>,
    /// Addresses and CIDR blocks refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 64)))]
    pub ip_blocked_list: Vec<String>,
    /// Cut the allowed addresses out of the blocked blocks (block a range, allow a part of
    /// it). Default false: an address in both lists is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_allowed_from_blocked: Option<bool>,
}

impl WsRouteSpec {
    /// A route from `upstream` to `downstream` on static backends, every other field at its
    /// default: the shape of the demo's routes and of most tests.
    pub fn with_static_backends(
        upstream: &str,
        downstream: &str,
        backends: &[std::net::SocketAddr],
    ) -> Self {
        WsRouteSpec {
            upstream_path_template: upstream.into(),
            upstream_host: None,
            upstream_http_method: vec![],
            route_is_case_sensitive: None,
            priority: None,
            downstream_path_template: downstream.into(),
            downstream_scheme: None,
            service_name: None,
            service_port: None,
            downstream_host_and_ports: backends
                .iter()
                .map(|a| HostAndPort {
                    host: a.ip().to_string(),
                    port: i32::from(a.port()),
                })
                .collect(),
            load_balancer_options: None,
            dangerous_accept_any_server_certificate_validator: None,
            timeouts: None,
            tls: None,
            backend_tls: None,
            limits: None,
            rate_limit_options: None,
            authentication_options: None,
            route_claims_requirement: BTreeMap::new(),
            add_headers_to_request: BTreeMap::new(),
            allowed_origins: None,
            security_options: None,
            drain: None,
            rebalance: None,
            keepalive: None,
        }
    }
}

/// Where the route's server certificate comes from: a `kubernetes.io/tls` Secret in the
/// route's namespace (cluster), or PEM files (standalone; paths relative to the routes file).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[x_kube(
    validation = Rule::new("has(self.secretName) != has(self.certFile)")
        .message("set secretName (cluster) or certFile and keyFile (standalone)")
        .reason(Reason::FieldValueInvalid),
    validation = Rule::new("has(self.certFile) == has(self.keyFile)")
        .message("certFile and keyFile go together")
        .reason(Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) in the route's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// Standalone: PEM certificate chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub cert_file: Option<String>,
    /// Standalone: PEM private key of `certFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub key_file: Option<String>,
}

/// Verification of `wss`/`https` backends: the platform roots plus an optional CA.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[x_kube(validation = Rule::new("!(has(self.caSecretName) && has(self.caFile))")
    .message("set at most one of caSecretName and caFile")
    .reason(Reason::FieldValueInvalid))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsSpec {
    /// Name sent as SNI and required in the backend's certificate. Default: the backend's
    /// host (`<serviceName>.<namespace>.svc` for Service backends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
    /// A Secret in the route's namespace whose `ca.crt` holds extra trusted CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub ca_secret_name: Option<String>,
    /// Standalone: PEM file of extra trusted CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub ca_file: Option<String>,
}

/// Per-route limits. Absent fields: no limit. Counts are per replica.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[x_kube(validation = Rule::new("!has(self.messageBurst) || has(self.messagesPerSecond)")
    .message("messageBurst needs messagesPerSecond")
    .reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    /// A message (all its frames) with more payload bytes than this gets Close 1009 to its
    /// sender (and Close 1001 to the other side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_message_bytes: Option<i64>,
    /// Messages per second per connection and direction (token bucket); over it, Close 1008.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub messages_per_second: Option<i64>,
    /// Size of the message token bucket (default: `messagesPerSecond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub message_burst: Option<i64>,
    /// Upgraded connections on this route; a handshake over it gets 503 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub max_connections: Option<i64>,
    /// Upgraded connections per client address on this route; over it, 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4294967295_i64))]
    pub max_connections_per_client: Option<i64>,
}

/// Ocelot's `RateLimitOptions`: at most `limit` handshakes and plain HTTP requests per
/// client address per `period` (a fixed window); over it, 429 with `Retry-After`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema, Default)]
#[x_kube(validation = Rule::new("(has(self.enableRateLimiting) && !self.enableRateLimiting) || (has(self.period) && has(self.limit))")
    .message("rate limiting needs period and limit")
    .reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitOptionsSpec {
    /// Whether requests are counted at all (default `true` when the section is present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_rate_limiting: Option<bool>,
    /// The counting window: `500ms`, `1s`, `5m`, `1h`, `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)$"))]
    pub period: Option<String>,
    /// Seconds a client that went over the limit waits before it is counted afresh (the
    /// `Retry-After` it gets); 0: until its window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub period_timespan: Option<f64>,
    /// Requests a client may make per `period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub limit: Option<i64>,
    /// Client addresses or CIDRs (`10.0.0.1`, `10.1.0.0/16`, `2001:db8::/32`) never counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024))]
    pub client_whitelist: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DownstreamScheme {
    #[default]
    Ws,
    Wss,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostAndPort {
    /// IP address or DNS name of the backend.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// TCP port of the backend.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[x_kube(
    validation = Rule::new("!has(self.type) || self.type != 'CookieStickySessions' || (has(self.key) && size(self.key) > 0)")
        .message("CookieStickySessions needs key (the cookie name)")
        .reason(Reason::FieldValueRequired),
    validation = Rule::new("has(self.type) && self.type == 'ConsistentHash' ? has(self.hashOn) : !has(self.hashOn)")
        .message("hashOn is required with type ConsistentHash and only allowed with it")
        .reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.hashOn) || self.hashOn == 'clientIp' || (has(self.key) && size(self.key) > 0)")
        .message("hashOn header, cookie and query need key (the header, cookie or query parameter name)")
        .reason(Reason::FieldValueRequired)
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerOptions {
    /// `NoLoadBalancer` (default), `RoundRobin`, `LeastConnection`, `CookieStickySessions`,
    /// `ConsistentHash`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["NoLoadBalancer", "RoundRobin", "LeastConnection", "CookieStickySessions", "ConsistentHash"]))]
    pub kind: Option<String>,
    /// `CookieStickySessions`: the cookie name. `ConsistentHash`: the header, cookie or
    /// query parameter named by `hashOn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub key: Option<String>,
    /// `CookieStickySessions`: how long (milliseconds) a session stays on its endpoint
    /// after its last request (default 3600000, one hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub expiry: Option<i64>,
    /// `ConsistentHash`: what is hashed: `header`, `cookie`, `query` (named by `key`) or
    /// `clientIp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["header", "cookie", "query", "clientIp"]))]
    pub hash_on: Option<String>,
    /// SignalR without cookies: learn the connection token from each negotiate response
    /// and send requests with `?id=<token>` to the endpoint that issued it. Works with any
    /// `type`.
    #[serde(
        default,
        rename = "pinSignalRConnections",
        skip_serializing_if = "Option::is_none"
    )]
    pub pin_signalr_connections: Option<bool>,
}

/// Durations are strings such as `5s`, `250ms`, `2m`, `1h`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTimeouts {
    /// Limit for the TCP connect to one backend (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub connect: Option<String>,
    /// Limit for the backend's answer to the handshake or request head (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub handshake: Option<String>,
    /// An upgraded connection with no bytes in either direction for this long is closed
    /// with Close 1001 and a log line. Absent = never (quiet sockets stay open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub idle: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct WsRouteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Endpoints taking new connections (ready pods, or the static backends).
    #[serde(default)]
    pub ready_endpoints: i32,
    /// `Accepted`, `ResolvedRefs` and `Programmed` (see `api::conditions`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}
