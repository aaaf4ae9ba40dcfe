//! The hyper request path: every request of a connection whose first request was not a
//! direct upgrade (plain HTTP, keep-alive, later upgrades). A WebSocket upgrade runs the
//! same request sequence as the direct path (`websocket::serve_upgrade`) with its outcome
//! answered through hyper; plain HTTP is routed here and streamed by `http.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::Instrument;

use super::admit::{self, Admitted};
use super::drain::DrainSignal;
use super::error::Error;
use super::request::{full, ProxyBody, RequestCtx, HEAD_READ_TIMEOUT, MAX_HEAD_BYTES};
use super::stream::Prefixed;
use super::websocket::{self, Outcome, UpgradeRequest};
use super::{access, auth, handshake, http as plain_http, Gateway};
use crate::telemetry::access_log::{AccessEntry, AccessKind};

/// hyper's read buffer: room for a head at the 431 limit plus what arrives behind it.
const READ_BUF_BYTES: usize = 2 * MAX_HEAD_BYTES;

/// hyper serves the connection (keep-alive, plain HTTP, later upgrades) with the bytes the
/// direct path already read replayed first.
pub async fn serve_hyper(
    gw: Arc<Gateway>,
    io: Prefixed,
    peer: SocketAddr,
    proto: &'static str,
    mut drain: DrainSignal,
) {
    let svc = service_fn(move |req| handle(Arc::clone(&gw), peer, proto, req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_READ_TIMEOUT)
        .max_buf_size(READ_BUF_BYTES)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = drain.wait() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(
    gw: Arc<Gateway>,
    peer: SocketAddr,
    proto: &'static str,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut ctx = RequestCtx::new(&gw, peer, proto, req.headers());
    let kind = if handshake::is_websocket_upgrade(req.headers()) {
        AccessKind::WebSocket
    } else {
        AccessKind::Http
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    ctx.request_line(kind, req.method(), target);
    let head = head_size(&req);
    if head > MAX_HEAD_BYTES {
        let e = Error::HeadTooLarge {
            size: head,
            limit: MAX_HEAD_BYTES,
        };
        ctx.failed(&gw, None, &e);
        return Ok(full(e.response(ctx.request_id())));
    }
    if kind == AccessKind::WebSocket {
        return Ok(upgrade(&gw, &ctx, req).await);
    }
    let table = gw.publisher.current();
    let uri = req.uri();
    let authority = uri.authority().map(|a| a.as_str());
    let found = ctx.normalized_path(uri.path()).and_then(|path| {
        let found = ctx.route(&table, authority, &path, uri.query(), req.method())?;
        Ok((found.route, found.downstream_path_and_query()))
    });
    let (route, mut downstream) = match found {
        Ok(found) => found,
        Err(e) => {
            ctx.failed(&gw, None, &e);
            return Ok(full(e.response(ctx.request_id())));
        }
    };
    // Before the dial, cheapest first: the rendered path and who may use the route, then the
    // limits (a refused attempt still counts against the client's rate), then the token.
    if let Err(e) = ctx
        .check_downstream(&downstream)
        .and_then(|()| access::admit(route, &ctx, req.headers(), false))
    {
        ctx.failed(&gw, Some(route), &e);
        return Ok(full(e.response(ctx.request_id())));
    }
    let admitted = match admit::request(&gw, ctx.peer.ip(), route) {
        Ok(admitted) => admitted,
        Err(e) => {
            ctx.failed(&gw, Some(route), &e);
            return Ok(full(e.response(ctx.request_id())));
        }
    };
    let mut req = req;
    match auth::check(&route.route, req.headers(), req.uri().query()) {
        Ok(authorized) => authorized.apply(&route.route, req.headers_mut(), &mut downstream),
        Err(e) => {
            ctx.failed(&gw, Some(route), &e);
            return Ok(full(e.response(ctx.request_id())));
        }
    }
    let resp = match plain_http::proxy(route, downstream, req, &ctx).await {
        // Its access log line goes when the body has been sent (or the client left).
        Ok(resp) => match ctx.access_record(Some(route), resp.status().as_u16()) {
            Some(entry) => Ok(resp.map(|body| {
                LoggedBody {
                    inner: body,
                    entry: Some(entry),
                    bytes: 0,
                }
                .boxed_unsync()
            })),
            None => Ok(resp),
        },
        Err(e) => Err(e),
    };
    Ok(match resp {
        // The request holds its slots until its response body has been sent (an SSE
        // stream or a held long poll is a connection in flight).
        Ok(resp) if !admitted.is_empty() => resp.map(|body| {
            AdmittedBody {
                inner: body,
                _admitted: admitted,
            }
            .boxed_unsync()
        }),
        Ok(resp) => resp,
        Err(e) => {
            ctx.failed(&gw, Some(route), &e);
            full(e.response(ctx.request_id()))
        }
    })
}

/// A response body that sends its request's access log line when it ends or is dropped
/// (the client went away), with the bytes sent and the time it took.
struct LoggedBody {
    inner: ProxyBody,
    entry: Option<Box<AccessEntry>>,
    bytes: u64,
}

impl hyper::body::Body for LoggedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            entry.record.duration = entry.record.received.elapsed();
            entry.record.body_bytes = Some(self.bytes);
            entry.send();
        }
    }
}

/// A response body that holds its request's `Admitted` slots until it ends.
struct AdmittedBody {
    inner: ProxyBody,
    _admitted: Admitted,
}

impl hyper::body::Body for AdmittedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A WebSocket upgrade on a kept-alive connection: the request sequence, its outcome as
/// hyper's response, and on a 101 the relay in a task of its own (in the connection's
/// span) once hyper hands the client connection over.
async fn upgrade(
    gw: &Gateway,
    ctx: &RequestCtx,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let request = UpgradeRequest {
        method: &parts.method,
        version: parts.version,
        headers: parts.headers,
        authority: parts.uri.authority().map(|a| a.as_str()),
        path: parts.uri.path(),
        query: parts.uri.query(),
    };
    let (answer, backend, mut account) = match websocket::serve_upgrade(gw, ctx, request).await {
        Outcome::Failed(e) => return full(e.response(ctx.request_id())),
        Outcome::Refused(resp) => return resp.map(|body| body.boxed_unsync()),
        Outcome::Switched(answer, backend, account) => (answer, backend, account),
    };
    let mut to_client = Response::new(Full::new(Bytes::new()));
    *to_client.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *to_client.headers_mut() = answer.headers();
    let drain = gw.drain.signal();
    let offload = gw.offload.clone();
    let relay = async move {
        let client = match client_upgrade.await {
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
        let stats = account
            .relay(backend, client, drain, offload.as_deref())
            .await;
        account.ended(&stats);
    };
    gw.drain.spawn(relay.instrument(tracing::Span::current()));
    full(to_client)
}

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
