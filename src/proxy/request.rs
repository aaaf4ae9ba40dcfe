//! One client request, whichever path read its head (connection.rs's direct path or hyper's
//! service): its context (`RequestCtx`: client, request id, `Host`), the route lookup, and
//! the one way a refusal of wsgate's own is logged and counted (the edge's refusals through
//! the rate-limited `refusal_log`). Both request paths and the
//! steps below them (upstream, websocket, http) take their facts from here.
//!
//! The connection's tracing span (`connection_span`) learns the request id, route and
//! endpoint from the steps here as they become known, so every line the connection logs
//! names them.

use std::borrow::Cow;
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use tracing::field::Empty;

use super::auth::redact_access_token;
use super::error::{Error, Limited};
use super::headers::X_REQUEST_ID;
use super::refusal_log;
use super::target;
use super::Gateway;
use crate::balance::PickContext;
use crate::table::{CompiledRoute, RouteMatch, RouteTable};
use crate::telemetry::access_log::{AccessEntry, AccessKind, AccessLog, AccessRecord};
use crate::telemetry::otlp::{self, ConnectionSpan, SpanEnd};
use crate::telemetry::trace_context::TraceContext;

/// Largest request head forwarded (request line and headers); larger ones get 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client must send its whole request head within this time (slowloris guard).
pub const HEAD_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most headers a request head may carry (hyper's limit too); more get 431.
pub const MAX_HEADERS: usize = 100;

/// The body of every response hyper writes for wsgate.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// One of wsgate's own answers as a hyper response.
pub fn full(resp: Response<Full<Bytes>>) -> Response<ProxyBody> {
    resp.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// The span of one client connection: its client address now, its request id, route and
/// endpoint recorded as each becomes known. Everything the connection does (head, dial,
/// answer, relay) runs inside it.
pub fn connection_span(peer: SocketAddr) -> tracing::Span {
    tracing::info_span!(
        "connection",
        client = %peer,
        forwarded_for = Empty,
        request_id = Empty,
        trace_id = Empty,
        route = Empty,
        endpoint = Empty
    )
}

/// Facts about the request the downstream steps need.
pub struct RequestCtx {
    /// The client's address: the TCP peer, or the address a trusted proxy forwarded
    /// (`client_addr`; port 0 when it came from `X-Forwarded-For`).
    pub peer: SocketAddr,
    /// The TCP peer, the previous hop: what wsgate appends to `X-Forwarded-For`.
    pub hop: SocketAddr,
    /// `http` or `https`, as the client reached wsgate.
    pub proto: &'static str,
    pub request_id: HeaderValue,
    pub host: Option<HeaderValue>,
    /// The connection's span (`connection_span`), looked up once per request.
    span: tracing::Span,
    /// The request's trace: boxed, as the connection's task keeps this context for the
    /// whole life of a relay.
    tracing: Box<Tracing>,
    /// What the access log needs of the request, when the log is on (boxed: most
    /// deployments run without it).
    access: Option<Box<AccessCtx>>,
}

/// A request's trace context and exported span.
struct Tracing {
    /// The W3C trace context the backend gets (`telemetry::trace_context`).
    context: TraceContext,
    /// The request's exported span (`--otlp-endpoint`; `None` without): learns the route
    /// and status as they become known, ends when this context is dropped unless a relay
    /// took it (`take_span`).
    otel: std::sync::Mutex<Option<ConnectionSpan>>,
}

/// A request's facts for its access log line.
struct AccessCtx {
    log: AccessLog,
    /// When the request head had been read: the access log's durations start here.
    received: Instant,
    kind: AccessKind,
    method: Option<Method>,
    /// Path and query with `access_token`'s value redacted.
    path: String,
    /// The backend endpoint, once one is known.
    endpoint: OnceLock<String>,
}

impl RequestCtx {
    /// The context of a request with `headers` from the TCP peer `hop`: the client's
    /// `X-Request-Id` when it sent a usable one, else a new id (recorded in the connection's
    /// span either way), and the client's address (`gw`'s trusted proxies decide whether
    /// `X-Forwarded-For` is believed; a forwarded address is recorded in the span too).
    pub fn new(
        gw: &Gateway,
        hop: SocketAddr,
        proto: &'static str,
        headers: &HeaderMap,
    ) -> RequestCtx {
        let request_id = match headers.get(&X_REQUEST_ID) {
            Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
            _ => new_request_id(),
        };
        let peer = gw.client_address.client(hop, headers);
        let mut trace = TraceContext::from_headers(headers);
        let otel = otlp::start(&mut trace, request_id.to_str().unwrap_or("-"));
        let ctx = RequestCtx {
            peer,
            hop,
            proto,
            request_id,
            host: headers.get(header::HOST).cloned(),
            span: tracing::Span::current(),
            tracing: Box::new(Tracing {
                context: trace,
                otel: std::sync::Mutex::new(otel),
            }),
            access: gw.access_log.as_ref().map(|log| {
                Box::new(AccessCtx {
                    log: log.clone(),
                    received: Instant::now(),
                    kind: AccessKind::Http,
                    method: None,
                    path: String::new(),
                    endpoint: OnceLock::new(),
                })
            }),
        };
        ctx.span.record("request_id", ctx.request_id());
        ctx.span
            .record("trace_id", ctx.trace().trace_id_hex().as_str());
        if peer != hop {
            ctx.span
                .record("forwarded_for", tracing::field::display(peer.ip()));
        }
        ctx
    }

    /// Records in the connection's span the backend endpoint this request went to.
    pub fn record_endpoint(&self, endpoint: &str) {
        self.span.record("endpoint", endpoint);
        self.record_in_span(SpanEnd {
            endpoint: Some(endpoint),
            ..SpanEnd::default()
        });
        if let Some(access) = &self.access {
            let _ = access.endpoint.set(endpoint.to_string());
        }
    }

    /// Records facts in the exported span, if there is one (one uncontended lock per fact,
    /// only with `--otlp-endpoint`).
    pub fn record_in_span(&self, facts: SpanEnd<'_>) {
        if !otlp::enabled() {
            return;
        }
        let mut otel = self.tracing.otel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(span) = otel.as_mut() {
            span.record(facts);
        }
    }

    /// The exported span, for a relay to end when the connection ends.
    pub fn take_span(&self) -> Option<ConnectionSpan> {
        self.tracing
            .otel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The W3C trace context the backend gets.
    pub fn trace(&self) -> &TraceContext {
        &self.tracing.context
    }

    /// The backend endpoint recorded for the access log (None when it is off).
    pub fn endpoint(&self) -> Option<&str> {
        self.access.as_ref()?.endpoint.get().map(String::as_str)
    }

    /// The request line, for the access log (a no-op when it is off): `kind` of request,
    /// its method and target (path and query, `access_token`'s value redacted).
    pub fn request_line(&mut self, kind: AccessKind, method: &Method, target: &str) {
        if let Some(access) = &mut self.access {
            access.kind = kind;
            access.method = Some(method.clone());
            access.path = redact_access_token(target).into_owned();
        }
    }

    /// An access log record of this request with `status`, to finish and log when it ends
    /// (`route`: the one it matched); None when the access log is off.
    pub fn access_record(
        &self,
        route: Option<&CompiledRoute>,
        status: u16,
    ) -> Option<Box<AccessEntry>> {
        let access = self.access.as_ref()?;
        let mut record = AccessRecord::new(
            access.received,
            access.kind,
            self.peer,
            access.method.clone(),
            access.path.clone(),
        );
        record.request_id = self.request_id().to_string();
        if let Some(route) = route {
            record.route = route.route.id.0.clone();
        }
        if let Some(endpoint) = access.endpoint.get() {
            record.endpoint = endpoint.clone();
        }
        record.status = status;
        Some(access.log.entry(record))
    }

    /// Logs an answer that ends here (wsgate's own, a backend's refusal of an upgrade) in
    /// the access log, when it is on.
    pub fn log_answer(
        &self,
        route: Option<&CompiledRoute>,
        status: u16,
        reason: Option<&'static str>,
    ) {
        if let Some(mut entry) = self.access_record(route, status) {
            entry.record.reason = reason;
            entry.record.duration = entry.record.received.elapsed();
            entry.send();
        }
    }

    /// The request id as text, for answers and logs.
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// `pick` from a request's headers and query string: what the balancer may look at
    /// (cookies, headers, query, client IP).
    pub fn pick_from<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> PickContext<'a> {
        PickContext {
            headers,
            query,
            client_ip: self.peer.ip(),
            now_ms: unix_now_ms(),
            secure: self.proto == "https",
        }
    }

    /// The route for this request in `table` (`authority`: an absolute-form target's, used
    /// when the request has no `Host`), recorded in the connection's span; `NoRoute` names
    /// host and path.
    pub fn route<'t, 'r>(
        &'r self,
        table: &'t RouteTable,
        authority: Option<&'r str>,
        path: &'r str,
        query: Option<&'r str>,
        method: &Method,
    ) -> Result<RouteMatch<'t, 'r>, Error> {
        let host = self
            .host
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .or(authority);
        match table.find(host, path, query, method) {
            Some(found) => {
                self.span.record("route", found.route.route.id.0.as_str());
                self.record_in_span(SpanEnd {
                    route: Some(found.route.route.id.0.as_str()),
                    ..SpanEnd::default()
                });
                Ok(found)
            }
            None => Err(Error::NoRoute {
                host: host.unwrap_or("").to_string(),
                path: path.to_string(),
            }),
        }
    }

    /// The request's path in normal form (`target::normalize`), the one routes match and
    /// the downstream path is rendered from; a path that cannot be normalized is refused.
    pub fn normalized_path<'p>(&self, path: &'p str) -> Result<Cow<'p, str>, Error> {
        target::normalize(path).map_err(Error::Path)
    }

    /// Refuses a rendered downstream target with a `.` or `..` segment (one the route's own
    /// template made: a request path in normal form has none).
    pub fn check_downstream(&self, downstream: &str) -> Result<(), Error> {
        if target::has_dot_segment(downstream) {
            return Err(Error::Path(target::PathError::DownstreamDotSegment));
        }
        Ok(())
    }

    /// Logs and counts a request wsgate answers itself with `e` (`route`: the one it
    /// matched, if it got that far). Every such answer passes here once, on either path:
    /// a refusal by the edge's checks as `wsgate_refusals_total{reason}`, anything else as
    /// `wsgate_failures_total`.
    ///
    /// Each also gets its access log line (when the log is on): the status and the reason
    /// label, unthrottled but bounded (a full access log channel drops and counts), while
    /// the refusal log keeps the rate-limited diagnostic with the error's causes.
    pub fn failed(&self, gw: &Gateway, route: Option<&CompiledRoute>, e: &Error) {
        let status = e.status().as_u16();
        self.record_in_span(SpanEnd {
            status: Some(status),
            ..SpanEnd::default()
        });
        if self.access.is_some() {
            let reason = e
                .refusal()
                .map(|r| r.as_str())
                .or_else(|| e.reason().map(|r| r.as_str()));
            self.log_answer(route, status, reason);
        }
        if let Some(reason) = e.refusal() {
            // The process's limit is no route's: counted without one.
            let route =
                route.filter(|_| !matches!(e, Error::Limited(Limited::ProcessConnections { .. })));
            match route {
                Some(route) => route.metrics.refusal(reason),
                None => gw.metrics.unrouted_refusal(reason),
            }
            refusal_log::log(&refusal_log::Refused {
                route: route.map(|r| r.route.id.0.as_str()),
                client: self.peer,
                reason: reason.as_str(),
                status,
                error: &e.chain(),
            });
            return;
        }
        let Some(failure) = e.reason() else {
            return;
        };
        match route {
            Some(route) => {
                route.metrics.failure(failure);
                tracing::warn!(status, error = %e.chain(), "request not proxied");
            }
            None => {
                gw.metrics.unrouted_failure(failure);
                if matches!(e, Error::NoRoute { .. }) {
                    tracing::debug!(status, error = %e.chain(), "no route");
                } else {
                    tracing::info!(status, error = %e.chain(), "rejected the request");
                }
            }
        }
    }
}

/// Wall-clock milliseconds, for sticky cookies and pins that replicas must read alike.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// 16 hex digits, unique enough to find one request in the logs of every hop.
pub fn new_request_id() -> HeaderValue {
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static SEED: (u64, Cell<u64>) = (
            std::collections::hash_map::RandomState::new().build_hasher().finish(),
            Cell::new(0),
        );
    }
    let id = SEED.with(|(seed, n)| {
        n.set(n.get().wrapping_add(1));
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(*seed ^ n.get());
        h.finish()
    });
    let mut hex = [0u8; 16];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or(HeaderValue::from_static("0"))
}
