//! The WebSocket request sequence, one for both request paths: validate the upgrade, route
//! it, open the backend and forward the handshake (`upgrade.rs`), then either wsgate's own
//! answer, the backend's refusal, or its 101 and a relay ready to run (`Outcome`).
//!
//! The two callers differ only in how they write the outcome: `connection.rs` writes it by
//! hand on a connection's first request and relays in the same task; the hyper service
//! (`service.rs`) answers through hyper on a kept-alive connection and relays in a task of
//! its own once hyper hands the client connection over. Both run the relay through
//! `RelayAccount::relay` and account for its end with `RelayAccount::ended`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use hyper::body::Incoming;

use super::admit::{self, Admitted};
use super::drain::{DrainSignal, LiveRelay};
use super::error::{Error, Handshake};
use super::frame::Extensions;
use super::headers::strip_hop_by_hop;
use super::relay::{
    relay_streams, ClosedBy, Keepalive, MessageRate, Offload, RelayConfig, RelayStats, Side,
};
use super::request::RequestCtx;
use super::stream::Stream;
use super::upgrade::{request_head, upgrade, valid_target, Answer, SwitchedHead};
use super::{access, auth, handshake, upstream, Gateway};
use crate::balance::ConnectionGuard;
use crate::table::{CompiledRoute, RouteTable};
use crate::telemetry::access_log::{AccessEntry, CloseRecord, Closer, RelayTotals};
use crate::telemetry::otlp::{ConnectionSpan, SpanEnd};
use crate::telemetry::{CloseSide, CloseTo};

/// A client's WebSocket upgrade request, as either path read its head.
pub struct UpgradeRequest<'r> {
    pub method: &'r Method,
    pub version: http::Version,
    /// Forwarded to the backend (`headers::for_upstream`), then dropped.
    pub headers: HeaderMap,
    /// An absolute-form target's authority, the host when there is no `Host` header.
    pub authority: Option<&'r str>,
    pub path: &'r str,
    pub query: Option<&'r str>,
}

/// How an upgrade request ends on the client's side.
// Returned once per handshake and taken apart at once; boxing the large variant would cost
// an allocation per handshake to save a move.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// wsgate answers itself with this error (logged and counted already).
    Failed(Error),
    /// The backend refused the upgrade: its status, headers (hop-by-hop ones removed) and
    /// body go to the client.
    Refused(Response<Incoming>),
    /// The backend switched protocols: the client gets `SwitchAnswer`'s 101, then
    /// `RelayAccount::relay` runs the relay.
    Switched(SwitchAnswer, Relaying, RelayAccount),
}

/// Runs the sequence for one upgrade request: validate, route, open the backend, forward
/// the handshake. Every failure is logged and counted here (`RequestCtx::failed`).
pub async fn serve_upgrade(gw: &Gateway, ctx: &RequestCtx, req: UpgradeRequest<'_>) -> Outcome {
    ctx.record_in_span(SpanEnd {
        kind: "websocket",
        ..SpanEnd::default()
    });
    if let Err(e) = handshake::validate(req.method, req.version, &req.headers) {
        let e = Error::BadHandshake(e);
        ctx.failed(gw, None, &e);
        return Outcome::Failed(e);
    }
    let path = match ctx.normalized_path(req.path) {
        Ok(path) => path,
        Err(e) => {
            ctx.failed(gw, None, &e);
            return Outcome::Failed(e);
        }
    };
    let table = gw.publisher.current();
    let found = match ctx.route(&table, req.authority, &path, req.query, req.method) {
        Ok(found) => found,
        Err(e) => {
            ctx.failed(gw, None, &e);
            return Outcome::Failed(e);
        }
    };
    let (route, route_index) = (found.route, found.index);
    let mut downstream = found.downstream_path_and_query();
    drop(found);
    // Before the dial, cheapest first: the rendered path and who may use the route, then the
    // limits (the slots go with the relay, or back when this ends sooner), then the token.
    if let Err(e) = ctx
        .check_downstream(&downstream)
        .and_then(|()| access::admit(route, ctx, &req.headers, true))
    {
        ctx.failed(gw, Some(route), &e);
        return Outcome::Failed(e);
    }
    let admitted = match admit::upgrade(gw, ctx.peer.ip(), route) {
        Ok(admitted) => admitted,
        Err(e) => {
            ctx.failed(gw, Some(route), &e);
            return Outcome::Failed(e);
        }
    };
    let mut headers = req.headers;
    let authorized = match auth::check(&route.route, &headers, req.query) {
        Ok(authorized) => authorized,
        Err(e) => {
            ctx.failed(gw, Some(route), &e);
            return Outcome::Failed(e);
        }
    };
    let close_at = authorized.close_at;
    authorized.apply(&route.route, &mut headers, &mut downstream);
    let access = ctx.access_record(Some(route), 101);
    match open(route, headers, req.query, &downstream, ctx).await {
        Ok(Opened::Switched(switched)) => {
            let backend = Relaying {
                config: relay_config(route, &switched.head, close_at),
                upstream: switched.upstream,
                upstream_early: switched.early,
            };
            // Registered as a live relay of its route and endpoint, so gentle drains and
            // the rebalancer can ask it to close.
            let (budget, jitter) = gw.drain_defaults.for_route(&route.route);
            let live = gw
                .live
                .register(&route.route.id, switched.endpoint, budget, jitter);
            // The relay holds this table generation and finds its route by index.
            ctx.record_in_span(SpanEnd {
                status: Some(101),
                ..SpanEnd::default()
            });
            let account = RelayAccount {
                table,
                route_index,
                load: switched.load,
                started: Instant::now(),
                _admitted: admitted,
                live,
                otel: ctx.take_span(),
                access: access.map(|mut entry| {
                    // Known only now.
                    if let Some(endpoint) = ctx.endpoint() {
                        entry.record.endpoint = endpoint.to_string();
                    }
                    entry
                }),
            };
            let answer = SwitchAnswer {
                head: switched.head,
                set_cookie: switched.set_cookie,
            };
            Outcome::Switched(answer, backend, account)
        }
        Ok(Opened::Refused(resp)) => {
            ctx.record_in_span(SpanEnd {
                status: Some(resp.status().as_u16()),
                ..SpanEnd::default()
            });
            ctx.log_answer(Some(route), resp.status().as_u16(), None);
            Outcome::Refused(resp)
        }
        Err(e) => {
            ctx.failed(gw, Some(route), &e);
            Outcome::Failed(e)
        }
    }
}

/// The relay settings of `route` for a backend that answered `backend_101`. The one place
/// a relay's configuration is made, for both request paths; the 101 is at hand for what it
/// negotiated (`Sec-WebSocket-Extensions`). `token_expires_at`: when the request's token
/// expires on a `closeOnTokenExpiry` route (`auth::Authorized::close_at`).
fn relay_config(
    route: &CompiledRoute,
    backend_101: &SwitchedHead,
    token_expires_at: Option<Instant>,
) -> RelayConfig {
    let extensions = backend_101
        .end_to_end()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"sec-websocket-extensions"))
        .map(|(_, value)| value);
    let limits = &route.route.limits;
    RelayConfig {
        idle: route.route.timeouts.idle,
        extensions: Extensions::negotiated(extensions),
        max_message_bytes: limits.max_message_bytes,
        message_rate: limits.messages_per_second.map(|per_second| MessageRate {
            per_second,
            burst: limits.message_burst.unwrap_or(per_second),
        }),
        // Close 1008 to the client, 1001 to the backend when the token expires.
        close_at: token_expires_at,
        keepalive: route
            .route
            .keepalive
            .map(|k| Keepalive::new(k.ping_interval, k.pong_timeout)),
        ..RelayConfig::default()
    }
}

/// The client's 101: the backend's end-to-end headers and the sticky cookie.
pub struct SwitchAnswer {
    /// The backend's 101; its end-to-end headers go on to the client.
    head: SwitchedHead,
    /// The sticky-session cookie for the client's 101, when the route is cookie-sticky.
    set_cookie: Option<HeaderValue>,
}

impl SwitchAnswer {
    /// The client's 101, ready to write: the status line, the backend's end-to-end headers
    /// (hop-by-hop ones removed), `Connection`/`Upgrade`, the sticky cookie, the blank line.
    pub fn head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.head.len());
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in self.head.end_to_end() {
            for part in [name, b": ", value, b"\r\n"] {
                out.extend_from_slice(part);
            }
        }
        out.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n");
        if let Some(cookie) = &self.set_cookie {
            out.extend_from_slice(b"set-cookie: ");
            out.extend_from_slice(cookie.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The headers of `head` as a map, for a 101 that hyper writes.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = self.head.end_to_end_map();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Some(cookie) = &self.set_cookie {
            headers.append(header::SET_COOKIE, cookie.clone());
        }
        headers
    }
}

/// The backend's side of a relay, ready once the client has its 101.
pub struct Relaying {
    config: RelayConfig,
    upstream: Stream,
    /// Bytes the backend sent right behind its 101.
    upstream_early: Bytes,
}

/// What a relay's accounting needs for the life of the connection: the route (by its index
/// in the table generation the request was routed under) and the endpoint's load. Request
/// id, route and endpoint are in the connection's span.
pub struct RelayAccount {
    table: Arc<RouteTable>,
    route_index: usize,
    /// Counts the connection as load on the endpoint until dropped.
    load: ConnectionGuard,
    started: Instant,
    /// The connection's slots under the route's and the process's connection limits,
    /// given back when the account is dropped (after `ended`, or with a task cut short).
    _admitted: Admitted,
    /// The connection in the registry of live relays (unregistered when dropped).
    live: LiveRelay,
    /// The connection's exported span (`--otlp-endpoint`), ended by `ended`.
    otel: Option<ConnectionSpan>,
    /// The connection's access log line, sent by `ended` (None: the log is off).
    access: Option<Box<AccessEntry>>,
}

impl RelayAccount {
    fn route(&self) -> &CompiledRoute {
        &self.table.routes()[self.route_index]
    }

    /// Relays `client` (with the bytes it sent behind its request) and the backend, counted
    /// as a live connection of the route from now. Returns the relay itself, not an async
    /// wrapper around it: each layer of async fn would keep its own copy of the relay's
    /// arguments in every idle connection's task. Hand its stats to `ended`.
    pub fn relay<'a>(
        &'a mut self,
        backend: Relaying,
        client: (Stream, Bytes),
        drain: DrainSignal,
        offload: Option<&'a Offload>,
    ) -> impl Future<Output = RelayStats> + 'a {
        self.started = Instant::now();
        if let Some(entry) = &mut self.access {
            // The 101 has just been written (or handed to hyper, which wrote it).
            entry.record.upgrade = Some(self.started - entry.record.received);
        }
        let route = &self.table.routes()[self.route_index];
        route.metrics.connections_total().inc();
        route.metrics.connections_active().inc();
        relay_streams(
            client.0,
            client.1,
            backend.upstream,
            backend.upstream_early,
            backend.config,
            drain.with_control(self.live.control()),
            &route.metrics,
            offload,
        )
    }

    /// Counts and logs a relay that ended; releases the endpoint's load.
    pub fn ended(self, stats: &RelayStats) {
        let metrics = &self.route().metrics;
        metrics.connections_active().dec();
        if let Some(code) = stats.injected_to_client {
            metrics.close_sent(CloseTo::Client, code);
        }
        if let Some(code) = stats.injected_to_upstream {
            metrics.close_sent(CloseTo::Backend, code);
        }
        metrics.keepalive_pings(CloseTo::Client, stats.pings_to_client);
        metrics.keepalive_pings(CloseTo::Backend, stats.pings_to_backend);
        if let Some(side) = stats.unanswered {
            metrics.keepalive_timeout(match side {
                Side::Client => CloseTo::Client,
                Side::Backend => CloseTo::Backend,
            });
        }
        // Closes by who sent them, and how long the connection lived (process-wide).
        for (side, code) in [
            (CloseSide::Client, stats.client_close),
            (CloseSide::Backend, stats.backend_close),
            (CloseSide::Wsgate, stats.injected_to_client),
            (CloseSide::Wsgate, stats.injected_to_upstream),
        ] {
            if let Some(code) = code {
                metrics.close_seen(side, code);
            }
        }
        metrics
            .connection_seconds()
            .observe(self.started.elapsed().as_secs_f64());
        drop(self.load);
        if let Some(span) = self.otel {
            span.end(SpanEnd {
                bytes_up: Some(stats.bytes_up),
                bytes_down: Some(stats.bytes_down),
                close_to_client: stats.injected_to_client,
                close_to_backend: stats.injected_to_upstream,
                ..SpanEnd::default()
            });
        }
        if let Some(mut entry) = self.access {
            let record = &mut entry.record;
            record.duration = record.received.elapsed();
            record.relay = Some(RelayTotals {
                bytes_up: stats.bytes_up,
                bytes_down: stats.bytes_down,
                messages_up: stats.messages_up,
                messages_down: stats.messages_down,
            });
            record.close = stats.closed_by.map(close_record);
            entry.send();
        }
        match stats.violation {
            Some((side, limit)) if limit.is_limit() => tracing::info!(
                side = ?side,
                limit = %limit,
                close_code = limit.close_code(),
                "WebSocket connection closed: a side went over the route's limits"
            ),
            Some((side, violation)) => tracing::info!(
                side = ?side,
                %violation,
                close_code = violation.close_code(),
                "WebSocket connection failed: a side broke the protocol"
            ),
            None => {}
        }
        tracing::debug!(
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes_up = stats.bytes_up,
            bytes_down = stats.bytes_down,
            messages_up = stats.messages_up,
            messages_down = stats.messages_down,
            injected_to_client = ?stats.injected_to_client,
            injected_to_upstream = ?stats.injected_to_upstream,
            violation = ?stats.violation,
            end = ?stats.end,
            "WebSocket connection ended"
        );
    }
}

/// Who closed a relay first, as the access log says it.
fn close_record(closed_by: ClosedBy) -> CloseRecord {
    let closer = |side| match side {
        Side::Client => Closer::Client,
        Side::Backend => Closer::Backend,
    };
    match closed_by {
        ClosedBy::Peer { side, code } => CloseRecord {
            by: closer(side),
            code,
            reason: None,
        },
        ClosedBy::Gone(side) => CloseRecord {
            by: closer(side),
            // "Closed abnormally" (RFC 6455 §7.1.5): no Close frame came.
            code: 1006,
            reason: Some(match side {
                Side::Client => "client connection ended without a Close",
                Side::Backend => "backend connection ended without a Close",
            }),
        },
        ClosedBy::Gateway(close) => CloseRecord {
            by: Closer::Gateway,
            code: close.code(),
            reason: Some(close.reason()),
        },
    }
}

/// A backend that switched protocols.
struct Switched {
    head: SwitchedHead,
    set_cookie: Option<HeaderValue>,
    upstream: Stream,
    early: Bytes,
    load: ConnectionGuard,
    /// The endpoint it was dialled at (`host:port`).
    endpoint: Arc<str>,
}

/// How the backend answered the upgrade.
enum Opened {
    Switched(Switched),
    /// Its status and body go to the client as they are.
    Refused(Response<Incoming>),
}

/// Dials the backend the balancer picks for this request (its `headers` and `query`) and
/// forwards the upgrade request with `headers` (as `headers::for_upstream` forwards them),
/// written with the connect when the connection is up at once.
async fn open(
    route: &CompiledRoute,
    headers: HeaderMap,
    query: Option<&str>,
    downstream: &str,
    ctx: &RequestCtx,
) -> Result<Opened, Error> {
    // Checked before dialing, so a bad path costs no backend connection.
    if !valid_target(downstream) {
        return Err(Error::BadHandshake(Handshake::InvalidTarget));
    }
    let fwd = upstream::forwarded(ctx);
    let greeting = |endpoint: &str| request_head(downstream, &headers, endpoint, &fwd);
    let pick = ctx.pick_from(&headers, query);
    let mut exchange = upstream::connect(route, &pick, Some(&greeting)).await?;
    ctx.record_endpoint(&exchange.endpoint);
    let answer = upgrade(
        exchange.stream,
        exchange.unsent,
        downstream,
        &exchange.endpoint,
        route.route.timeouts.handshake,
    )
    .await?;
    drop(headers);
    match answer {
        Answer::Switched {
            head,
            stream,
            early,
        } => Ok(Opened::Switched(Switched {
            head,
            set_cookie: exchange.set_cookie.take(),
            upstream: stream,
            early,
            load: exchange.load,
            endpoint: exchange.endpoint,
        })),
        Answer::Refused(mut resp) => {
            route
                .metrics
                .failure(crate::telemetry::FailureReason::UpstreamStatus);
            tracing::info!(
                status = resp.status().as_u16(),
                "backend refused the WebSocket upgrade"
            );
            strip_hop_by_hop(resp.headers_mut());
            Ok(Opened::Refused(resp))
        }
    }
}
