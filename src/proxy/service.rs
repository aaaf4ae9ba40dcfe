//! One request from a client: route it, then hand it to the WebSocket or the HTTP path.
//! Every answer wsgate gives itself comes from `Error::response`.

use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::headers::X_REQUEST_ID;
use super::{handshake, http as plain_http, websocket, Error, Gateway};
use crate::balance::PickContext;

pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Facts about the request the downstream steps need.
pub struct RequestCtx {
    pub peer: SocketAddr,
    /// `http` or `https`, as the client reached wsgate.
    pub proto: &'static str,
    pub request_id: HeaderValue,
    pub host: Option<HeaderValue>,
}

impl RequestCtx {
    /// What the balancer may look at in `req` (cookies, headers, query, client IP).
    pub fn pick<'a, B>(&self, req: &'a Request<B>) -> PickContext<'a> {
        self.pick_from(req.headers(), req.uri().query())
    }

    /// `pick` from a request's headers and query string.
    pub fn pick_from<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> PickContext<'a> {
        PickContext {
            headers,
            query,
            client_ip: self.peer.ip(),
            now_ms: unix_now_ms(),
            secure: self.proto == "https",
        }
    }
}

/// Wall-clock milliseconds, for sticky cookies and pins that replicas must read alike.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn full(resp: Response<Full<Bytes>>) -> Response<ProxyBody> {
    resp.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

pub async fn handle(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    proto: &'static str,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
        _ => new_request_id(),
    };
    let rid = request_id.to_str().unwrap_or("-").to_string();
    let head = head_size(&req);
    if head > MAX_HEAD_BYTES {
        let e = Error::HeadTooLarge {
            size: head,
            limit: MAX_HEAD_BYTES,
        };
        gw.metrics.unrouted_failure(e.reason());
        return Ok(full(e.response(&rid)));
    }
    let upgrade = handshake::is_websocket_upgrade(req.headers());
    if upgrade {
        if let Err(e) = handshake::validate(req.method(), req.version(), req.headers()) {
            tracing::info!(request_id = %rid, peer = %peer, error = %e, "rejected malformed WebSocket handshake");
            gw.metrics.unrouted_failure(e.reason());
            return Ok(full(e.response(&rid)));
        }
    }
    let table = gw.publisher.current();
    let host_header = req.headers().get(header::HOST).cloned();
    let host = host_header
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(found) = table.find(host, req.uri().path(), req.uri().query(), req.method()) else {
        let e = Error::NoRoute {
            host: host.unwrap_or("").to_string(),
            path: req.uri().path().to_string(),
        };
        tracing::debug!(request_id = %rid, peer = %peer, error = %e, "no route");
        gw.metrics.unrouted_failure(e.reason());
        return Ok(full(e.response(&rid)));
    };
    let route = found.route;
    let downstream = found.downstream_path_and_query();
    let ctx = RequestCtx {
        peer,
        proto,
        request_id,
        host: host_header,
    };
    let result = if upgrade {
        websocket::proxy(&gw, &table, route, downstream, req, &ctx).await
    } else {
        plain_http::proxy(&gw, route, downstream, req, &ctx).await
    };
    Ok(result.unwrap_or_else(|e| {
        route.metrics.failure(e.reason());
        tracing::warn!(request_id = %rid, route = %route.route.id, peer = %peer, status = e.status().as_u16(), error = %e, "request not proxied");
        full(e.response(&rid))
    }))
}

/// Largest request head forwarded (request line and headers); larger ones get 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The size of the request head as it came in, near enough: hyper's own buffer limit is
/// coarser than the one a proxy should enforce.
fn head_size(req: &Request<Incoming>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}

/// 16 hex digits, unique enough to find one request in the logs of every hop.
pub(super) fn new_request_id() -> HeaderValue {
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
