//! One client connection. Its first request head is read and parsed here (httparse): a
//! well-formed WebSocket upgrade is served directly — route, backend, 101 written by hand,
//! and the relay in this same task — and anything else goes to hyper with the bytes read
//! so far put back in front (`Prefixed`), including upgrades hyper then validates and
//! answers (400, 431) exactly as before.
//!
//! Why: a proxied handshake through hyper's server costs a connection task, its read
//! buffer, dispatcher, the upgrade hand-off and a second task for the relay. Measured with
//! valgrind's dhat and side by side with nginx (bench/RESULTS.md), that was most of what
//! wsgate spent on a handshake in user space beyond nginx.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::drain::DrainSignal;
use super::headers::X_REQUEST_ID;
use super::relay::relay_streams;
use super::service::{handle, new_request_id, RequestCtx, MAX_HEAD_BYTES};
use super::tls::Stream;
use super::websocket::{self, Opened, Switched};
use super::{handshake, Error, Gateway};
use crate::balance::ConnectionGuard;
use crate::table::RouteTable;

/// hyper's read buffer: room for a head at the 431 limit plus what arrives behind it.
const READ_BUF_BYTES: usize = 2 * MAX_HEAD_BYTES;
/// A client must send its whole request head within this time (slowloris guard).
const HEAD_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// hyper's limit too: a head with more headers is answered 431 by hyper.
const MAX_HEADERS: usize = 100;

/// Serves one client connection until it closes (or the drain ends it).
pub async fn serve(
    gw: Arc<Gateway>,
    stream: Stream,
    peer: SocketAddr,
    proto: &'static str,
    mut drain: DrainSignal,
) {
    let offload = gw.offload.clone();
    // Boxed: the head read, routing, dialing, TLS, the upgrade exchange and hyper are large
    // futures; an idle relayed connection's task keeps only the relay and what it holds.
    let Some(r) = Box::pin(answer(gw, stream, peer, proto, &mut drain)).await else {
        return;
    };
    let route = &r.table.routes()[r.route_index];
    let started = websocket::relay_started(route);
    let stats = relay_streams(
        r.client,
        r.client_early,
        r.upstream,
        r.upstream_early,
        websocket::relay_config(route),
        drain,
        &route.metrics,
        offload.as_deref(),
    )
    .await;
    websocket::relay_ended(route, started, &stats, r.load, &r.endpoint, &r.request_id);
}

/// Everything up to the relay: `Some` once a direct upgrade got its 101; `None` when the
/// connection is over (an error or refusal answered, or hyper served it to the end).
async fn answer(
    gw: Arc<Gateway>,
    mut stream: Stream,
    peer: SocketAddr,
    proto: &'static str,
    drain: &mut DrainSignal,
) -> Option<ReadyToRelay> {
    let mut buf = BytesMut::with_capacity(2048);
    let head = tokio::select! {
        read = tokio::time::timeout(HEAD_READ_TIMEOUT, read_head(&mut stream, &mut buf)) => match read {
            Ok(Ok(head)) => head,
            // The client went away, or never finished its head.
            Ok(Err(_)) | Err(_) => return None,
        },
        _ = drain.wait() => return None,
    };
    match head.and_then(|head| DirectUpgrade::take(&mut buf, head)) {
        Some(upgrade) => answer_upgrade(&gw, stream, upgrade, peer, proto).await,
        None => {
            let io = Prefixed {
                prefix: buf.freeze(),
                inner: stream,
            };
            // Boxed: hyper's connection future is large, and a direct upgrade (the common
            // case) should not carry its space.
            Box::pin(serve_hyper(gw, io, peer, proto, drain.clone())).await;
            None
        }
    }
}

/// A complete first request head, parsed once.
pub struct Head {
    pub len: usize,
    /// Where its parts lie when it is a GET/1.1 in origin form, the only shape served
    /// directly.
    pub direct: Option<DirectSpans>,
}

/// Positions in the read buffer, so the parse's borrows need not outlive it.
pub struct DirectSpans {
    pub target: std::ops::Range<usize>,
    pub headers: Vec<(HeaderName, std::ops::Range<usize>)>,
}

impl DirectSpans {
    fn of(req: &httparse::Request<'_, '_>, base: usize) -> Option<DirectSpans> {
        if req.method != Some("GET") || req.version != Some(1) {
            return None;
        }
        let path = req.path.filter(|p| p.starts_with('/'))?;
        let span = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let mut headers = Vec::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            headers.push((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                span(h.value),
            ));
        }
        Some(DirectSpans {
            target: span(path.as_bytes()),
            headers,
        })
    }
}

/// Reads until `buf` holds a complete request head (`Some`), or until it is clear this
/// connection is for hyper (`None`: malformed, too many headers, or over the size limit).
async fn read_head(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<Option<Head>> {
    loop {
        if !buf.is_empty() {
            match parse_head(buf) {
                HeadStatus::Complete(head) => return Ok(Some(head)),
                HeadStatus::Partial => {}
                HeadStatus::ForHyper => return Ok(None),
            }
        }
        buf.reserve(2048);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// What the bytes read so far hold, for `read_head`.
pub enum HeadStatus {
    /// A complete head within the size limit.
    Complete(Head),
    /// An incomplete head, still under the size limit.
    Partial,
    /// A connection for hyper: malformed, too many headers, or over the size limit.
    ForHyper,
}

/// One parse of the bytes read so far: `read_head`'s step, on its own so `crate::fuzzing`
/// can feed it bytes without a socket.
pub fn parse_head(buf: &[u8]) -> HeadStatus {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => {
            let direct = DirectSpans::of(&req, buf.as_ptr() as usize);
            HeadStatus::Complete(Head { len, direct })
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => HeadStatus::Partial,
        Ok(_) | Err(_) => HeadStatus::ForHyper,
    }
}

/// A first request that is a well-formed WebSocket upgrade in origin form.
pub struct DirectUpgrade {
    /// The request head; `path`, `query` and header values are slices of it.
    pub head: Bytes,
    pub target: std::ops::Range<usize>,
    pub headers: HeaderMap,
    /// Bytes the client sent behind its head (frames it did not wait to send).
    pub early: Bytes,
}

impl DirectUpgrade {
    /// `Some` when `head` (in `buf`) is a GET/1.1 WebSocket upgrade that passes
    /// `handshake::validate`; everything else is left to hyper and the service, with `buf`
    /// as it was.
    pub fn take(buf: &mut BytesMut, head: Head) -> Option<DirectUpgrade> {
        let Head { len, direct } = head;
        let DirectSpans {
            target,
            headers: spans,
        } = direct?;
        // Plain requests leave here with `buf` untouched; only upgrades build a header map.
        let asks_websocket = spans.iter().any(|(name, span)| {
            name == header::UPGRADE
                && buf[span.clone()]
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        });
        if !asks_websocket {
            return None;
        }
        let rest = buf.split_off(len);
        let head = std::mem::take(buf).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        let mut values_ok = true;
        for (name, span) in spans {
            match HeaderValue::from_maybe_shared(head.slice(span)) {
                Ok(value) => {
                    headers.append(name, value);
                }
                Err(_) => values_ok = false,
            }
        }
        if !values_ok
            || handshake::validate(&Method::GET, http::Version::HTTP_11, &headers).is_err()
        {
            // A malformed upgrade: hyper and the service answer it (400 naming the part),
            // so the bytes go back together as they came.
            drop(headers);
            let mut whole = BytesMut::from(&head[..]);
            whole.extend_from_slice(&rest);
            *buf = whole;
            return None;
        }
        Some(DirectUpgrade {
            head,
            target,
            headers,
            early: rest.freeze(),
        })
    }
}

/// Everything a relay needs once the 101 went to the client, owned (the route by its index
/// in the table generation the request was routed under).
struct ReadyToRelay {
    table: Arc<RouteTable>,
    route_index: usize,
    client: Stream,
    client_early: Bytes,
    upstream: Stream,
    upstream_early: Bytes,
    load: ConnectionGuard,
    endpoint: Arc<str>,
    request_id: HeaderValue,
}

/// Routes the upgrade, opens the backend and writes its answer to the client: `Some` after
/// a 101, `None` once the client got an error or the backend's refusal.
async fn answer_upgrade(
    gw: &Arc<Gateway>,
    mut client: Stream,
    upgrade: DirectUpgrade,
    peer: SocketAddr,
    proto: &'static str,
) -> Option<ReadyToRelay> {
    let DirectUpgrade {
        head,
        target,
        headers,
        early: client_early,
    } = upgrade;
    let ctx = RequestCtx {
        peer,
        proto,
        request_id: match headers.get(&X_REQUEST_ID) {
            Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
            _ => new_request_id(),
        },
        host: headers.get(header::HOST).cloned(),
    };
    let rid = ctx.request_id.to_str().unwrap_or("-");
    let target = std::str::from_utf8(&head[target]).unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let table = gw.publisher.current();
    let host = ctx.host.as_ref().and_then(|v| v.to_str().ok());
    let Some(found) = table.find(host, path, query, &Method::GET) else {
        let e = Error::NoRoute {
            host: host.unwrap_or("").to_string(),
            path: path.to_string(),
        };
        tracing::debug!(request_id = %rid, peer = %peer, error = %e, "no route");
        gw.metrics.unrouted_failure(e.reason());
        write_error(&mut client, &e, rid).await;
        return None;
    };
    let route = found.route;
    let downstream = found.downstream_path_and_query();
    let opened = websocket::open(route, headers, query, &downstream, &ctx).await;
    let switched = match opened {
        Ok(Opened::Switched(s)) => s,
        Ok(Opened::Refused(resp)) => {
            write_refusal(&mut client, resp).await;
            return None;
        }
        Err(e) => {
            route.metrics.failure(e.reason());
            tracing::warn!(request_id = %rid, route = %route.route.id, peer = %peer, status = e.status().as_u16(), error = %e, "request not proxied");
            write_error(&mut client, &e, rid).await;
            return None;
        }
    };
    let answer = switched.client_head();
    let Switched {
        upstream,
        early,
        load,
        endpoint,
        ..
    } = switched;
    if client.write_all(&answer).await.is_err() || client.flush().await.is_err() {
        tracing::debug!(request_id = %rid, "client went away before the 101");
        return None;
    }
    Some(ReadyToRelay {
        route_index: websocket::index_of(&table, route),
        table: Arc::clone(&table),
        client,
        client_early,
        upstream,
        upstream_early: early,
        load,
        endpoint,
        // A copy: the client's own id is a slice of the request head, which must not stay
        // allocated for the life of the connection.
        request_id: HeaderValue::from_bytes(ctx.request_id.as_bytes())
            .unwrap_or(HeaderValue::from_static("-")),
    })
}

/// Status line and headers, without the final empty line.
fn response_head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>(),
    );
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One of wsgate's own answers (`Error::response`), then the connection closes.
async fn write_error(client: &mut Stream, e: &Error, request_id: &str) {
    let resp = e.response(request_id);
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut out = response_head(parts.status, &parts.headers);
    // As hyper would: an answer of our own carries the date it was made.
    out.extend_from_slice(
        format!(
            "date: {}\r\ncontent-length: {}\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(&body);
    let _ = client.write_all(&out).await;
    let _ = client.shutdown().await;
}

/// A backend's refusal of the upgrade: its status, headers and body, streamed as they
/// arrive (chunked unless the backend gave a length), then the connection closes.
async fn write_refusal(client: &mut Stream, resp: Response<Incoming>) {
    let (parts, mut body) = resp.into_parts();
    let chunked = !parts.headers.contains_key(header::CONTENT_LENGTH);
    let mut head = response_head(parts.status, &parts.headers);
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    if client.write_all(&head).await.is_err() {
        return;
    }
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            // The backend broke off mid-body: closing without the last chunk tells the
            // client the body is incomplete.
            let _ = client.shutdown().await;
            return;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let written = if chunked {
            let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            client.write_all(&chunk).await
        } else {
            client.write_all(&data).await
        };
        if written.is_err() {
            return;
        }
    }
    if chunked {
        let _ = client.write_all(b"0\r\n\r\n").await;
    }
    let _ = client.shutdown().await;
}

/// Everything that is not a direct upgrade: hyper serves the connection (keep-alive, plain
/// HTTP, later upgrades) with the bytes already read replayed first.
async fn serve_hyper(
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

/// A stream with the bytes already read from it put back in front (a client's first
/// request for hyper; a backend's refusal for hyper's client in `upgrade.rs`).
pub struct Prefixed {
    prefix: Bytes,
    inner: Stream,
}

impl Prefixed {
    pub fn new(prefix: Bytes, inner: Stream) -> Self {
        Prefixed { prefix, inner }
    }

    /// The stream and every byte read from it but not consumed: `consumed_rest` (what hyper
    /// buffered past the head) first, then what hyper never read of the prefix.
    pub fn into_parts(self, consumed_rest: Bytes) -> (Stream, Bytes) {
        let early = if self.prefix.is_empty() {
            consumed_rest
        } else {
            let mut all = BytesMut::from(&consumed_rest[..]);
            all.extend_from_slice(&self.prefix);
            all.freeze()
        };
        (self.inner, early)
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod size_budget {
    /// The connection task runs the relay of an idle WebSocket for its whole life, so its
    /// future is most of what an idle connection costs wsgate.
    #[tokio::test]
    async fn connection_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
        let publisher = std::sync::Arc::new(crate::table::Publisher::new(metrics.clone()));
        let drain = crate::proxy::Drain::new();
        let gw = crate::proxy::Gateway::new(publisher, metrics, drain.clone(), Default::default());
        let fut = super::serve(
            gw,
            super::Stream::Tcp(a),
            "127.0.0.1:1".parse().unwrap(),
            "http",
            drain.signal(),
        );
        let size = std::mem::size_of_val(&fut);
        // The relay future's own budget is 1,400 bytes (relay.rs); 1,560 measured here.
        assert!(size <= 1600, "connection future grew to {size} bytes");
    }
}
