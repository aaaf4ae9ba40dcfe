//! What a relay must do whatever runs it (the async runtime, or a relay thread after a
//! move): checks shared by websocket_relay.rs and relay_threads.rs.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use super::within;

/// A client's connection to the gateway, plain or TLS.
pub trait Peer: AsyncRead + AsyncWrite + Unpin {}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer for S {}

pub async fn next_msg(ws: &mut WebSocketStream<impl Peer>) -> Message {
    within("next message", ws.next())
        .await
        .expect("stream ended")
        .expect("websocket error")
}

/// Sends `m` and expects it back unchanged.
pub async fn round_trip(ws: &mut WebSocketStream<impl Peer>, m: Message) {
    within("send", ws.send(m.clone())).await.unwrap();
    assert_eq!(next_msg(ws).await, m);
}

/// Text, binary, empty, 16 MiB (which backs up in the relay's backlog) and non-ASCII
/// messages come back byte for byte.
pub async fn every_kind_and_size_round_trips(ws: &mut WebSocketStream<impl Peer>) {
    let big: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for m in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(""),
        Message::binary(big),
        Message::text("ünïcødé ✓"),
    ] {
        round_trip(ws, m).await;
    }
}

/// A fragmented text message with a ping between its fragments: the pong comes back
/// first, then the whole message.
pub async fn fragmented_message_with_ping_round_trips(ws: &mut WebSocketStream<impl Peer>) {
    let frames = [
        Frame::message(b"frag".to_vec(), OpCode::Data(Data::Text), false),
        Frame::ping(b"mid".to_vec()),
        Frame::message(b"ment".to_vec(), OpCode::Data(Data::Continue), false),
        Frame::message(b"ed".to_vec(), OpCode::Data(Data::Continue), true),
    ];
    for f in frames {
        within("send frame", ws.send(Message::Frame(f)))
            .await
            .unwrap();
    }
    assert_eq!(
        next_msg(ws).await,
        Message::Pong(b"mid".to_vec().into()),
        "the pong must arrive before the echoed message"
    );
    assert_eq!(next_msg(ws).await, Message::text("fragmented"));
}

/// Under a route with `timeouts.idle: 400ms`: `busy`, talking every 100 ms for well past
/// the limit, stays open; `quiet` gets Close 1001 "idle timeout".
pub async fn idle_limit_closes_only_the_quiet_one(
    quiet: &mut WebSocketStream<impl Peer>,
    busy: &mut WebSocketStream<impl Peer>,
) {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        round_trip(busy, Message::text("tick")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match next_msg(quiet).await {
        Message::Close(Some(c)) => {
            assert_eq!(c.code, CloseCode::Away);
            assert_eq!(c.reason.as_str(), "idle timeout");
        }
        other => panic!("expected Close 1001 on the quiet socket, got {other:?}"),
    }
    round_trip(busy, Message::text("still")).await;
}

/// A backend that echoes text, and on "die" drops its TCP connection without a Close.
/// Reports the Close code it received, if any, once its connection ends.
pub async fn backend_dying_on_cue() -> (SocketAddr, oneshot::Receiver<Option<CloseCode>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        let mut seen = None;
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) if t.as_str() == "die" => break,
                Message::Text(t) => {
                    let echoed = ws.send(Message::Text(t)).await;
                    if echoed.is_err() {
                        break;
                    }
                }
                Message::Close(c) => {
                    seen = c.map(|c| c.code);
                    break;
                }
                _ => {}
            }
        }
        let _ = seen_tx.send(seen);
    });
    (addr, seen_rx)
}

// ---- keep-alive (a route's `keepalive`) ---------------------------------------------------

/// What wsgate's own Pings carry first.
pub const KEEPALIVE_PAYLOAD: &[u8] = b"wsgate keepalive ";

/// The keep-alive of these tests: short, so a quiet connection sees several Pings soon.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(200);

/// `spec` with `keepalive: {pingInterval: 200ms, pongTimeout: 200ms}`.
pub fn with_keepalive(mut spec: wsgate::api::WsRouteSpec) -> wsgate::api::WsRouteSpec {
    spec.keepalive = Some(wsgate::api::KeepaliveSpec {
        ping_interval: Some("200ms".into()),
        pong_timeout: Some("200ms".into()),
    });
    spec
}

/// A backend (tokio-tungstenite, which answers Pings as it reads) that echoes text and
/// reports every other message it receives (Pings, Pongs, its Close).
pub async fn recording_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Message>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => {
                    if ws.send(Message::Text(t)).await.is_err() {
                        break;
                    }
                }
                other => {
                    let _ = seen_tx.send(other);
                }
            }
        }
    });
    (addr, seen_rx)
}

/// Both peers answer Pings (tokio-tungstenite, reading): a connection quiet for six
/// intervals stays open, each side gets wsgate's Pings, and neither ever sees a Pong (the
/// other side's answer to wsgate) or more than its own Pings.
pub async fn keepalive_answered_keeps_a_quiet_connection_open(
    client: &mut WebSocketStream<impl Peer>,
    backend_seen: &mut tokio::sync::mpsc::UnboundedReceiver<Message>,
) {
    let quiet_until = tokio::time::Instant::now() + 6 * KEEPALIVE_INTERVAL;
    let mut pings = 0;
    // Reading is the wait: the client answers what arrives until the quiet time is over.
    while let Ok(m) = tokio::time::timeout_at(quiet_until, client.next()).await {
        match m {
            Some(Ok(Message::Ping(p))) if p.starts_with(KEEPALIVE_PAYLOAD) => pings += 1,
            other => panic!("the client must get only wsgate's Pings, got {other:?}"),
        }
    }
    // Each side is pinged about once per interval and a half; at most once per interval.
    assert!((2..=6).contains(&pings), "{pings} Pings to the client");
    // Still open: a message goes through (a Ping due meanwhile may come first).
    within("send", client.send(Message::text("still open")))
        .await
        .unwrap();
    loop {
        match next_msg(client).await {
            Message::Ping(p) if p.starts_with(KEEPALIVE_PAYLOAD) => pings += 1,
            m => {
                assert_eq!(m, Message::text("still open"));
                break;
            }
        }
    }
    assert!(pings <= 7, "{pings} Pings to the client");
    let mut backend_pings = 0;
    while let Ok(m) = backend_seen.try_recv() {
        match m {
            Message::Ping(p) if p.starts_with(KEEPALIVE_PAYLOAD) => backend_pings += 1,
            other => panic!("the backend must get only wsgate's Pings, got {other:?}"),
        }
    }
    assert!(
        (2..=6).contains(&backend_pings),
        "{backend_pings} Pings to the backend"
    );
}

/// A raw client that completed the handshake (and, through `moved`, a message) and then
/// only reads, never answering: it is found gone and the backend gets Close 1001.
pub async fn keepalive_silent_client_gets_the_backend_1001(
    client: super::raw_ws::RawPeer,
    backend_seen: &mut tokio::sync::mpsc::UnboundedReceiver<Message>,
) {
    let close = loop {
        let m = within("the backend's Close", backend_seen.recv())
            .await
            .expect("backend gone before a Close");
        match m {
            Message::Close(c) => break c.expect("a Close code"),
            Message::Ping(p) if p.starts_with(KEEPALIVE_PAYLOAD) => {}
            other => panic!("the backend must get only Pings and a Close, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(
        close.reason.as_str(),
        "client did not answer keep-alive ping"
    );
    // Held open (never dropped) until here: the Close is the keep-alive's, not an EOF's.
    drop(client);
}

/// A raw backend that answered the upgrade (and, through `moved`, a message) and then only
/// reads, never answering: it is found gone and the client gets Close 1011.
pub async fn keepalive_silent_backend_gets_the_client_1011(
    client: &mut WebSocketStream<impl Peer>,
    backend: super::raw_ws::RawPeer,
) {
    let close = loop {
        match next_msg(client).await {
            Message::Close(c) => break c.expect("a Close code"),
            Message::Ping(p) if p.starts_with(KEEPALIVE_PAYLOAD) => {}
            other => panic!("the client must get only Pings and a Close, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Error);
    assert_eq!(
        close.reason.as_str(),
        "backend did not answer keep-alive ping"
    );
    drop(backend);
}
