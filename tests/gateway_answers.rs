//! Every row of DESIGN.md's behaviour table that wsgate answers itself, and plain HTTP
//! (SSE, long polling) on a WebSocket route.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::BodyExt;
use hyper::body::Body;
use support::*;
use tokio::net::TcpStream;
use wsgate::model::EndpointState;

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// The gateway with one catch-all route to `backends`.
async fn gateway_to(backends: &[std::net::SocketAddr]) -> Gateway {
    Gateway::start(&[route(
        "r",
        0,
        &spec("/{everything}", "/{everything}", backends),
    )])
    .await
}

/// A WebSocket upgrade for `path` sent raw through `gw`; the whole answer as text.
async fn raw_upgrade(gw: &Gateway, path: &str) -> String {
    raw_request(
        gw.server.listen_addr,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n{UPGRADE}\r\n").as_bytes(),
    )
    .await
}

/// No route: 404 with a JSON body naming host and path.
#[tokio::test]
async fn unmatched_request_gets_404_naming_host_and_path() {
    let echo = Echo::start("e").await;
    let gw = Gateway::start(&[route(
        "r",
        0,
        &spec("/chat/{room}", "/{room}", &[echo.addr]),
    )])
    .await;
    let resp = raw_request(
        gw.server.listen_addr,
        format!("GET /nowhere HTTP/1.1\r\nHost: a.example\r\n{UPGRADE}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert!(resp.contains("application/json"));
    assert!(resp.to_ascii_lowercase().contains("\r\ndate: "), "{resp}");
    assert!(
        resp.contains("a.example") && resp.contains("/nowhere"),
        "{resp}"
    );
}

/// A route whose endpoints are all terminating: 503 with Retry-After, never a 4xx.
#[tokio::test]
async fn route_without_ready_endpoint_gets_503_with_retry_after() {
    let echo = Echo::start("e").await;
    let mut r = route(
        "r",
        0,
        &spec("/{everything}", "/{everything}", &[echo.addr]),
    );
    for e in &mut r.endpoints {
        e.state = EndpointState::Terminating;
    }
    let gw = Gateway::start(&[r]).await;
    let resp = raw_upgrade(&gw, "/x").await;
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("retry-after: 1"),
        "{resp}"
    );
}

/// Every endpoint refuses: 502. With one dead and one live endpoint, the dial moves on
/// and the client never notices.
#[tokio::test]
async fn refused_connects_give_502_and_retry_the_next_endpoint() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }; // listener dropped: connects are refused
    let gw = gateway_to(&[dead]).await;
    let resp = raw_upgrade(&gw, "/x").await;
    assert_eq!(status_of(&resp), 502, "{resp}");

    let echo = Echo::start("live").await;
    let gw = gateway_to(&[dead, echo.addr]).await;
    let mut ws = connect(&gw.ws("/x?hello=1")).await;
    let first = within("hello", ws.next()).await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("\"live\""));
}

/// A backend that never completes the TCP handshake: 504 after the route's connect timeout.
#[tokio::test]
async fn connect_timeout_gives_504() {
    // A listener with a backlog of 1 that never accepts: once its queue is full the
    // kernel drops further SYNs, so connects hang.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(s);
        } else {
            break;
        }
    }
    let mut s = spec("/{everything}", "/{everything}", &[addr]);
    s.timeouts = Some(wsgate::api::RouteTimeouts {
        connect: Some("300ms".into()),
        ..Default::default()
    });
    let gw = Gateway::start(&[route("r", 0, &s)]).await;
    let resp = raw_upgrade(&gw, "/x").await;
    assert_eq!(status_of(&resp), 504, "{resp}");
    drop(sock);
}

/// Malformed upgrades get 400 naming what is wrong (a version other than 13: 426, below).
#[tokio::test]
async fn malformed_handshakes_get_400_with_the_reason() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(&[echo.addr]).await;
    let cases = [
        ("GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", "Sec-WebSocket-Key"),
        ("GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "Sec-WebSocket-Version"),
        ("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", "GET"),
    ];
    for (req, needle) in cases {
        let resp = raw_request(gw.server.listen_addr, req.as_bytes()).await;
        assert_eq!(status_of(&resp), 400, "{resp}");
        assert!(resp.contains(needle), "{needle} not named in {resp}");
    }
}

/// A first request head that is not HTTP gets wsgate's own 400 (JSON, `X-Request-Id`,
/// counted), not a bare one.
#[tokio::test]
async fn malformed_first_head_gets_json_400_with_request_id() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(&[echo.addr]).await;
    let requests: [&[u8]; 3] = [
        b"GET /x HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
        b"GET /x HTTP/9.9\r\nHost: a\r\n\r\n",
        // A TLS ClientHello on the plain listener.
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    ];
    for req in requests {
        let answer = own_answer(&gw, req).await;
        assert_eq!(answer.status, 400, "{req:?}: {answer:?}");
        assert!(
            answer.text().contains("malformed request head"),
            "{answer:?}"
        );
    }
    let text = gw.metrics.encode();
    assert!(
        text.contains("wsgate_handshake_failures_total{route=\"\",reason=\"BadRequest\"} 3"),
        "{text}"
    );
}

/// A request head larger than the limit gets 431: one that ends past 64 KiB, one that
/// never ends, and one with more than 100 headers.
#[tokio::test]
async fn oversized_request_head_gets_431() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(&[echo.addr]).await;
    let big = "a".repeat(100 * 1024);
    let many: String = (0..101).map(|i| format!("x-{i}: y\r\n")).collect();
    for req in [
        format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n{UPGRADE}\r\n"),
        format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Big: {big}"),
        format!("GET /x HTTP/1.1\r\nHost: a\r\n{many}{UPGRADE}\r\n"),
    ] {
        let answer = own_answer(&gw, req.as_bytes()).await;
        assert_eq!(answer.status, 431, "{answer:?}");
    }
}

/// wsgate's own answer to `request` sent as a connection's first bytes, checked for what
/// every such answer carries: a JSON body naming the same request id as `X-Request-Id`.
async fn own_answer(gw: &Gateway, request: &[u8]) -> Answer {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
    // The gateway may answer before it has read everything (a head over the limit) and
    // close: a failed write is part of the test, not a failure.
    let _ = s.write_all(request).await;
    let answer = read_response(&mut s, &mut Vec::new()).await;
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{answer:?}"
    );
    let id = answer
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["requestId"], id.as_str(), "{answer:?}");
    answer
}

/// A `Sec-WebSocket-Version` other than 13 gets 426 naming the version wsgate speaks
/// (RFC 6455 §4.2.2), as a connection's first request and as a later one.
#[tokio::test]
async fn wrong_websocket_version_gets_426_naming_13_on_first_and_later_requests() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(&[echo.addr]).await;
    let req = "GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (first, later) = first_and_later(&gw, req).await;
    for answer in [first, later] {
        assert_eq!(answer.status, 426, "{answer:?}");
        assert_eq!(
            answer.header("sec-websocket-version"),
            Some("13"),
            "{answer:?}"
        );
        assert!(
            answer.text().contains("Sec-WebSocket-Version"),
            "{answer:?}"
        );
    }
}

/// A backend refusing the upgrade with 204 or 304: status and headers reach the client,
/// and no body (not even an empty chunked one), on a first and on a later request.
#[tokio::test]
async fn backend_refusal_with_204_or_304_passes_no_body() {
    let replies: [fn(&str) -> Vec<u8>; 2] = [
        |_| b"HTTP/1.1 204 No Content\r\nX-Why: none\r\n\r\n".to_vec(),
        |_| b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Why: none\r\n\r\n".to_vec(),
    ];
    for reply in replies {
        let addr = scripted_backend(reply).await;
        let gw = gateway_to(&[addr]).await;
        // First request: the connection closes after the refusal, so everything behind
        // the head is visible.
        let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
        let raw = within("refusal", async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(format!("GET /x HTTP/1.1\r\nHost: a\r\n{UPGRADE}\r\n").as_bytes())
                .await
                .unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            String::from_utf8_lossy(&all).into_owned()
        })
        .await;
        let (head, body) = raw.split_once("\r\n\r\n").expect("a whole head");
        assert!(head.to_ascii_lowercase().contains("x-why: none"), "{raw}");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "{raw}"
        );
        assert_eq!(body, "", "{raw}");
        // Later request: the next answer on the connection follows the head directly.
        let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
        let mut buf = Vec::new();
        let plain = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let upgrade = format!("GET /x HTTP/1.1\r\nHost: a\r\n{UPGRADE}\r\n");
        let mut statuses = Vec::new();
        for req in [plain, &upgrade, plain] {
            use tokio::io::AsyncWriteExt;
            s.write_all(req.as_bytes()).await.unwrap();
            let answer = read_response(&mut s, &mut buf).await;
            assert!(answer.body.is_empty(), "{answer:?}");
            statuses.push(answer.status);
        }
        assert_eq!(statuses[0], statuses[1]);
        assert!(buf.is_empty(), "bytes after the last answer: {buf:?}");
    }
}

/// The same request gets the same answer whether it opens a connection (the direct path)
/// or follows a plain request on a kept-alive one (hyper): wsgate's own answers, a
/// backend's refusal and the 101. Only `Date` and `Connection` may differ.
#[tokio::test]
async fn same_route_answers_alike_as_first_and_later_request() {
    let echo = Echo::start("e").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gateway::start(&[
        route("chat", 0, &spec("/chat/{room}", "/{room}", &[echo.addr])),
        route(
            "status",
            0,
            &spec("/s/{code}", "/status/{code}", &[echo.addr]),
        ),
        route("dead", 0, &spec("/dead/{room}", "/{room}", &[dead])),
        route("plain", 0, &spec("/x", "/x", &[echo.addr])),
    ])
    .await;
    let id = "X-Request-Id: same-1\r\n";
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let cases = [
        (
            404,
            format!("GET /nowhere HTTP/1.1\r\nHost: a\r\n{id}{UPGRADE}\r\n"),
        ),
        (
            400,
            format!("GET /chat/1 HTTP/1.1\r\nHost: a\r\n{id}{ws}Sec-WebSocket-Version: 13\r\n\r\n"),
        ),
        (
            426,
            format!(
                "GET /chat/1 HTTP/1.1\r\nHost: a\r\n{id}{ws}Sec-WebSocket-Version: 7\r\n{key}\r\n"
            ),
        ),
        (
            502,
            format!("GET /dead/1 HTTP/1.1\r\nHost: a\r\n{id}{UPGRADE}\r\n"),
        ),
        (
            403,
            format!("GET /s/403 HTTP/1.1\r\nHost: a\r\n{id}{UPGRADE}\r\n"),
        ),
        (
            101,
            format!("GET /chat/1 HTTP/1.1\r\nHost: a\r\n{id}{UPGRADE}\r\n"),
        ),
    ];
    for (status, req) in cases {
        let (first, later) = first_and_later(&gw, &req).await;
        assert_eq!(first.status, status, "{req}: {first:?}");
        let comparable = |a: &Answer| {
            let mut headers: Vec<_> = a
                .headers
                .iter()
                .filter(|(n, _)| n != "date" && n != "connection")
                .cloned()
                .collect();
            headers.sort();
            (a.status, headers, a.body.clone())
        };
        assert_eq!(comparable(&first), comparable(&later), "{req}");
    }
}

/// Sends `request` as the first request of one connection, and after a plain request
/// (answered 200 by the `/x` route) on another; returns both answers.
async fn first_and_later(gw: &Gateway, request: &str) -> (Answer, Answer) {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let first = read_response(&mut s, &mut Vec::new()).await;
    let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let plain = read_response(&mut s, &mut buf).await;
    assert_eq!(plain.status, 200, "{plain:?}");
    s.write_all(request.as_bytes()).await.unwrap();
    let later = read_response(&mut s, &mut buf).await;
    (first, later)
}

/// One HTTP/1.1 response as it came off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-cased names, values as sent.
    headers: Vec<(String, String)>,
    /// Without chunk framing.
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `s` (bytes already read in `buf` first; what follows the
/// response stays there): its head, then a body framed by `Content-Length` or chunked,
/// none for 101, 204 and 304, else to the end of the connection.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    use tokio::io::AsyncReadExt;
    async fn more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
    within("a whole response", async {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            assert!(more(s, buf).await, "closed before a whole head: {buf:?}");
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = status_of(lines.next().unwrap());
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if matches!(status, 101 | 204 | 304) {
        } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(more(s, buf).await, "closed inside a chunk size");
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)
                        .unwrap();
                while buf.len() < line_end + 2 + size + 2 {
                    assert!(more(s, buf).await, "closed inside a chunk");
                }
                body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = find("content-length") {
            let len: usize = len.parse().unwrap();
            while buf.len() < len {
                assert!(more(s, buf).await, "closed inside the body");
            }
            body = buf.drain(..len).collect();
        } else {
            while more(s, buf).await {}
            body = std::mem::take(buf);
        }
        Answer {
            status,
            headers,
            body,
        }
    })
    .await
}

/// A backend that answers the upgrade with a non-101: its status and body reach the client.
#[tokio::test]
async fn backend_refusing_the_upgrade_passes_its_status_and_body() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(&[echo.addr]).await;
    let resp = raw_upgrade(&gw, "/status/403").await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(resp.contains("status 403 from e"), "{resp}");
}

/// A backend on loopback that reads one request head and answers with `reply(head)`, then
/// holds the connection open until the gateway closes it.
async fn scripted_backend(reply: fn(&str) -> Vec<u8>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_http_head(&mut s).await else {
                    return;
                };
                let _ = s.write_all(&reply(&head)).await;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn accept_key(request_head: &str) -> String {
    let key = request_head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim())
        })
        .expect("request carries Sec-WebSocket-Key");
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// A backend answering the upgrade with something that is not HTTP/1.1: 502 naming it.
#[tokio::test]
async fn backend_answering_garbage_to_the_upgrade_gives_502() {
    let addr = scripted_backend(|_| b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()).await;
    let gw = gateway_to(&[addr]).await;
    let resp = raw_upgrade(&gw, "/x").await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(resp.contains("invalid response head"), "{resp}");
}

/// A response head that never ends within 16 KiB: 502, not an unbounded buffer.
#[tokio::test]
async fn endless_upgrade_response_head_gives_502() {
    let addr = scripted_backend(|_| {
        let mut r = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
        for i in 0..2000 {
            r.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(8)).as_bytes());
        }
        r
    })
    .await;
    let gw = gateway_to(&[addr]).await;
    let resp = raw_upgrade(&gw, "/x").await;
    assert_eq!(status_of(&resp), 502, "{resp}");
    assert!(
        resp.contains("headers") || resp.contains("exceeds"),
        "{resp}"
    );
}

/// A backend that accepts the connection and never answers: 504 after `timeouts.handshake`.
#[tokio::test]
async fn silent_backend_gives_504_after_the_handshake_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut s = spec("/{everything}", "/{everything}", &[addr]);
    s.timeouts = Some(wsgate::api::RouteTimeouts {
        handshake: Some("300ms".into()),
        ..Default::default()
    });
    let gw = Gateway::start(&[route("r", 0, &s)]).await;
    let resp = raw_upgrade(&gw, "/x").await;
    assert_eq!(status_of(&resp), 504, "{resp}");
    assert!(resp.contains("300"), "the answer names the limit: {resp}");
    drop(listener);
}

/// `100 Continue` before the 101 is skipped; the 101 and the frame behind it still arrive.
#[tokio::test]
async fn informational_answer_before_101_is_skipped() {
    let addr = scripted_backend(|head| {
        let mut r = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(head)
        )
        .into_bytes();
        r.extend_from_slice(&[0x81, 0x02]);
        r.extend_from_slice(b"hi");
        r
    })
    .await;
    let gw = gateway_to(&[addr]).await;
    let mut ws = connect(&gw.ws("/x")).await;
    let msg = within("first message", ws.next()).await;
    assert_eq!(msg.unwrap().unwrap().into_text().unwrap(), "hi");
}

/// A refusal with a chunked body reaches the client whole, framed for the client.
#[tokio::test]
async fn refused_upgrade_with_chunked_body_reaches_the_client_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = scripted_backend(|_| {
        b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\nWWW-Authenticate: Bearer\r\n\r\n6\r\nlogin \r\n5\r\nfirst\r\n0\r\n\r\n".to_vec()
    })
    .await;
    let gw = gateway_to(&[addr]).await;
    let resp = within("refusal", async {
        let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
        s.write_all(format!("GET /x HTTP/1.1\r\nHost: a\r\n{UPGRADE}\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&buf).contains("0\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await;
    assert_eq!(status_of(&resp), 401, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{resp}"
    );
    let body: String = resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .split("\r\n")
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, c)| c)
        .collect();
    assert_eq!(body, "login first", "{resp}");
}

/// Plain HTTP on a ws route: path rewritten, method/body/headers forwarded.
#[tokio::test]
async fn plain_http_is_proxied_with_the_rewritten_path() {
    let echo = Echo::start("e").await;
    let gw = Gateway::start(&[route(
        "r",
        0,
        &spec("/hub/{rest}", "/signalr/{rest}", &[echo.addr]),
    )])
    .await;
    let resp = raw_request(
        gw.server.listen_addr,
        b"POST /hub/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nCookie: c=1\r\n\r\n{}",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let body = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/signalr/negotiate");
    assert_eq!(v["query"], "negotiateVersion=1");
    assert_eq!(v["body"], "{}");
    assert_eq!(v["headers"]["cookie"], "c=1");
}

/// Server-Sent Events flow event by event: the first event arrives while the backend is
/// still sending the rest.
#[tokio::test]
async fn server_sent_events_stream_through_one_by_one() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(&[echo.addr]).await;
    let stream = TcpStream::connect(gw.server.listen_addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/hub/sse?events=3&interval_ms=300")
        .header("host", "a")
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = within("sse head", sender.send_request(req)).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = within("first event", body.frame()).await.unwrap().unwrap();
    let first = first.into_data().unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("id: 1") && !text.contains("id: 2"), "{text}");
    // The stream is still open: the remaining events have not all been sent yet.
    assert!(!body.is_end_stream());
    let mut rest = String::new();
    while let Some(f) = within("more events", body.frame()).await {
        if let Ok(d) = f.unwrap().into_data() {
            rest.push_str(&String::from_utf8_lossy(&d));
        }
    }
    assert!(rest.contains("id: 3"), "{rest}");
}

/// A long poll is held open by the backend and answered through the gateway.
#[tokio::test]
async fn long_poll_is_held_open_and_answered() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(&[echo.addr]).await;
    let started = std::time::Instant::now();
    let (status, body) = http_get(&gw.http("/hub/poll?hold_ms=700")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"held_ms\":700") || body.contains("\"held_ms\": 700"),
        "{body}"
    );
    assert!(started.elapsed() >= Duration::from_millis(700));
}

/// Readiness, health and metrics on the admin listener.
#[tokio::test]
async fn admin_endpoints_answer() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(&[echo.addr]).await;
    let admin = format!("http://{}", gw.server.admin_addr);
    assert_eq!(http_get(&format!("{admin}/healthz")).await.0, 200);
    assert_eq!(http_get(&format!("{admin}/readyz")).await.0, 200);
    let (status, text) = http_get(&format!("{admin}/metrics")).await;
    assert_eq!(status, 200);
    assert!(text.contains("wsgate_route_table_generation"), "{text}");
}
