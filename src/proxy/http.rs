//! Plain HTTP on a WebSocket route (SignalR negotiate, Server-Sent Events, long polling):
//! the request body streams to the backend and the response body streams back frame by
//! frame, so an SSE event reaches the client as soon as the backend sends it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;

use super::dial::dial;
use super::headers::{strip_hop_by_hop, to_upstream, Forwarded};
use super::service::{ProxyBody, RequestCtx};
use super::{Error, Gateway};
use crate::balance::ConnectionGuard;
use crate::table::CompiledRoute;

/// SignalR's long polling holds a request up to 100 s before answering, so a plain HTTP
/// request waits at least this long for the backend's response head.
const MIN_RESPONSE_HEAD_WAIT: Duration = Duration::from_secs(120);

pub async fn proxy(
    _gw: &Arc<Gateway>,
    route: &CompiledRoute,
    downstream: String,
    req: Request<Incoming>,
    ctx: &RequestCtx,
) -> Result<Response<ProxyBody>, Error> {
    let dialed = dial(route).await?;
    let endpoint = dialed.backend.endpoint.authority();
    let load = dialed.backend.load.begin();
    route.metrics.http_requests_total.inc();

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(dialed.stream))
        .await
        .map_err(|e| protocol(&endpoint, e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });

    let (mut parts, body) = req.into_parts();
    to_upstream(
        &mut parts.headers,
        &endpoint,
        &Forwarded {
            client_ip: ctx.peer.ip(),
            proto: ctx.proto,
            host: ctx.host.as_ref(),
            request_id: &ctx.request_id,
        },
    );
    parts.uri = downstream
        .parse()
        .map_err(|_| Error::BadHandshake("the downstream path is not a valid request target"))?;
    parts.version = http::Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body);

    let wait = route.route.timeouts.handshake.max(MIN_RESPONSE_HEAD_WAIT);
    let mut resp = match tokio::time::timeout(wait, sender.send_request(upstream_req)).await {
        Err(_) => {
            return Err(Error::UpstreamTimeout {
                endpoint,
                timeout_ms: wait.as_millis(),
            })
        }
        Ok(Err(e)) => return Err(protocol(&endpoint, e)),
        Ok(Ok(resp)) => resp,
    };
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(|body| {
        GuardedBody {
            inner: body,
            _load: load,
        }
        .boxed_unsync()
    }))
}

fn protocol(endpoint: &str, e: hyper::Error) -> Error {
    Error::UpstreamProtocol {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    }
}

/// A response body that counts as load on its endpoint until it has been fully sent (an
/// SSE stream or a held long poll is a live connection for `LeastConnection`).
struct GuardedBody {
    inner: Incoming,
    _load: ConnectionGuard,
}

impl Body for GuardedBody {
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
