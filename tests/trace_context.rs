//! W3C trace context through the real gateway (issue 21, item 2): on the WebSocket upgrade
//! (wsgate writes the upgrade request itself) and on proxied HTTP (hyper's path), a backend
//! that records the request head it got sees a `traceparent` that continues the client's
//! trace with wsgate's span as the parent, or a new trace when the client sent none or a
//! malformed one (whose `tracestate` is then dropped). With `--otlp-endpoint`, the real
//! binary exports a span per connection to an OTLP receiver this test runs, and that span is
//! the one the backend was told of.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const GIVEN_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const GIVEN_PARENT: &str = "00f067aa0ba902b7";

/// How the request reaches the backend.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// A WebSocket upgrade: wsgate writes the upgrade request (`proxy::upgrade`).
    Upgrade,
    /// Plain HTTP through hyper (`proxy::http`).
    Http,
}

/// A backend that records each request head it receives; it answers an upgrade with 101
/// (then waits for the connection to end) and anything else with 200.
struct RecordingBackend {
    addr: SocketAddr,
    heads: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingBackend {
    async fn start() -> RecordingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, heads) = mpsc::unbounded_channel();
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
                    let _ = tx.send(head.clone());
                    match header(&head, "sec-websocket-key") {
                        Some(key) => {
                            let accept =
                                tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                                    key.as_bytes(),
                                );
                            let answer = format!(
                                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                            );
                            let _ = s.write_all(answer.as_bytes()).await;
                            // Until wsgate ends the connection.
                            let mut buf = [0u8; 1024];
                            while let Ok(n) = tokio::time::timeout(DEADLINE, s.read(&mut buf)).await
                            {
                                if matches!(n, Ok(0) | Err(_)) {
                                    break;
                                }
                            }
                        }
                        None => {
                            let _ = s
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                                )
                                .await;
                        }
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        RecordingBackend { addr, heads, task }
    }

    /// The head of the next request the backend got.
    async fn received(&mut self) -> String {
        within("a request at the backend", self.heads.recv())
            .await
            .unwrap()
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of header `name` in `head` (names compared without case); panics if the head
/// has it twice.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    let mut found = head.lines().skip(1).filter_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    });
    let first = found.next();
    assert_eq!(found.next(), None, "{name} twice in\n{head}");
    first
}

/// A backend's `traceparent`, checked for form: version 00, lowercase hex, no zero ids.
#[derive(Debug)]
struct Seen {
    trace: String,
    parent: String,
    flags: String,
}

fn traceparent_of(head: &str) -> Seen {
    let v = header(head, "traceparent").unwrap_or_else(|| panic!("no traceparent in\n{head}"));
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(parts[0], "00", "{v}");
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && s.bytes().any(|b| b != b'0')
    };
    assert!(hex(parts[1], 32) && hex(parts[2], 16), "{v}");
    Seen {
        trace: parts[1].into(),
        parent: parts[2].into(),
        flags: parts[3].into(),
    }
}

/// Sends a request with the `extra` header lines through the gateway at `gw` and returns
/// the head the backend received. An upgrade is answered 101 and then closed by the client.
async fn through(gw: SocketAddr, backend: &mut RecordingBackend, via: Via, extra: &str) -> String {
    let upgrade = match via {
        Via::Upgrade => RAW_UPGRADE,
        Via::Http => "",
    };
    let request = format!("GET /t/x HTTP/1.1\r\nHost: a\r\n{upgrade}{extra}\r\n");
    let answer = raw_request_head(gw, request.as_bytes()).await;
    let want = match via {
        Via::Upgrade => 101,
        Via::Http => 200,
    };
    assert_eq!(status_of(&answer), want, "{answer}");
    backend.received().await
}

/// Writes `request` and reads the answer's head; the connection is then closed.
async fn raw_request_head(gw: SocketAddr, request: &[u8]) -> String {
    within("an answer from the gateway", async {
        let mut s = TcpStream::connect(gw).await.unwrap();
        s.write_all(request).await.unwrap();
        read_http_head(&mut s).await.unwrap_or_default()
    })
    .await
}

async fn start() -> (Gateway, RecordingBackend) {
    let backend = RecordingBackend::start().await;
    let gw = Gateway::start(&[route("t", 0, &spec("/t/{x}", "/{x}", &[backend.addr]))]).await;
    (gw, backend)
}

/// A valid `traceparent` keeps its trace id and sampled flag; the parent id the backend
/// sees is wsgate's own span, and the `tracestate` goes along unchanged.
#[tokio::test]
async fn a_given_traceparent_keeps_its_trace_with_wsgate_as_the_parent() {
    let (gw, mut backend) = start().await;
    for via in [Via::Upgrade, Via::Http] {
        let head = through(
            gw.server.listen_addr,
            &mut backend,
            via,
            &format!(
                "traceparent: 00-{GIVEN_TRACE}-{GIVEN_PARENT}-01\r\ntracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE\r\n"
            ),
        )
        .await;
        let seen = traceparent_of(&head);
        assert_eq!(seen.trace, GIVEN_TRACE, "{via:?}: {head}");
        assert_ne!(
            seen.parent, GIVEN_PARENT,
            "{via:?}: a new parent id: {head}"
        );
        assert_eq!(seen.flags, "01", "{via:?}");
        assert_eq!(
            header(&head, "tracestate"),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            "{via:?}"
        );
    }
}

/// Without a `traceparent`, each request starts its own trace (sampled).
#[tokio::test]
async fn an_absent_traceparent_starts_a_new_trace() {
    let (gw, mut backend) = start().await;
    for via in [Via::Upgrade, Via::Http] {
        let first = traceparent_of(&through(gw.server.listen_addr, &mut backend, via, "").await);
        let second = traceparent_of(&through(gw.server.listen_addr, &mut backend, via, "").await);
        assert_ne!(first.trace, second.trace, "{via:?}");
        assert_eq!(first.flags, "01", "{via:?}");
    }
}

/// A malformed `traceparent` is not forwarded: the backend gets a new trace, and the
/// `tracestate` that came with it is dropped.
#[tokio::test]
async fn a_malformed_traceparent_is_replaced_and_its_tracestate_dropped() {
    let (gw, mut backend) = start().await;
    for via in [Via::Upgrade, Via::Http] {
        for bad in [
            format!("00-{}-{GIVEN_PARENT}-01", GIVEN_TRACE.to_uppercase()),
            format!("00-{}-{GIVEN_PARENT}-01", "0".repeat(32)),
            format!("00-{GIVEN_TRACE}-{GIVEN_PARENT}-1"),
            "garbage".to_string(),
        ] {
            let head = through(
                gw.server.listen_addr,
                &mut backend,
                via,
                &format!("traceparent: {bad}\r\ntracestate: rojo=1\r\n"),
            )
            .await;
            let seen = traceparent_of(&head);
            assert_ne!(seen.trace, GIVEN_TRACE, "{via:?} {bad}");
            assert_eq!(header(&head, "tracestate"), None, "{via:?} {bad}: {head}");
        }
    }
}

/// An OTLP/HTTP receiver: takes `POST /v1/traces`, decodes the protobuf and keeps the spans.
struct Receiver {
    addr: SocketAddr,
    spans: mpsc::UnboundedReceiver<Span>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, spans) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (head, body) = read_request(&mut s).await;
                    assert!(head.starts_with("POST /v1/traces "), "{head}");
                    assert_eq!(
                        header(&head, "content-type"),
                        Some("application/x-protobuf")
                    );
                    let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
                    for rs in request.resource_spans {
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                let _ = tx.send(span);
                            }
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Receiver { addr, spans, task }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request's head (text) and its `content-length` body.
async fn read_request(s: &mut TcpStream) -> (String, Vec<u8>) {
    within("a request at the receiver", async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended inside its head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no content-length in {head}"));
        let mut body = buf[end..].to_vec();
        while body.len() < len {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended inside its body");
            body.extend_from_slice(&chunk[..n]);
        }
        (head, body)
    })
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, Value> {
    span.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

/// `wsgate run --otlp-endpoint`: a WebSocket connection and an HTTP request each become a
/// span at the receiver; its trace id and span id are the ones the backend got in
/// `traceparent`, its parent the client's span (or none for a trace wsgate started), with
/// the route, status and bytes as attributes. Spans still queued go out on SIGTERM.
#[tokio::test]
async fn otlp_spans_are_the_spans_the_backend_was_told_of() {
    let mut backend = RecordingBackend::start().await;
    let mut receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes_yaml(&[("traced", "/t/{x}", "/{x}", backend.addr)]),
    )
    .unwrap();
    let endpoint = format!("http://{}", receiver.addr);
    let mut process = Process::start(
        &[
            "run",
            "--routes",
            "routes.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            &endpoint,
        ],
        dir.path(),
    )
    .await;
    let gw = process.listening.listen;

    // A WebSocket in a given trace: upgraded, then the client leaves and the relay ends.
    let ws_head = through(
        gw,
        &mut backend,
        Via::Upgrade,
        &format!("traceparent: 00-{GIVEN_TRACE}-{GIVEN_PARENT}-01\r\n"),
    )
    .await;
    let ws_seen = traceparent_of(&ws_head);
    // An HTTP request that starts its trace.
    let http_seen = traceparent_of(&through(gw, &mut backend, Via::Http, "").await);

    // SIGTERM: the process drains, exits, and exports what is queued.
    // SAFETY: a plain kill(2) of the child this test started.
    assert_eq!(unsafe { libc::kill(process.pid(), libc::SIGTERM) }, 0);
    let status = process.exit_status().await;
    assert!(status.success(), "{status:?}\n{}", process.log());

    let mut spans = Vec::new();
    while spans.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), receiver.spans.recv()).await {
            Ok(Some(span)) => spans.push(span),
            _ => panic!("{} span(s) at the receiver\n{}", spans.len(), process.log()),
        }
    }
    let by_trace = |trace: &str| {
        spans
            .iter()
            .find(|s| hex(&s.trace_id) == trace)
            .unwrap_or_else(|| panic!("no span of trace {trace} in {spans:?}"))
    };

    let ws = by_trace(GIVEN_TRACE);
    assert_eq!(ws.name, "websocket");
    assert_eq!(
        hex(&ws.span_id),
        ws_seen.parent,
        "the backend's parent is the span"
    );
    assert_eq!(
        hex(&ws.parent_span_id),
        GIVEN_PARENT,
        "the client's span is its parent"
    );
    let a = attributes(ws);
    assert!(
        matches!(a.get("wsgate.route"), Some(Value::StringValue(r)) if r.ends_with("(traced)")),
        "{a:?}"
    );
    assert_eq!(
        a.get("http.response.status_code"),
        Some(&Value::IntValue(101))
    );
    assert!(
        matches!(a.get("wsgate.bytes_up"), Some(Value::IntValue(_))),
        "{a:?}"
    );
    assert!(ws.end_time_unix_nano >= ws.start_time_unix_nano);

    let http = by_trace(&http_seen.trace);
    assert_eq!(http.name, "http");
    assert_eq!(hex(&http.span_id), http_seen.parent);
    assert!(http.parent_span_id.is_empty(), "wsgate's span is the root");
    let a = attributes(http);
    assert_eq!(
        a.get("http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert!(a.contains_key("wsgate.route"), "{a:?}");
}

/// With the collector unreachable, connections are served as ever and the process still
/// exits promptly on SIGTERM: export failures drop spans, they never hold anything up.
#[tokio::test]
async fn an_unreachable_collector_holds_nothing_up() {
    let mut backend = RecordingBackend::start().await;
    // A port nobody listens on: bound, then closed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes_yaml(&[("traced", "/t/{x}", "/{x}", backend.addr)]),
    )
    .unwrap();
    let endpoint = format!("http://{closed}");
    let mut process = Process::start(
        &[
            "run",
            "--routes",
            "routes.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            &endpoint,
        ],
        dir.path(),
    )
    .await;
    let gw = process.listening.listen;
    for _ in 0..20 {
        for via in [Via::Upgrade, Via::Http] {
            traceparent_of(&through(gw, &mut backend, via, "").await);
        }
    }
    let asked = std::time::Instant::now();
    // SAFETY: a plain kill(2) of the child this test started.
    assert_eq!(unsafe { libc::kill(process.pid(), libc::SIGTERM) }, 0);
    let status = process.exit_status().await;
    assert!(status.success(), "{status:?}\n{}", process.log());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "exit took {:?}\n{}",
        asked.elapsed(),
        process.log()
    );
}
