//! Plain HTTP on a WebSocket route (SignalR negotiate, Server-Sent Events, long polling):
//! the request body streams to the backend and the response body streams back frame by
//! frame, so an SSE event reaches the client as soon as the backend sends it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::error::Error;
use super::headers::strip_hop_by_hop;
use super::request::{ProxyBody, RequestCtx};
use super::{signalr, upstream};
use crate::balance::ConnectionGuard;
use crate::table::CompiledRoute;
use crate::telemetry::otlp::SpanEnd;

/// SignalR's long polling holds a request up to 100 s before answering, so a plain HTTP
/// request waits at least this long for the backend's response head.
const MIN_RESPONSE_HEAD_WAIT: Duration = Duration::from_secs(120);

pub async fn proxy(
    route: &CompiledRoute,
    downstream: String,
    req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Result<Response<ProxyBody>, Error> {
    ctx.record_in_span(SpanEnd {
        kind: "http",
        ..SpanEnd::default()
    });
    let pick = ctx.pick_from(req.headers(), req.uri().query());
    let now_ms = pick.now_ms;
    let negotiate = route.balancer.pins_signalr() && signalr::is_negotiate(&req);
    let mut upstream = upstream::open::<Incoming>(route, &pick).await?;
    ctx.record_endpoint(&upstream.endpoint);
    route.metrics.http_requests_total().inc();

    let (mut parts, body) = req.into_parts();
    upstream.forward_headers(&mut parts.headers, ctx);
    parts.uri = upstream::target(&downstream)?;
    parts.version = http::Version::HTTP_11;

    let wait = route.route.timeouts.handshake.max(MIN_RESPONSE_HEAD_WAIT);
    let mut resp = upstream
        .send(Request::from_parts(parts, body), wait)
        .await?;
    strip_hop_by_hop(resp.headers_mut());
    ctx.record_in_span(SpanEnd {
        status: Some(resp.status().as_u16()),
        ..SpanEnd::default()
    });
    if let Some(cookie) = upstream.set_cookie.take() {
        resp.headers_mut().append(http::header::SET_COOKIE, cookie);
    }
    let load = upstream.load;
    if negotiate && resp.status() == http::StatusCode::OK {
        let (parts, body) = resp.into_parts();
        let body = signalr::learn(route, upstream.backend, body, wait, now_ms).await;
        return Ok(Response::from_parts(
            parts,
            GuardedBody {
                inner: body,
                _load: load,
            }
            .boxed_unsync(),
        ));
    }
    Ok(resp.map(|body| {
        GuardedBody {
            inner: body,
            _load: load,
        }
        .boxed_unsync()
    }))
}

/// A response body that counts as load on its endpoint until it has been fully sent (an
/// SSE stream or a held long poll is a live connection for `LeastConnection`).
struct GuardedBody<B> {
    inner: B,
    _load: ConnectionGuard,
}

impl<B: Body<Data = Bytes, Error = hyper::Error> + Unpin> Body for GuardedBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
