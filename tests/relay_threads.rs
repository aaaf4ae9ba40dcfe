//! Relays that moved from the async runtime to a relay thread behave as before they moved:
//! every kind of message passes unchanged, a side that dies gets the other side a Close,
//! the drain and the idle timeout send Close 1001, and the route's metrics count what
//! passed. Here relays move after their first message (the default is 128), and every
//! test first checks, by the gateway's own metric, that its relay did move.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::relay_checks::*;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgate::model::Route;

const MOVE_AFTER_FIRST_MESSAGE: OffloadOptions = OffloadOptions {
    threads: 2,
    after_messages: 1,
};

async fn moving_gateway(routes: &[Route]) -> Gateway {
    Gateway::start_with_offload(routes, Duration::from_secs(5), MOVE_AFTER_FIRST_MESSAGE).await
}

async fn gateway_to(backend: SocketAddr) -> Gateway {
    moving_gateway(&[route(
        "r",
        0,
        &spec("/{everything}", "/{everything}", &[backend]),
    )])
    .await
}

/// The value of the metric line starting with `series` (name and labels).
fn metric(gw: &Gateway, series: &str) -> Option<u64> {
    gw.metrics.encode().lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse::<f64>().ok().map(|v| v as u64)
    })
}

/// Waits until `n` relays have moved and `on_threads` run on relay threads.
async fn relays_moved(gw: &Gateway, n: u64, on_threads: u64) {
    eventually("relays moved to relay threads", || {
        (metric(gw, "wsgate_relays_moved_total") == Some(n)
            && metric(gw, "wsgate_relays_on_threads") == Some(on_threads))
        .then_some(())
    })
    .await;
}

/// Text, binary, empty and 16 MiB messages (which back up in the relay's backlog), then a
/// fragmented message with a ping between its fragments, all after the move; the Close
/// handshake ends the relay on its thread and the route's metrics count every message.
#[tokio::test]
async fn moved_relay_passes_every_kind_and_size_and_counts_them() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(echo.addr).await;
    let mut ws = connect(&gw.ws("/chat")).await;
    round_trip(&mut ws, Message::text("first")).await;
    relays_moved(&gw, 1, 1).await;

    every_kind_and_size_round_trips(&mut ws).await;
    fragmented_message_with_ping_round_trips(&mut ws).await;

    within("close", ws.close(None)).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    relays_moved(&gw, 1, 0).await;
    // "first", five messages and the fragmented one, each way.
    eventually("message counts", || {
        let up = r#"wsgate_messages_total{route="r",direction="ClientToUpstream"}"#;
        let down = r#"wsgate_messages_total{route="r",direction="UpstreamToClient"}"#;
        (metric(&gw, up) == Some(7) && metric(&gw, down) == Some(7)).then_some(())
    })
    .await;
    assert_eq!(
        metric(&gw, r#"wsgate_connections_active{route="r"}"#),
        Some(0)
    );
}

/// The backend dies without a Close after the move: the client gets Close 1011.
#[tokio::test]
async fn moved_relay_sends_1011_when_the_backend_dies() {
    let (backend, _seen) = backend_dying_on_cue().await;
    let gw = gateway_to(backend).await;
    let mut ws = connect(&gw.ws("/x")).await;
    round_trip(&mut ws, Message::text("one")).await;
    relays_moved(&gw, 1, 1).await;
    within("send", ws.send(Message::text("die"))).await.unwrap();
    match next_msg(&mut ws).await {
        Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::Error),
        other => panic!("expected Close 1011, got {other:?}"),
    }
    // The client's Close reply goes out as it reads on; then the relay ends.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    relays_moved(&gw, 1, 0).await;
}

/// The client vanishes without a Close after the move: the backend gets Close 1001.
#[tokio::test]
async fn moved_relay_sends_1001_to_the_backend_when_the_client_vanishes() {
    let (backend, seen) = backend_dying_on_cue().await;
    let gw = gateway_to(backend).await;
    let mut ws = connect(&gw.ws("/bye")).await;
    round_trip(&mut ws, Message::text("one")).await;
    relays_moved(&gw, 1, 1).await;
    drop(ws.into_inner());
    let seen = within("backend sees a Close", seen).await.unwrap();
    assert_eq!(seen, Some(CloseCode::Away));
}

/// The client's own Close code reaches the backend through the relay thread.
#[tokio::test]
async fn moved_relay_passes_the_clients_close_code() {
    let (backend, seen) = backend_dying_on_cue().await;
    let gw = gateway_to(backend).await;
    let mut ws = connect(&gw.ws("/c")).await;
    round_trip(&mut ws, Message::text("one")).await;
    relays_moved(&gw, 1, 1).await;
    let close = CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    };
    within("close", ws.close(Some(close))).await.unwrap();
    let seen = within("backend sees a Close", seen).await.unwrap();
    assert_eq!(seen, Some(CloseCode::Library(4001)));
}

/// The drain reaches moved relays: each client gets Close 1001 "gateway shutting down", and
/// once the clients answer, the drain completes within its budget.
#[tokio::test]
async fn drain_sends_1001_through_relay_threads_and_completes() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(echo.addr).await;
    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = connect(&gw.ws(&format!("/s{i}"))).await;
        round_trip(&mut ws, Message::text("before")).await;
        sockets.push(ws);
    }
    relays_moved(&gw, 3, 3).await;
    let server = &gw.server;
    let (clean, ()) = tokio::join!(server.shutdown(), async {
        for ws in &mut sockets {
            match next_msg(ws).await {
                Message::Close(Some(c)) => {
                    assert_eq!(c.code, CloseCode::Away);
                    assert_eq!(c.reason.as_str(), "gateway shutting down");
                }
                other => panic!("expected Close 1001, got {other:?}"),
            }
            // Reading on flushes the client's Close reply; then the gateway ends it.
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            {}
        }
    });
    assert!(clean, "the drain must complete within its budget");
    relays_moved(&gw, 3, 0).await;
}

/// `timeouts.idle` after the move: a quiet socket gets Close 1001 "idle timeout", one that
/// keeps talking past the limit stays open.
#[tokio::test]
async fn moved_relay_idle_timeout_closes_only_quiet_sockets() {
    let echo = Echo::start("e").await;
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.timeouts = Some(wsgate::api::RouteTimeouts {
        idle: Some("400ms".into()),
        ..Default::default()
    });
    let gw = moving_gateway(&[route("idle", 0, &s)]).await;
    let mut quiet = connect(&gw.ws("/quiet")).await;
    let mut busy = connect(&gw.ws("/busy")).await;
    round_trip(&mut quiet, Message::text("moved")).await;
    round_trip(&mut busy, Message::text("moved")).await;
    relays_moved(&gw, 2, 2).await;
    idle_limit_closes_only_the_quiet_one(&mut quiet, &mut busy).await;
}

/// With no relay threads (`--relay-threads 0`) nothing moves, however busy.
#[tokio::test]
async fn no_relay_threads_keeps_every_relay_on_the_runtime() {
    let echo = Echo::start("e").await;
    let gw = Gateway::start_with_offload(
        &[route(
            "r",
            0,
            &spec("/{everything}", "/{everything}", &[echo.addr]),
        )],
        Duration::from_secs(5),
        OffloadOptions {
            threads: 0,
            after_messages: 1,
        },
    )
    .await;
    let mut ws = connect(&gw.ws("/x")).await;
    for i in 0..20 {
        round_trip(&mut ws, Message::text(format!("m{i}"))).await;
    }
    assert_eq!(metric(&gw, "wsgate_relays_moved_total"), Some(0));
}

/// A hundred relays moving at once to two threads while every one of them talks, pipelined:
/// each client gets its own messages back in order, and every relay ends when its client
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_relays_move_talk_and_end_at_once() {
    let echo = Echo::start("e").await;
    let gw = gateway_to(echo.addr).await;
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let url = gw.ws(&format!("/c{i}"));
            tokio::spawn(async move {
                let mut ws = connect(&url).await;
                for j in 0..50 {
                    within("send", ws.send(Message::text(format!("{i}-{j}"))))
                        .await
                        .unwrap();
                }
                for j in 0..50 {
                    assert_eq!(next_msg(&mut ws).await, Message::text(format!("{i}-{j}")));
                }
                within("close", ws.close(None)).await.unwrap();
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                {}
            })
        })
        .collect();
    for client in clients {
        within("client", client).await.unwrap();
    }
    relays_moved(&gw, 100, 0).await;
}

/// `keepalive` after the move: peers that answer keep a quiet connection open past several
/// Pings, and neither sees the other's Pong to wsgate.
#[tokio::test]
async fn moved_relay_keepalive_answered_pings_keep_a_quiet_connection_open() {
    let (backend, mut seen) = recording_backend().await;
    let s = with_keepalive(spec("/{everything}", "/{everything}", &[backend]));
    let gw = moving_gateway(&[route("ka", 0, &s)]).await;
    let mut ws = connect(&gw.ws("/quiet")).await;
    round_trip(&mut ws, Message::text("moved")).await;
    relays_moved(&gw, 1, 1).await;
    keepalive_answered_keeps_a_quiet_connection_open(&mut ws, &mut seen).await;
}

/// `keepalive` after the move: a client that never answers is gone; the backend gets
/// Close 1001.
#[tokio::test]
async fn moved_relay_keepalive_silent_client_is_found_gone() {
    use support::raw_ws::{frame, open_raw_client, FIN, TEXT};
    let (backend, mut seen) = recording_backend().await;
    let s = with_keepalive(spec("/{everything}", "/{everything}", &[backend]));
    let gw = moving_gateway(&[route("ka", 0, &s)]).await;
    let mut client = open_raw_client(gw.server.listen_addr, "/silent").await;
    client.send(&frame(FIN | TEXT, true, b"moved")).await;
    let echo = client.next_frame().await.expect("the echo");
    assert_eq!(echo.payload, b"moved");
    relays_moved(&gw, 1, 1).await;
    keepalive_silent_client_gets_the_backend_1001(client, &mut seen).await;
}

/// `keepalive` after the move: a backend that never answers is gone; the client gets
/// Close 1011.
#[tokio::test]
async fn moved_relay_keepalive_silent_backend_is_found_gone() {
    use support::raw_ws::{accept_raw_backend, frame, FIN, TEXT};
    let backends = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = with_keepalive(spec(
        "/{everything}",
        "/{everything}",
        &[backends.local_addr().unwrap()],
    ));
    let gw = moving_gateway(&[route("ka", 0, &s)]).await;
    let url = gw.ws("/silent");
    let (client, backend) = tokio::join!(connect(&url), accept_raw_backend(&backends));
    let (mut client, mut backend) = (client, backend);
    within("send", client.send(Message::text("moved")))
        .await
        .unwrap();
    let got = backend.next_frame().await.expect("the client's message");
    assert_eq!(got.payload, b"moved");
    backend.send(&frame(FIN | TEXT, false, b"moved")).await;
    assert_eq!(next_msg(&mut client).await, Message::text("moved"));
    relays_moved(&gw, 1, 1).await;
    keepalive_silent_backend_gets_the_client_1011(&mut client, backend).await;
}
