//! The WebSocket path: forward the handshake to a backend, pass its 101 (or its refusal)
//! to the client, then relay the two upgraded sockets.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::dial::dial;
use super::headers::{strip_hop_by_hop, to_upstream, Forwarded};
use super::relay::{relay, RelayConfig};
use super::service::{ProxyBody, RequestCtx};
use super::{Error, Gateway};
use crate::table::{CompiledRoute, RouteTable};

pub async fn proxy(
    gw: &Arc<Gateway>,
    table: &Arc<RouteTable>,
    route: &CompiledRoute,
    downstream: String,
    mut req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Result<Response<ProxyBody>, Error> {
    let dialed = dial(route).await?;
    let endpoint = dialed.backend.endpoint.authority();
    let load = dialed.backend.load.begin();

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(dialed.stream))
        .await
        .map_err(|e| upstream_protocol(&endpoint, e))?;
    tokio::spawn(async move {
        // Ends by itself once the connection is upgraded or closed.
        let _ = conn.with_upgrades().await;
    });

    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let mut headers = parts.headers;
    to_upstream(
        &mut headers,
        &endpoint,
        &Forwarded {
            client_ip: ctx.peer.ip(),
            proto: ctx.proto,
            host: ctx.host.as_ref(),
            request_id: &ctx.request_id,
        },
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut upstream_req = Request::builder()
        .method(http::Method::GET)
        .uri(downstream.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|_| Error::BadHandshake("the downstream path is not a valid request target"))?;
    *upstream_req.headers_mut() = headers;

    let timeout = route.route.timeouts.handshake;
    let mut resp = match tokio::time::timeout(timeout, sender.send_request(upstream_req)).await {
        Err(_) => {
            return Err(Error::UpstreamTimeout {
                endpoint,
                timeout_ms: timeout.as_millis(),
            })
        }
        Ok(Err(e)) => return Err(upstream_protocol(&endpoint, e)),
        Ok(Ok(resp)) => resp,
    };

    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend refused the upgrade: its status and body go to the client as they are.
        route
            .metrics
            .failure(crate::telemetry::FailureReason::UpstreamStatus);
        tracing::info!(request_id = ?ctx.request_id, route = %route.route.id, endpoint = %endpoint, status = resp.status().as_u16(), "backend refused the WebSocket upgrade");
        strip_hop_by_hop(resp.headers_mut());
        return Ok(resp.map(|body| body.boxed_unsync()));
    }

    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let mut to_client = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    if let Some(h) = to_client.headers_mut() {
        let mut upstream_headers = std::mem::take(resp.headers_mut());
        strip_hop_by_hop(&mut upstream_headers);
        *h = upstream_headers;
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let upstream = upstream_upgrade
        .await
        .map_err(|e| upstream_protocol(&endpoint, e))?;
    let upstream = match upstream.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (parts.io.into_inner(), parts.read_buf),
        Err(_) => {
            return Err(Error::UpstreamProtocol {
                endpoint,
                reason: "upgraded connection is not a TCP stream".into(),
            })
        }
    };

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
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => (parts.io.into_inner(), parts.read_buf),
                Err(_) => {
                    tracing::error!("client connection is not a TCP stream; closing");
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
        let stats = relay(
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

    Ok(super::service::full(
        to_client
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap_or_default(),
    ))
}

fn upstream_protocol(endpoint: &str, e: hyper::Error) -> Error {
    Error::UpstreamProtocol {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    }
}

/// Position of `route` in `table.routes()`, so the relay task can hold the table's `Arc`
/// (the generation it was accepted under) instead of cloning the route's handles.
fn index_of(table: &RouteTable, route: &CompiledRoute) -> usize {
    let base = table.routes().as_ptr() as usize;
    let at = route as *const CompiledRoute as usize;
    (at - base) / std::mem::size_of::<CompiledRoute>()
}
