//! The WebSocket upgrade towards a backend, written and parsed directly: one request head
//! out, one response head in (httparse), and on a 101 the socket goes straight to the relay.
//!
//! Why not hyper's client here: per handshake it spawns a connection task, allocates its
//! read and write buffers, a request/response channel and an upgrade hand-off, all to carry
//! one head each way. Profiles of the handshake benchmark (bench/RESULTS.md) put that among
//! the largest user-space costs of a proxied handshake. A backend that refuses the upgrade
//! is rarer and its body may be framed any way HTTP allows, so that answer is replayed into
//! a hyper client, which streams it with the full HTTP/1.1 body rules.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::error::{Error, Handshake, UpstreamProtocol};
use super::headers::{for_upstream, hop_by_hop_in, Forwarded};
use super::stream::{Prefixed, Stream};

/// A response head larger than this is refused (502); hyper's client default is similar.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;

/// The backend's answer to the upgrade request.
pub enum Answer {
    /// `101 Switching Protocols`: its head, the upgraded stream, and any bytes the backend
    /// sent right behind the head (the first frames may share its segment).
    Switched {
        head: SwitchedHead,
        stream: Stream,
        early: Bytes,
    },
    /// Any other final status, with its body streamed from the backend as it arrives.
    Refused(Response<Incoming>),
}

/// Sends what is left of the upgrade request (`unsent`: `request_head`'s bytes the dial did
/// not already write) over `stream` and reads the answer, all within `wait`. `target` is the
/// request's target, for reading a refusal.
pub async fn upgrade(
    stream: Stream,
    unsent: Vec<u8>,
    target: &str,
    endpoint: &str,
    wait: Duration,
) -> Result<Answer, Error> {
    match tokio::time::timeout(wait, exchange(stream, unsent, target, endpoint)).await {
        Ok(answer) => answer,
        Err(_) => Err(Error::UpstreamTimeout {
            endpoint: endpoint.to_string(),
            timeout_ms: wait.as_millis(),
        }),
    }
}

async fn exchange(
    mut stream: Stream,
    unsent: Vec<u8>,
    target: &str,
    endpoint: &str,
) -> Result<Answer, Error> {
    let protocol = |source: UpstreamProtocol| Error::UpstreamProtocol {
        endpoint: endpoint.to_string(),
        source,
    };
    if !unsent.is_empty() {
        stream
            .write_all(&unsent)
            .await
            .map_err(|e| protocol(UpstreamProtocol::Send(e)))?;
        stream
            .flush()
            .await
            .map_err(|e| protocol(UpstreamProtocol::Send(e)))?;
    }
    drop(unsent);

    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match parse_head(&mut buf).map_err(&protocol)? {
            Head::Partial => {}
            Head::Informational(len) => {
                // 100 Continue and friends precede the final answer; skip them (as hyper does).
                buf.advance(len);
                continue;
            }
            Head::Switched { head, early } => {
                return Ok(Answer::Switched {
                    head,
                    stream,
                    early,
                });
            }
            // Boxed: a refusal is rare, and hyper's client handshake is a large future that
            // every upgrade exchange would otherwise carry.
            Head::Final => return Box::pin(refused(stream, buf.freeze(), target, endpoint)).await,
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(protocol(UpstreamProtocol::HeadTooLarge(MAX_RESPONSE_HEAD)));
        }
        buf.reserve(1024);
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| protocol(UpstreamProtocol::Read(e)))?;
        if n == 0 {
            return Err(protocol(if buf.is_empty() {
                UpstreamProtocol::ClosedBeforeResponse
            } else {
                UpstreamProtocol::ClosedInHead
            }));
        }
    }
}

/// Whether `target` can go verbatim into a request line: origin-form, visible ASCII only
/// (no space, CR or LF that would let a captured value split the request).
pub fn valid_target(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The upgrade request to `endpoint`, as one buffer for one write: `GET target HTTP/1.1`,
/// the client's headers as forwarded (`headers::for_upstream`), `Connection: upgrade`,
/// `Upgrade: websocket`.
pub fn request_head(
    target: &str,
    headers: &HeaderMap,
    endpoint: &str,
    fwd: &Forwarded<'_>,
) -> Vec<u8> {
    let size = 160
        + target.len()
        + headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for_upstream(headers, endpoint, fwd, |name, value| {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    });
    head.extend_from_slice(b"connection: upgrade\r\nupgrade: websocket\r\n\r\n");
    head
}

#[derive(Debug)]
pub enum Head {
    /// More bytes needed.
    Partial,
    /// A 1xx other than 101 of this many bytes.
    Informational(usize),
    /// A 101: its head (the read buffer's bytes) and the bytes behind it.
    Switched { head: SwitchedHead, early: Bytes },
    /// Any other final status: left for hyper to read again.
    Final,
}

/// A backend's 101 as it arrived: the head's bytes and where each header's name and value lie
/// in them. Nothing is copied or hashed: the client's 101 is written from these spans, and a
/// header map is built only where hyper needs one (an upgrade on a kept-alive connection).
/// httparse has already checked names (tokens) and values (no control bytes), the same rules
/// `HeaderName` and `HeaderValue` apply.
#[derive(Debug)]
pub struct SwitchedHead {
    bytes: Bytes,
    /// (name, value) spans; five or six headers is the usual 101.
    spans: SmallVec<[(Span, Span); 8]>,
}

/// Start and end in the head, which is at most `MAX_RESPONSE_HEAD` bytes: compact, since
/// the head moves through several futures on its way to the client.
#[derive(Debug, Clone, Copy)]
struct Span(u16, u16);

impl Span {
    fn of(part: &[u8], base: usize) -> Span {
        let start = part.as_ptr() as usize - base;
        Span(start as u16, (start + part.len()) as u16)
    }

    fn range(self) -> std::ops::Range<usize> {
        self.0 as usize..self.1 as usize
    }
}

impl SwitchedHead {
    /// The headers that travel on to the client, as (name, value) bytes: the backend's,
    /// without hop-by-hop ones, `Upgrade`, or those its `Connection` lists
    /// (`headers::hop_by_hop_in`).
    pub fn end_to_end(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let all = self
            .spans
            .iter()
            .map(|(n, v)| (&self.bytes[n.range()], &self.bytes[v.range()]));
        let hop = hop_by_hop_in(all.clone());
        all.filter(move |(name, _)| !hop(name))
    }

    /// Length of the head in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// `end_to_end` as a header map, for a response hyper writes.
    pub fn end_to_end_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.spans.len());
        for (name, value) in self.end_to_end() {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(self.bytes.slice_ref(value)),
            ) else {
                continue;
            };
            map.append(name, value);
        }
        map
    }
}

/// Parses what `buf` holds so far. On a 101 the buffer is consumed: it becomes the head's
/// bytes, and what follows the head becomes `early`.
pub fn parse_head(buf: &mut BytesMut) -> Result<Head, UpstreamProtocol> {
    if buf.is_empty() {
        return Ok(Head::Partial);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Head::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(UpstreamProtocol::TooManyHeaders(MAX_HEADERS))
        }
        Err(e) => return Err(UpstreamProtocol::InvalidHead(e)),
    };
    if resp.version != Some(1) {
        return Err(UpstreamProtocol::NotHttp11);
    }
    if len > MAX_RESPONSE_HEAD {
        return Err(UpstreamProtocol::HeadTooLarge(MAX_RESPONSE_HEAD));
    }
    let code = resp.code.unwrap_or(0);
    if code == StatusCode::SWITCHING_PROTOCOLS.as_u16() {
        let base = buf.as_ptr() as usize;
        let spans = resp
            .headers
            .iter()
            .map(|h| (Span::of(h.name.as_bytes(), base), Span::of(h.value, base)))
            .collect();
        let early = buf.split_off(len).freeze();
        let bytes = std::mem::take(buf).freeze();
        return Ok(Head::Switched {
            head: SwitchedHead { bytes, spans },
            early,
        });
    }
    if (100..200).contains(&code) {
        return Ok(Head::Informational(len));
    }
    Ok(Head::Final)
}

/// Hands a non-101 answer to a hyper client: the bytes read so far are replayed to it and
/// the request it writes goes nowhere (the real one was already sent).
async fn refused(
    stream: Stream,
    read: Bytes,
    target: &str,
    endpoint: &str,
) -> Result<Answer, Error> {
    let protocol = |e: hyper::Error| Error::UpstreamProtocol {
        endpoint: endpoint.to_string(),
        source: UpstreamProtocol::Http(e),
    };
    let replay = Replay {
        read: Prefixed::new(read, stream),
        request_written: false,
        reader: None,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(replay))
        .await
        .map_err(protocol)?;
    // Drives the body to the client; ends with the connection.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = target
        .parse()
        .map_err(|_| Error::BadHandshake(Handshake::InvalidTarget))?;
    let resp = sender.send_request(req).await.map_err(protocol)?;
    Ok(Answer::Refused(resp))
}

/// Reads what was read already, then the stream (`Prefixed`); swallows writes. Nothing is
/// readable before hyper has written its request: an idle hyper client treats bytes it did
/// not ask for as an error and drops the connection.
struct Replay {
    read: Prefixed,
    request_written: bool,
    reader: Option<std::task::Waker>,
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.request_written {
            this.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut this.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.request_written = true;
        if let Some(reader) = this.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().read).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head carries the target, the forwarded headers (each client header once, the
    /// backend as Host, the forwarding headers), the upgrade pair and an empty line.
    #[test]
    fn request_head_is_request_line_forwarded_headers_and_blank_line() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("chat.example.com"));
        h.insert("connection", HeaderValue::from_static("Upgrade, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.append("sec-websocket-protocol", HeaderValue::from_static("a"));
        h.append("sec-websocket-protocol", HeaderValue::from_static("b"));
        let id = HeaderValue::from_static("req-1");
        let trace = crate::telemetry::trace_context::TraceContext::start();
        let fwd = Forwarded {
            client_ip: "127.0.0.1".parse().unwrap(),
            proto: "http",
            host: h.get("host"),
            request_id: &id,
            trace: &trace,
        };
        let head = request_head("/ws/1?x=2", &h, "b:80", &fwd);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            format!(
                "GET /ws/1?x=2 HTTP/1.1\r\nsec-websocket-protocol: a\r\nsec-websocket-protocol: b\r\n\
                 host: b:80\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\n\
                 x-forwarded-host: chat.example.com\r\nx-request-id: req-1\r\n\
                 traceparent: {}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
                trace.traceparent().to_str().unwrap()
            )
        );
    }

    /// Targets with spaces, control bytes or non-ASCII never reach the request line.
    #[test]
    fn request_targets_are_origin_form_visible_ascii() {
        assert!(valid_target("/ws/1?x=%20y&z"));
        for bad in ["ws/1", "/a b", "/a\r\nHost: x", "/caf\u{e9}", ""] {
            assert!(!valid_target(bad), "{bad:?}");
        }
    }

    /// A 101 yields its end-to-end headers and the exact head length, so bytes behind it are
    /// kept.
    #[test]
    fn switching_protocols_head_keeps_headers_and_length() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\nSec-WebSocket-Accept: abc\r\nSet-Cookie: a=1\r\n\r\n\x81\x02hi";
        match parse_head(&mut BytesMut::from(&raw[..])).unwrap() {
            Head::Switched { head, early } => {
                assert_eq!(&early[..], b"\x81\x02hi");
                // Hop-by-hop headers and those Connection lists stay here.
                let kept: Vec<_> = head.end_to_end().collect();
                assert_eq!(
                    kept,
                    vec![
                        (&b"Sec-WebSocket-Accept"[..], &b"abc"[..]),
                        (&b"Set-Cookie"[..], &b"a=1"[..])
                    ]
                );
                let map = head.end_to_end_map();
                assert_eq!(map["sec-websocket-accept"], "abc");
                assert_eq!(map.len(), 2);
            }
            other => panic!("expected 101, got {other:?}"),
        }
    }

    /// Incomplete heads wait for more bytes; 1xx are skipped; other finals go to hyper.
    #[test]
    fn partial_informational_and_final_heads_are_told_apart() {
        assert!(matches!(
            parse_head(&mut BytesMut::from(&b"HTTP/1.1 101 Sw"[..])).unwrap(),
            Head::Partial
        ));
        assert!(matches!(
            parse_head(&mut BytesMut::from(
                &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101"[..]
            ))
            .unwrap(),
            Head::Informational(25)
        ));
        assert!(matches!(
            parse_head(&mut BytesMut::from(
                &b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"[..]
            ))
            .unwrap(),
            Head::Final
        ));
    }

    /// Garbage, HTTP/1.0 and header floods are refused with a reason naming the problem.
    #[test]
    fn malformed_heads_are_refused_with_a_reason() {
        assert!(
            parse_head(&mut BytesMut::from(&b"SSH-2.0-OpenSSH\r\n\r\n"[..]))
                .unwrap_err()
                .to_string()
                .contains("invalid response head")
        );
        assert!(
            parse_head(&mut BytesMut::from(&b"HTTP/1.0 101 Switching\r\n\r\n"[..]))
                .unwrap_err()
                .to_string()
                .contains("not HTTP/1.1")
        );
        let mut flood = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            flood.extend_from_slice(format!("x-{i}: y\r\n").as_bytes());
        }
        flood.extend_from_slice(b"\r\n");
        assert!(parse_head(&mut BytesMut::from(&flood[..]))
            .unwrap_err()
            .to_string()
            .contains("more than 100 headers"));
    }
}
