//! One client connection, the direct request path. Its first request head is read and
//! parsed here (httparse): a GET/1.1 asking for WebSocket runs the request sequence
//! (`websocket::serve_upgrade`) with its outcome written by hand — wsgate's own answer, the
//! backend's refusal or the 101 — and the relay in this same task; a head that is malformed
//! or too large gets wsgate's own 400 or 431; anything else goes to hyper (`service.rs`)
//! with the bytes read so far put back in front (`Prefixed`).
//!
//! Why: a proxied handshake through hyper's server costs a connection task, its read
//! buffer, dispatcher, the upgrade hand-off and a second task for the relay. Measured with
//! valgrind's dhat and side by side with nginx (bench/RESULTS.md), that was most of what
//! wsgate spent on a handshake in user space beyond nginx.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::drain::DrainSignal;
use super::error::Error;
use super::request::{RequestCtx, HEAD_READ_TIMEOUT, MAX_HEADERS, MAX_HEAD_BYTES};
use super::service::serve_hyper;
use super::stream::{Prefixed, Stream};
use super::websocket::{self, Outcome, RelayAccount, Relaying, UpgradeRequest};
use super::Gateway;
use crate::telemetry::access_log::AccessKind;

/// Serves one client connection until it closes (or the drain ends it).
///
/// A function returning an `async move` block rather than an async fn: an async fn keeps
/// each argument twice in its future (captured, and as a local), and this future lives as
/// long as the connection.
pub fn serve(
    gw: Arc<Gateway>,
    stream: Stream,
    peer: SocketAddr,
    proto: &'static str,
    mut drain: DrainSignal,
) -> impl std::future::Future<Output = ()> + Send {
    let offload = gw.offload.clone();
    async move {
        // Boxed: the head read, routing, dialing, TLS, the upgrade exchange and hyper are
        // large futures; an idle relayed connection's task keeps only the relay and what it
        // holds.
        let Some((client, backend, mut account)) =
            Box::pin(answer(gw, stream, peer, proto, &mut drain)).await
        else {
            return;
        };
        let stats = account
            .relay(backend, client, drain, offload.as_deref())
            .await;
        account.ended(&stats);
    }
}

/// A client whose 101 went out (its stream and the bytes it sent behind its request), and
/// the backend's side of the relay.
type ReadyToRelay = ((Stream, Bytes), Relaying, RelayAccount);

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
    let upgrade = head.and_then(|head| DirectUpgrade::take(&mut buf, head));
    match upgrade {
        Ok(Some(upgrade)) => serve_direct(&gw, stream, upgrade, peer, proto).await,
        Ok(None) => {
            let io = Prefixed::new(buf.freeze(), stream);
            // Boxed: hyper's connection future is large, and a direct upgrade (the common
            // case) should not carry its space.
            Box::pin(serve_hyper(gw, io, peer, proto, drain.clone())).await;
            None
        }
        Err(e) => {
            // No head to take a request id from: the answer gets a new one.
            let ctx = RequestCtx::new(&gw, peer, proto, &HeaderMap::new());
            ctx.failed(&gw, None, &e);
            write_error(&mut stream, &e, ctx.request_id()).await;
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

/// Reads until `buf` holds a complete request head (`Ok(Ok)`), or one that gets wsgate's
/// own answer (`Ok(Err)`: malformed 400, too large or too many headers 431); `Err` when
/// the client went away first.
async fn read_head(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<Result<Head, Error>> {
    let mut reader = HeadReader::default();
    loop {
        match reader.step(buf) {
            HeadStatus::Complete(head) => return Ok(Ok(head)),
            HeadStatus::Partial => {}
            HeadStatus::Refused(e) => return Ok(Err(e)),
        }
        buf.reserve(2048);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Decides after each read whether the head read so far is worth parsing again: on the
/// first read, then only when the new bytes could end the head (an empty line) or the
/// buffer doubled. A client sending its head a byte at a time must not cost a parse per
/// byte (fuzzing found a 64 KiB head at one byte per read: 1.1 s of CPU), and garbage still
/// gets its 400 at the first read.
#[derive(Default)]
pub struct HeadReader {
    /// How far the buffer was searched for the head's end.
    scanned: usize,
    /// The buffer's length at the last parse.
    parsed_at: usize,
}

impl HeadReader {
    /// `buf` is everything read so far.
    pub fn step(&mut self, buf: &[u8]) -> HeadStatus {
        if buf.is_empty() {
            return HeadStatus::Partial;
        }
        let due = self.parsed_at == 0
            || could_end_head(buf, self.scanned)
            || buf.len() >= 2 * self.parsed_at
            || buf.len() >= MAX_HEAD_BYTES;
        self.scanned = buf.len();
        if !due {
            return HeadStatus::Partial;
        }
        self.parsed_at = buf.len();
        parse_head(buf)
    }
}

/// What the bytes read so far hold, for `read_head`.
pub enum HeadStatus {
    /// A complete head within the size limit.
    Complete(Head),
    /// An incomplete head, still under the size limit.
    Partial,
    /// A head that gets wsgate's own answer: malformed (400), too large or too many
    /// headers (431).
    Refused(Error),
}

/// Whether `buf`, searched up to `scanned` without finding one, may now hold a head's end:
/// the bytes since then (with the three before, where it may have begun) contain the end
/// of a line followed by an empty line.
fn could_end_head(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(3);
    buf[from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r")
}

/// One parse of the bytes read so far: `read_head`'s step, on its own so `crate::fuzzing`
/// can feed it bytes without a socket.
pub fn parse_head(buf: &[u8]) -> HeadStatus {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let too_large = |size| Error::HeadTooLarge {
        size,
        limit: MAX_HEAD_BYTES,
    };
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD_BYTES => {
            let direct = DirectSpans::of(&req, buf.as_ptr() as usize);
            HeadStatus::Complete(Head { len, direct })
        }
        Ok(httparse::Status::Complete(len)) => HeadStatus::Refused(too_large(len)),
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => HeadStatus::Partial,
        Ok(httparse::Status::Partial) => HeadStatus::Refused(too_large(buf.len())),
        Err(httparse::Error::TooManyHeaders) => {
            HeadStatus::Refused(Error::TooManyHeaders { limit: MAX_HEADERS })
        }
        Err(e) => HeadStatus::Refused(Error::MalformedHead(e)),
    }
}

/// A first request that asks for WebSocket: GET/1.1 in origin form with `Upgrade:
/// websocket` (the rest of the handshake is checked by the request sequence).
pub struct DirectUpgrade {
    /// The request head; `path`, `query` and header values are slices of it.
    pub head: Bytes,
    pub target: std::ops::Range<usize>,
    pub headers: HeaderMap,
    /// Bytes the client sent behind its head (frames it did not wait to send).
    pub early: Bytes,
}

impl DirectUpgrade {
    /// `Some` when `head` (in `buf`) is a GET/1.1 request asking for WebSocket; `None`
    /// leaves everything else to hyper and the service, with `buf` as it was. A header value
    /// no `HeaderValue` can hold is a malformed head.
    pub fn take(buf: &mut BytesMut, head: Head) -> Result<Option<DirectUpgrade>, Error> {
        let Head { len, direct } = head;
        let Some(DirectSpans {
            target,
            headers: spans,
        }) = direct
        else {
            return Ok(None);
        };
        // Plain requests leave here with `buf` untouched; only upgrades build a header map.
        let asks_websocket = spans.iter().any(|(name, span)| {
            name == header::UPGRADE
                && buf[span.clone()]
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        });
        if !asks_websocket {
            return Ok(None);
        }
        let rest = buf.split_off(len);
        let head = std::mem::take(buf).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        for (name, span) in spans {
            let value = HeaderValue::from_maybe_shared(head.slice(span))
                .map_err(|_| Error::MalformedHead(httparse::Error::HeaderValue))?;
            headers.append(name, value);
        }
        Ok(Some(DirectUpgrade {
            head,
            target,
            headers,
            early: rest.freeze(),
        }))
    }
}

/// Runs the request sequence for a direct upgrade and writes its outcome by hand: `Some`
/// after a 101, `None` once the client got an error or the backend's refusal.
async fn serve_direct(
    gw: &Gateway,
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
    let mut ctx = RequestCtx::new(gw, peer, proto, &headers);
    ctx.request_line(
        AccessKind::WebSocket,
        &Method::GET,
        &String::from_utf8_lossy(&head[target.clone()]),
    );
    let Ok(target) = std::str::from_utf8(&head[target]) else {
        // Bytes outside ASCII in a path are refused anyway (`target::normalize`); bytes that
        // are not even UTF-8 get the same answer.
        let e = Error::Path(super::target::PathError::NonAscii);
        ctx.failed(gw, None, &e);
        write_error(&mut client, &e, ctx.request_id()).await;
        return None;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let req = UpgradeRequest {
        method: &Method::GET,
        version: http::Version::HTTP_11,
        headers,
        authority: None,
        path,
        query,
    };
    match websocket::serve_upgrade(gw, &ctx, req).await {
        Outcome::Failed(e) => write_error(&mut client, &e, ctx.request_id()).await,
        Outcome::Refused(resp) => write_refusal(&mut client, resp).await,
        Outcome::Switched(answer, backend, account) => {
            let answer = answer.head();
            if client.write_all(&answer).await.is_ok() && client.flush().await.is_ok() {
                return Some(((client, client_early), backend, account));
            }
            tracing::debug!("client went away before the 101");
        }
    }
    None
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
/// arrive (chunked unless the backend gave a length; none for 204 and 304, which have no
/// body), then the connection closes.
async fn write_refusal(client: &mut Stream, resp: Response<Incoming>) {
    let (mut parts, mut body) = resp.into_parts();
    // The request was a GET, so only the status can forbid a body (RFC 9110 §6.4.1).
    let bodiless = matches!(
        parts.status,
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    );
    if parts.status == StatusCode::NO_CONTENT {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let chunked = !bodiless && !parts.headers.contains_key(header::CONTENT_LENGTH);
    let mut head = response_head(parts.status, &parts.headers);
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    if client.write_all(&head).await.is_err() {
        return;
    }
    while let Some(frame) = body.frame().await.filter(|_| !bodiless) {
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
        // The relay future's own budget is 872 bytes (relay.rs); 1,560 measured here
        // before issue 21. Issue 21 added, each measured alone: gentle drains +72 (a live
        // relay's control handle in the account, the drain signal, a boxed scheduled close
        // in the machine), the telemetry +64 (the access log entry and OTLP span pointers,
        // each direction's message-size tally pointer, the first Close's side and code, the
        // counts' flush deadline), keep-alive a pointer and two flags: 1,720 together;
        // 1,728 with the short messages' inline size counts (bench/RESULTS.md "Issue 21:
        // what the telemetry costs"). Issue 22's TLS relays on relay threads: +16, 1,744;
        // the relay future and this one without their async fns' copies of their
        // arguments: 1,112.
        assert!(size <= 1112, "connection future grew to {size} bytes");
    }
}
