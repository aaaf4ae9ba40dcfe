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

use super::{within, Ws};

pub async fn next_msg(ws: &mut Ws) -> Message {
    within("next message", ws.next())
        .await
        .expect("stream ended")
        .expect("websocket error")
}

/// Sends `m` and expects it back unchanged.
pub async fn round_trip(ws: &mut Ws, m: Message) {
    within("send", ws.send(m.clone())).await.unwrap();
    assert_eq!(next_msg(ws).await, m);
}

/// Text, binary, empty, 16 MiB (which backs up in the relay's backlog) and non-ASCII
/// messages come back byte for byte.
pub async fn every_kind_and_size_round_trips(ws: &mut Ws) {
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
pub async fn fragmented_message_with_ping_round_trips(ws: &mut Ws) {
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
pub async fn idle_limit_closes_only_the_quiet_one(quiet: &mut Ws, busy: &mut Ws) {
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
