//! The WebSocket path: forward the handshake to a backend (`upgrade.rs`), pass its 101 (or
//! its refusal) to the client, then relay the two upgraded sockets.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::headers::strip_hop_by_hop;
use super::relay::{relay_streams, RelayConfig};
use super::service::{ProxyBody, RequestCtx};
use super::tls::Stream;
use super::upgrade::{upgrade, valid_target, Answer};
use super::{upstream, Error, Gateway};
use crate::table::{CompiledRoute, RouteTable};

pub async fn proxy(
    gw: &Arc<Gateway>,
    table: &Arc<RouteTable>,
    route: &CompiledRoute,
    downstream: String,
    mut req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Result<Response<ProxyBody>, Error> {
    // Checked before dialing, so a bad path costs no backend connection.
    if !valid_target(&downstream) {
        return Err(Error::BadHandshake(
            "the downstream path is not a valid request target",
        ));
    }
    let mut exchange = upstream::connect(route, &ctx.pick(&req)).await?;
    let endpoint = exchange.endpoint.clone();

    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let mut headers = parts.headers;
    exchange.forward_headers(&mut headers, ctx);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));

    let answer = upgrade(
        exchange.stream,
        &downstream,
        &headers,
        &endpoint,
        route.route.timeouts.handshake,
    )
    .await?;
    drop(headers);
    let (mut upstream_headers, upstream) = match answer {
        Answer::Switched {
            headers,
            stream,
            early,
        } => (headers, (stream, early)),
        Answer::Refused(mut resp) => {
            // The backend refused the upgrade: its status and body go to the client as they are.
            route
                .metrics
                .failure(crate::telemetry::FailureReason::UpstreamStatus);
            tracing::info!(request_id = ?ctx.request_id, route = %route.route.id, endpoint = %endpoint, status = resp.status().as_u16(), "backend refused the WebSocket upgrade");
            strip_hop_by_hop(resp.headers_mut());
            return Ok(resp.map(|body| body.boxed_unsync()));
        }
    };

    strip_hop_by_hop(&mut upstream_headers);
    upstream_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    upstream_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Some(cookie) = exchange.set_cookie.take() {
        upstream_headers.append(header::SET_COOKIE, cookie);
    }
    let mut to_client = Response::new(http_body_util::Full::new(Bytes::new()));
    *to_client.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *to_client.headers_mut() = upstream_headers;
    let load = exchange.load;

    let table = Arc::clone(table);
    let route_index = index_of(&table, route);
    let drain = gw.drain.signal();
    let request_id = ctx.request_id.clone();
    let config = RelayConfig {
        idle: route.route.timeouts.idle,
        ..RelayConfig::default()
    };
    gw.drain.spawn(async move {
        let route = &table.routes()[route_index];
        let client = match client_upgrade.await {
            Ok(upgraded) => match upgraded.downcast::<TokioIo<Stream>>() {
                Ok(parts) => (parts.io.into_inner(), parts.read_buf),
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
        let metrics = &route.metrics;
        metrics.connections_total.inc();
        metrics.connections_active.inc();
        let started = Instant::now();
        let stats = relay_streams(
            client.0, client.1, upstream.0, upstream.1, config, drain, metrics,
        )
        .await;
        metrics.connections_active.dec();
        drop(load);
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
            end = ?stats.end,
            "WebSocket connection ended"
        );
    });

    Ok(super::service::full(to_client))
}

/// Position of `route` in `table.routes()`, so the relay task can hold the table's `Arc`
/// (the generation it was accepted under) instead of cloning the route's handles.
fn index_of(table: &RouteTable, route: &CompiledRoute) -> usize {
    let base = table.routes().as_ptr() as usize;
    let at = route as *const CompiledRoute as usize;
    (at - base) / std::mem::size_of::<CompiledRoute>()
}
