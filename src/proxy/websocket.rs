//! The WebSocket path: forward the handshake to a backend (`upgrade.rs`), pass its 101 (or
//! its refusal) to the client, then relay the two upgraded sockets.
//!
//! Two callers: `connection.rs` serves an upgrade that opens a connection directly (and
//! relays in the same task), and the hyper service (`proxy`) serves upgrades that follow
//! other requests on a kept-alive connection.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::connection::Prefixed;
use super::frame::Extensions;
use super::headers::strip_hop_by_hop;
use super::relay::{relay_streams, RelayConfig, RelayStats};
use super::service::{ProxyBody, RequestCtx};
use super::tls::Stream;
use super::upgrade::{request_head, upgrade, valid_target, Answer, SwitchedHead};
use super::{upstream, Error, Gateway};
use crate::balance::ConnectionGuard;
use crate::table::{CompiledRoute, RouteTable};

/// A backend that switched protocols, ready to relay.
pub struct Switched {
    /// The backend's 101; its end-to-end headers go on to the client.
    pub head: SwitchedHead,
    /// The sticky-session cookie for the client's 101, when the route is cookie-sticky.
    pub set_cookie: Option<HeaderValue>,
    pub upstream: Stream,
    /// Bytes the backend sent right behind its 101.
    pub early: Bytes,
    /// Counts the connection as load on the endpoint until dropped.
    pub load: ConnectionGuard,
    pub endpoint: Arc<str>,
}

impl Switched {
    /// The client's 101, ready to write: the status line, the backend's end-to-end headers
    /// (hop-by-hop ones removed), `Connection`/`Upgrade`, the sticky cookie, the blank line.
    pub fn client_head(&self) -> Vec<u8> {
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

    /// The headers of `client_head` as a map, for a 101 that hyper writes.
    pub fn client_headers(&self) -> HeaderMap {
        let mut headers = self.head.end_to_end_map();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Some(cookie) = &self.set_cookie {
            headers.append(header::SET_COOKIE, cookie.clone());
        }
        headers
    }
}

/// How the backend answered the upgrade.
pub enum Opened {
    Switched(Switched),
    /// Its status and body go to the client as they are.
    Refused(Response<Incoming>),
}

/// Dials the backend the balancer picks for this request (its `headers` and `query`) and
/// forwards the upgrade request with `headers` (as `headers::for_upstream` forwards them),
/// written with the connect when the connection is up at once.
pub async fn open(
    route: &CompiledRoute,
    headers: HeaderMap,
    query: Option<&str>,
    downstream: &str,
    ctx: &RequestCtx,
) -> Result<Opened, Error> {
    // Checked before dialing, so a bad path costs no backend connection.
    if !valid_target(downstream) {
        return Err(Error::BadHandshake(
            "the downstream path is not a valid request target",
        ));
    }
    let fwd = upstream::forwarded(ctx);
    let greeting = |endpoint: &str| request_head(downstream, &headers, endpoint, &fwd);
    let pick = ctx.pick_from(&headers, query);
    let mut exchange = upstream::connect(route, &pick, Some(&greeting)).await?;
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
            tracing::info!(request_id = ?ctx.request_id, route = %route.route.id, endpoint = %exchange.endpoint, status = resp.status().as_u16(), "backend refused the WebSocket upgrade");
            strip_hop_by_hop(resp.headers_mut());
            Ok(Opened::Refused(resp))
        }
    }
}

/// The extensions the backend's 101 negotiated, as far as the relay needs to know them
/// (which RSV bits frames may carry).
pub fn negotiated_extensions(head: &SwitchedHead) -> Extensions {
    Extensions::negotiated(
        head.end_to_end()
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"sec-websocket-extensions"))
            .map(|(_, value)| value),
    )
}

/// The relay settings of `route`, with the extensions the backend's 101 negotiated.
pub fn relay_config(route: &CompiledRoute, extensions: Extensions) -> RelayConfig {
    RelayConfig {
        idle: route.route.timeouts.idle,
        extensions,
        ..RelayConfig::default()
    }
}

/// Counts a relay that starts now. (Not an async wrapper around the relay: each layer
/// of async fn would keep its own copy of the relay's arguments in every idle
/// connection's task.)
pub fn relay_started(route: &CompiledRoute) -> Instant {
    route.metrics.connections_total.inc();
    route.metrics.connections_active.inc();
    Instant::now()
}

/// Counts and logs a relay that ended; releases the endpoint's load.
pub fn relay_ended(
    route: &CompiledRoute,
    started: Instant,
    stats: &RelayStats,
    load: ConnectionGuard,
    endpoint: &str,
    request_id: &HeaderValue,
) {
    route.metrics.connections_active.dec();
    drop(load);
    if let Some((side, violation)) = stats.violation {
        tracing::info!(
            request_id = ?request_id,
            route = %route.route.id,
            endpoint = %endpoint,
            side = ?side,
            %violation,
            close_code = violation.close_code(),
            "WebSocket connection failed: a side broke the protocol"
        );
    }
    tracing::debug!(
        request_id = ?request_id,
        route = %route.route.id,
        endpoint = %endpoint,
        duration_ms = started.elapsed().as_millis() as u64,
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

/// The hyper service's WebSocket path: answers 101 through hyper and relays in a task of
/// its own once hyper hands the client connection over.
pub async fn proxy(
    gw: &Arc<Gateway>,
    table: &Arc<RouteTable>,
    route: &CompiledRoute,
    downstream: String,
    mut req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Result<Response<ProxyBody>, Error> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let opened = open(route, parts.headers, parts.uri.query(), &downstream, ctx).await?;
    let switched = match opened {
        Opened::Switched(s) => s,
        Opened::Refused(resp) => return Ok(resp.map(|body| body.boxed_unsync())),
    };
    let mut to_client = Response::new(http_body_util::Full::new(Bytes::new()));
    *to_client.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *to_client.headers_mut() = switched.client_headers();
    let config = relay_config(route, negotiated_extensions(&switched.head));
    let Switched {
        upstream,
        early,
        load,
        endpoint,
        ..
    } = switched;

    let table = Arc::clone(table);
    let route_index = index_of(&table, route);
    let drain = gw.drain.signal();
    let request_id = ctx.request_id.clone();
    let offload = gw.offload.clone();
    gw.drain.spawn(async move {
        let route = &table.routes()[route_index];
        let (client, client_early) = match client_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<TokioIo<Prefixed>>() {
                Ok(parts) => parts.io.into_inner().into_parts(parts.read_buf),
                Err(_) => {
                    tracing::error!("client connection is not a TCP or TLS stream; closing");
                    return;
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "client went away before the upgrade completed");
                return;
            }
        };
        let started = relay_started(route);
        let stats = relay_streams(
            client,
            client_early,
            upstream,
            early,
            config,
            drain,
            &route.metrics,
            offload.as_deref(),
        )
        .await;
        relay_ended(route, started, &stats, load, &endpoint, &request_id);
    });

    Ok(super::service::full(to_client))
}

/// Position of `route` in `table.routes()`, so the relay task can hold the table's `Arc`
/// (the generation it was accepted under) instead of cloning the route's handles.
pub(super) fn index_of(table: &RouteTable, route: &CompiledRoute) -> usize {
    let base = table.routes().as_ptr() as usize;
    let at = route as *const CompiledRoute as usize;
    (at - base) / std::mem::size_of::<CompiledRoute>()
}
