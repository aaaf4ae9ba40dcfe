//! WebSocket traffic through the gateway: every kind of message passes unchanged, headers
//! are forwarded, and when one side dies the other gets a proper Close.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::relay_checks::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn gateway_to_echo() -> (Gateway, Echo) {
    let echo = Echo::start("echo-1").await;
    let gw = Gateway::start(&[route(
        "chat",
        0,
        &spec("/chat/{room}", "/rooms/{room}", &[echo.addr]),
    )])
    .await;
    (gw, echo)
}

/// Text, binary, empty and 16 MiB messages come back byte for byte.
#[tokio::test]
async fn messages_of_every_kind_and_size_pass_unchanged() {
    let (gw, _echo) = gateway_to_echo().await;
    let mut ws = connect(&gw.ws("/chat/lobby")).await;
    every_kind_and_size_round_trips(&mut ws).await;
    within("close", ws.close(None)).await.unwrap();
}

/// A fragmented message with a ping between its fragments arrives whole, and the ping is
/// answered by the backend through the gateway.
#[tokio::test]
async fn fragmented_message_and_interleaved_ping_pass() {
    let (gw, _echo) = gateway_to_echo().await;
    let mut ws = connect(&gw.ws("/chat/frag")).await;
    fragmented_message_with_ping_round_trips(&mut ws).await;
}

/// The subprotocol the backend picks reaches the client.
#[tokio::test]
async fn subprotocol_negotiation_passes_through() {
    let (gw, _echo) = gateway_to_echo().await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        gw.ws("/chat/p").as_str(),
    )
    .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "signalr.v2, chat.v1".parse().unwrap(),
    );
    let (_ws, resp) = within("connect", tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "signalr.v2");
    assert_eq!(resp.headers()["x-echo-name"], "echo-1");
}

/// Cookies, Authorization, Origin, query and custom headers reach the backend unchanged;
/// X-Forwarded-* and X-Request-Id are added, the path is rewritten.
#[tokio::test]
async fn handshake_headers_are_forwarded() {
    let (gw, echo) = gateway_to_echo().await;
    let mut ws = connect_with(
        &gw.ws("/chat/room42?hello=1&token=abc"),
        &[
            ("cookie", "session=s1; theme=dark"),
            ("authorization", "Bearer t0k3n"),
            ("origin", "https://app.example.com"),
            ("x-custom", "kept"),
            ("x-request-id", "req-from-client"),
        ],
    )
    .await;
    let hello = match next_msg(&mut ws).await {
        Message::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap(),
        other => panic!("expected hello JSON, got {other:?}"),
    };
    let h = &hello["headers"];
    assert_eq!(hello["path"], "/rooms/room42");
    assert!(
        hello["query"].as_str().unwrap().contains("token=abc"),
        "{hello}"
    );
    assert_eq!(h["cookie"], "session=s1; theme=dark");
    assert_eq!(h["authorization"], "Bearer t0k3n");
    assert_eq!(h["origin"], "https://app.example.com");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-request-id"], "req-from-client");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.server.listen_addr.to_string());
    assert_eq!(h["host"], echo.addr.to_string());
}

/// A backend that accepts one connection, reads its request head and writes whatever `answer`
/// makes of it, then holds the socket open until the other side is done.
async fn scripted_backend(
    answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let request = read_http_head(&mut s).await.expect("the upgrade request");
        s.write_all(&answer(&request)).await.unwrap();
        let _ = s.read(&mut [0u8; 64]).await;
    });
    addr
}

/// A message the backend sends in the same TCP segment as its 101 is not lost.
#[tokio::test]
async fn bytes_coalesced_with_101_are_relayed() {
    // A backend that writes the 101 and a text frame in one write.
    let addr = scripted_backend(|request| {
        let key = request
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-key: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Key: "))
            })
            .unwrap()
            .trim()
            .to_string();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(&[0x81, 0x05]);
        out.extend_from_slice(b"early");
        out
    })
    .await;
    let gw = Gateway::start(&[route(
        "r",
        0,
        &spec("/{everything}", "/{everything}", &[addr]),
    )])
    .await;
    let mut ws = connect(&gw.ws("/x")).await;
    assert_eq!(next_msg(&mut ws).await, Message::text("early"));
}

/// The client's 101 carries the backend's end-to-end headers and none of its hop-by-hop ones
/// (those RFC 9110 names and those its `Connection` lists), with one `Connection: upgrade`
/// and one `Upgrade: websocket` of wsgate's own.
#[tokio::test]
async fn backend_101_passes_end_to_end_headers_and_stops_hop_by_hop_ones() {
    let addr = scripted_backend(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Authenticate: Basic\r\nX-Backend: b1\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .into()
    })
    .await;
    let gw = Gateway::start(&[route(
        "r",
        0,
        &spec("/{everything}", "/{everything}", &[addr]),
    )])
    .await;
    let mut client = TcpStream::connect(gw.server.listen_addr).await.unwrap();
    client
        .write_all(
            b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = within("the 101", read_http_head(&mut client))
        .await
        .expect("a 101 before the connection closed")
        .to_ascii_lowercase();
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("http/1.1 101 switching protocols"));
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let named = |name: &str| {
        headers
            .iter()
            .filter(|l| l.starts_with(&format!("{name}:")))
            .count()
    };
    assert!(headers.contains(&"x-backend: b1"), "{headers:?}");
    assert!(
        headers.contains(&"sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{headers:?}"
    );
    assert!(headers.contains(&"connection: upgrade"), "{headers:?}");
    assert!(headers.contains(&"upgrade: websocket"), "{headers:?}");
    for (name, times) in [
        ("connection", 1),
        ("upgrade", 1),
        ("x-hop", 0),
        ("keep-alive", 0),
        ("proxy-authenticate", 0),
    ] {
        assert_eq!(named(name), times, "{name} in {headers:?}");
    }
}

/// A backend that dies without a Close frame: the client gets Close 1011, then the end.
#[tokio::test]
async fn backend_dying_mid_stream_sends_close_1011_to_client() {
    let (gw, _echo) = gateway_to_echo().await;
    let mut ws = connect(&gw.ws("/chat/x?drop=1")).await;
    within("send", ws.send(Message::text("one"))).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("one"));
    match next_msg(&mut ws).await {
        Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::Error),
        other => panic!("expected Close 1011, got {other:?}"),
    }
}

/// A client that vanishes without a Close: the backend gets Close 1001 (going away).
#[tokio::test]
async fn client_vanishing_sends_close_1001_to_backend() {
    let (addr, seen_rx) = backend_dying_on_cue().await;
    let gw = Gateway::start(&[route(
        "r",
        0,
        &spec("/{everything}", "/{everything}", &[addr]),
    )])
    .await;
    let ws = connect(&gw.ws("/bye")).await;
    // Drop the TCP connection without a Close frame.
    let tcp = ws.into_inner();
    drop(tcp);
    let seen = within("backend sees close", seen_rx).await.unwrap();
    assert_eq!(seen, Some(CloseCode::Away));
}

/// A close initiated by the client completes end to end with the client's code.
#[tokio::test]
async fn client_close_code_reaches_backend_and_echo_returns() {
    let (gw, _echo) = gateway_to_echo().await;
    let mut ws = connect(&gw.ws("/chat/c")).await;
    within(
        "close",
        ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Library(4001),
            reason: "bye".into(),
        })),
    )
    .await
    .unwrap();
    match next_msg(&mut ws).await {
        Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::Library(4001)),
        other => panic!("expected the echoed close, got {other:?}"),
    }
}

/// Frames a client sends right behind its request (before reading the 101) are relayed.
#[tokio::test]
async fn frames_pipelined_behind_the_request_are_relayed() {
    let (gw, _echo) = gateway_to_echo().await;
    let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
    let mut req = b"GET /chat/pipe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    // Masked text frame "hi".
    let mask = [1u8, 2, 3, 4];
    req.extend_from_slice(&[0x81, 0x82]);
    req.extend_from_slice(&mask);
    req.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    within("echo of pipelined frame", async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "connection closed early: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == [0x81, 0x02, b'h', b'i']) {
                break;
            }
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
}

/// Metrics count the connection and its bytes once it has ended.
#[tokio::test]
async fn metrics_count_connections_and_bytes() {
    let (gw, _echo) = gateway_to_echo().await;
    let mut ws = connect(&gw.ws("/chat/m")).await;
    within("send", ws.send(Message::text("12345")))
        .await
        .unwrap();
    next_msg(&mut ws).await;
    within("close", ws.close(None)).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    let metrics = gw.metrics.clone();
    eventually("connection metrics", || {
        let text = metrics.encode();
        (text.contains("wsgate_connections_total{route=\"chat\"} 1")
            && text.contains("wsgate_connections_active{route=\"chat\"} 0")
            && text
                .contains("wsgate_messages_total{route=\"chat\",direction=\"ClientToUpstream\"} 1"))
        .then_some(())
    })
    .await;
}

/// `timeouts.idle`: a socket silent both ways gets Close 1001; one that keeps talking
/// past the limit stays open.
#[tokio::test]
async fn idle_timeout_closes_only_quiet_sockets() {
    let echo = Echo::start("e").await;
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.timeouts = Some(wsgate::api::RouteTimeouts {
        idle: Some("400ms".into()),
        ..Default::default()
    });
    let gw = Gateway::start(&[route("idle", 0, &s)]).await;
    let mut quiet = connect(&gw.ws("/quiet")).await;
    let mut busy = connect(&gw.ws("/busy")).await;
    idle_limit_closes_only_the_quiet_one(&mut quiet, &mut busy).await;
}

/// A masked text frame as a client sends it (payload under 126 bytes).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// An upgrade that follows a plain request on the same kept-alive connection is served
/// too (the first request went to hyper; the upgrade is handed over from there).
#[tokio::test]
async fn upgrade_after_a_plain_request_on_the_same_connection_is_relayed() {
    let (gw, _echo) = gateway_to_echo().await;
    let mut s = TcpStream::connect(gw.server.listen_addr).await.unwrap();
    s.write_all(b"GET /chat/lobby HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"\"echo\"").await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // The JSON body ends the first answer; wait for all of it before the next request.
    read_until(&mut s, &mut got, b"}").await;
    let mut out = format!("GET /chat/lobby HTTP/1.1\r\nHost: a\r\n{RAW_UPGRADE}\r\n").into_bytes();
    out.extend_from_slice(&masked_text(b"second"));
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, b"\x81\x06second").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("HTTP/1.1 101"), "{text}");
}

/// `keepalive`: peers that answer keep a quiet connection open past several Pings, and
/// neither sees the other's Pong to wsgate.
#[tokio::test]
async fn keepalive_answered_pings_keep_a_quiet_connection_open() {
    let (backend, mut seen) = recording_backend().await;
    let s = with_keepalive(spec("/{everything}", "/{everything}", &[backend]));
    let gw = Gateway::start(&[route("ka", 0, &s)]).await;
    let mut ws = connect(&gw.ws("/quiet")).await;
    keepalive_answered_keeps_a_quiet_connection_open(&mut ws, &mut seen).await;
}

/// `keepalive`: a client that never answers is gone; the backend gets Close 1001.
#[tokio::test]
async fn keepalive_silent_client_is_found_gone() {
    let (backend, mut seen) = recording_backend().await;
    let s = with_keepalive(spec("/{everything}", "/{everything}", &[backend]));
    let gw = Gateway::start(&[route("ka", 0, &s)]).await;
    let client = support::raw_ws::open_raw_client(gw.server.listen_addr, "/silent").await;
    keepalive_silent_client_gets_the_backend_1001(client, &mut seen).await;
    eventually("the keep-alive timeout metric", || {
        gw.metrics
            .encode()
            .contains(r#"wsgate_keepalive_timeouts_total{route="ka",side="Client"} 1"#)
            .then_some(())
    })
    .await;
}

/// `keepalive`: a backend that never answers is gone; the client gets Close 1011.
#[tokio::test]
async fn keepalive_silent_backend_is_found_gone() {
    let backends = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = with_keepalive(spec(
        "/{everything}",
        "/{everything}",
        &[backends.local_addr().unwrap()],
    ));
    let gw = Gateway::start(&[route("ka", 0, &s)]).await;
    let url = gw.ws("/silent");
    let (client, backend) = tokio::join!(
        connect(&url),
        support::raw_ws::accept_raw_backend(&backends)
    );
    let mut client = client;
    keepalive_silent_backend_gets_the_client_1011(&mut client, backend).await;
}
