//! Request-target normalization through the real gateway (docs/security.md): every path
//! trick of issue 20, sent raw on a real socket as a WebSocket upgrade (the direct path),
//! as plain HTTP (hyper's path) and as an upgrade on a kept-alive connection (hyper's path
//! again), against a route `/api/{rest}` → `/public/{rest}` whose backend records the
//! request target it received.

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A backend that records each request target it receives and answers `200` with that
/// target as the body (to an upgrade too: wsgate passes the refusal on).
struct RecordingBackend {
    addr: SocketAddr,
    targets: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingBackend {
    async fn start() -> RecordingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, targets) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let Some(head) = read_http_head(&mut s).await else {
                        return;
                    };
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    let _ = tx.send(target.clone());
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{target}",
                        target.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RecordingBackend {
            addr,
            targets,
            task,
        }
    }

    /// The target of the one request the backend got since the last call.
    async fn received(&mut self) -> String {
        within("backend request", self.targets.recv())
            .await
            .unwrap()
    }

    /// The backend got nothing since the last call.
    fn got_nothing(&mut self) {
        assert_eq!(self.targets.try_recv().ok(), None);
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The JSON body of one of wsgate's own answers.
fn json_body(resp: &str) -> serde_json::Value {
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not wsgate's JSON ({e}): {resp}"))
}

/// How a request is sent.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A WebSocket upgrade as a connection's first request: connection.rs's direct path.
    DirectUpgrade,
    /// Plain HTTP: hyper's service path.
    PlainHttp,
    /// A WebSocket upgrade after a plain request on a kept-alive connection: hyper's path.
    KeptAliveUpgrade,
}

const ALL: [Via; 3] = [Via::DirectUpgrade, Via::PlainHttp, Via::KeptAliveUpgrade];

/// Sends a request for `target` (raw bytes, as a client may send them) and returns the
/// answer to it as text.
async fn send(gw: &Gateway, via: Via, target: &[u8]) -> String {
    let head = |upgrade: bool| {
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n");
        if upgrade {
            req.extend_from_slice(RAW_UPGRADE.as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req
    };
    match via {
        Via::DirectUpgrade => raw_request(gw.server.listen_addr, &head(true)).await,
        Via::PlainHttp => raw_request(gw.server.listen_addr, &head(false)).await,
        Via::KeptAliveUpgrade => {
            within("kept-alive upgrade", async {
                // The first request has no route, so it reaches no backend; its 404 keeps the
                // connection open.
                let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
                s.write_all(b"GET /nothing-here HTTP/1.1\r\nHost: a\r\n\r\n")
                    .await
                    .unwrap();
                let first = read_response(&mut s).await;
                assert_eq!(status_of(&first), 404, "{first}");
                s.write_all(&head(true)).await.unwrap();
                read_response(&mut s).await
            })
            .await
        }
    }
}

async fn start() -> (Gateway, RecordingBackend) {
    let backend = RecordingBackend::start().await;
    let gw = Gateway::start(&[route(
        "api",
        0,
        &spec("/api/{rest}", "/public/{rest}", &[backend.addr]),
    )])
    .await;
    (gw, backend)
}

/// Tricks that normalize to a path under `/api/`: the backend receives exactly the
/// normalized path under `/public/`, never a dot segment or an escape of one; the query is
/// passed on untouched.
#[tokio::test]
async fn tricks_inside_the_route_reach_the_backend_normalized() {
    let (gw, mut backend) = start().await;
    for (sent, received) in [
        ("/api/a/../b", "/public/b"),
        ("/api/a/%2e%2e/b", "/public/b"),
        ("/api/a/%2E%2e/b", "/public/b"),
        ("/api/a/.%2E/b", "/public/b"),
        ("/api/a/./b/%2e/c", "/public/a/b/c"),
        ("/api//a//b", "/public/a/b"),
        ("//api/a", "/public/a"),
        ("/api/%61%62%7e", "/public/ab~"),
        ("/api/a%3fb%c3%a9", "/public/a%3Fb%C3%A9"),
        ("/api/a/b/..", "/public/a/"),
        (
            "/api/a/../b?x=/../%2F&y=%2e%2e",
            "/public/b?x=/../%2F&y=%2e%2e",
        ),
    ] {
        for via in ALL {
            let resp = send(&gw, via, sent.as_bytes()).await;
            assert_eq!(status_of(&resp), 200, "{via:?} {sent}: {resp}");
            assert_eq!(backend.received().await, received, "{via:?} {sent}");
            assert!(resp.ends_with(received), "{via:?} {sent}: {resp}");
        }
    }
}

/// Tricks that climb out of `/api/`: after normalization they name another path, which no
/// route serves (404), so `/public/..` is never asked for.
#[tokio::test]
async fn tricks_out_of_the_route_match_no_route() {
    let (gw, mut backend) = start().await;
    for sent in ["/api/../admin", "/api/%2e%2e/admin", "/api/.%2E/admin"] {
        for via in ALL {
            let resp = send(&gw, via, sent.as_bytes()).await;
            assert_eq!(status_of(&resp), 404, "{via:?} {sent}: {resp}");
            assert!(
                json_body(&resp)["message"]
                    .as_str()
                    .unwrap()
                    .contains("path `/admin`"),
                "{resp}"
            );
        }
    }
    backend.got_nothing();
}

/// Tricks that are refused with wsgate's own 400 and JSON body naming the cause, before
/// any route is looked up or backend dialled, each counted as a `path` refusal.
#[tokio::test]
async fn refused_tricks_get_400_naming_the_cause_and_are_counted() {
    let (gw, mut backend) = start().await;
    let cases: [(&[u8], &str); 12] = [
        (b"/api/..%2fadmin", "encoded slash"),
        (b"/api/..%2Fadmin", "encoded slash"),
        (b"/api/a%2Fb", "encoded slash"),
        (b"/api/a%5Cb", "encoded backslash"),
        (b"/api/a%5cb", "encoded backslash"),
        (b"/api/a\\b", "contains a backslash"),
        (b"/api/a%00b", "control character"),
        (b"/api/a%0D%0Ab", "control character"),
        (b"/..", "climbs above the root"),
        (b"/api/../../etc", "climbs above the root"),
        (b"/api/a%zz", "not followed by two hex digits"),
        (b"/api/..;/admin", "dot segment with parameters"),
    ];
    let mut refused = 0;
    for (sent, cause) in cases {
        for via in ALL {
            let shown = String::from_utf8_lossy(sent);
            let resp = send(&gw, via, sent).await;
            assert_eq!(status_of(&resp), 400, "{via:?} {shown}: {resp}");
            let body = json_body(&resp);
            assert_eq!(body["error"], "Bad Request", "{resp}");
            let message = body["message"].as_str().unwrap();
            assert!(
                message.starts_with("request path refused: ") && message.contains(cause),
                "{via:?} {shown}: {message}"
            );
            assert!(
                resp.to_ascii_lowercase().contains("x-request-id: "),
                "{resp}"
            );
            refused += 1;
        }
    }
    backend.got_nothing();
    let metrics = gw.metrics.encode();
    let line = format!(r#"wsgate_refusals_total{{route="",reason="path"}} {refused}"#);
    assert!(metrics.contains(&line), "want {line} in\n{metrics}");
}

/// A raw control character or a byte that is not UTF-8 never gets through: the head
/// parser refuses a control character in the request line (400, a malformed head), and a
/// path that is not ASCII is a `path` refusal.
#[tokio::test]
async fn raw_control_characters_and_non_ascii_bytes_get_400() {
    let (gw, mut backend) = start().await;
    for (sent, cause) in [
        (b"/api/a\x01b".as_slice(), "malformed request head"),
        (b"/api/a\x7fb".as_slice(), "malformed request head"),
        (b"/api/a\x00b".as_slice(), "malformed request head"),
        (b"/api/caf\xc3\xa9".as_slice(), "byte outside ASCII"),
        (b"/api/caf\xff".as_slice(), "malformed request head"),
    ] {
        for via in [Via::DirectUpgrade, Via::PlainHttp] {
            let resp = send(&gw, via, sent).await;
            assert_eq!(status_of(&resp), 400, "{via:?} {sent:?}: {resp}");
            let message = json_body(&resp)["message"].as_str().unwrap().to_string();
            assert!(message.contains(cause), "{via:?} {sent:?}: {message}");
        }
    }
    backend.got_nothing();
}
