//! Per-message telemetry from the relay's frame tracking (issue 21 item 3), through the
//! real gateway, real WebSocket clients and the echo backend, read back from the metrics
//! the admin endpoint serves (`Metrics::encode`): message sizes, connection durations,
//! closes by side and code, and counts of a quiet connection flushed on their deadline on
//! both relay drivers.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

async fn until_end(ws: &mut Ws) {
    within("the connection's end", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

async fn echoed(ws: &mut Ws, m: Message) {
    ws.send(m.clone()).await.unwrap();
    assert_eq!(within("echo", ws.next()).await.unwrap().unwrap(), m);
}

/// Waits until the gateway's metrics contain every line of `want`.
async fn metrics_show(gw: &Gateway, want: &[&str]) -> String {
    eventually(&format!("metrics showing {want:?}"), || {
        let text = gw.metrics.encode();
        want.iter().all(|l| text.contains(l)).then_some(text)
    })
    .await
}

/// Sizes by direction in 64 × 4^i buckets (cumulative, as Prometheus reads them), one
/// duration per connection, and each Close by who sent it: the client's and the backend's
/// answer, then wsgate's own two on an idle route.
#[tokio::test]
async fn sizes_durations_and_closes_by_side() {
    let echo = Echo::start("e").await;
    let mut idle = spec("/idle", "/idle", &[echo.addr]);
    idle.timeouts = Some(wsgate::api::RouteTimeouts {
        idle: Some("200ms".into()),
        ..Default::default()
    });
    let gw = Gateway::start(&[
        route("chat", 0, &spec("/chat", "/chat", &[echo.addr])),
        route("idle", 1, &idle),
    ])
    .await;
    let before = gw.metrics.encode();
    assert!(
        !before.contains("wsgate_closes_total{"),
        "close series are made when first used:\n{before}"
    );

    let mut ws = connect(&gw.ws("/chat")).await;
    echoed(&mut ws, Message::text("0123456789")).await;
    echoed(&mut ws, Message::binary(vec![1u8; 1000])).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    until_end(&mut ws).await;
    let text = metrics_show(
        &gw,
        &[
            r#"wsgate_closes_total{route="chat",side="client",code="1000"} 1"#,
            r#"wsgate_closes_total{route="chat",side="backend",code="1000"} 1"#,
            "wsgate_connection_duration_seconds_count 1",
        ],
    )
    .await;
    for direction in ["ClientToUpstream", "UpstreamToClient"] {
        for line in [
            format!(r#"wsgate_message_size_bytes_bucket{{le="64.0",direction="{direction}"}} 1"#),
            format!(r#"wsgate_message_size_bytes_bucket{{le="256.0",direction="{direction}"}} 1"#),
            format!(r#"wsgate_message_size_bytes_bucket{{le="1024.0",direction="{direction}"}} 2"#),
            format!(r#"wsgate_message_size_bytes_bucket{{le="+Inf",direction="{direction}"}} 2"#),
            format!(r#"wsgate_message_size_bytes_sum{{direction="{direction}"}} 1010.0"#),
            format!(r#"wsgate_message_size_bytes_count{{direction="{direction}"}} 2"#),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
    // The connection lasted at least the 50 ms the client waited: not in the 0.1 s bucket
    // only if it took longer; either way it is under 10 s.
    assert!(
        text.contains(r#"wsgate_connection_duration_seconds_bucket{le="10.0"} 1"#),
        "{text}"
    );
    assert!(!text.contains("side=\"wsgate\""), "{text}");

    let mut ws = connect(&gw.ws("/idle")).await;
    until_end(&mut ws).await;
    metrics_show(
        &gw,
        &[
            // Both of wsgate's Close frames, to the client and to the backend.
            r#"wsgate_closes_total{route="idle",side="wsgate",code="1001"} 2"#,
            "wsgate_connection_duration_seconds_count 2",
        ],
    )
    .await;
}

/// A connection that sends a few messages and then goes quiet has them counted within
/// the flush deadline (10 s), without closing and without 256 KiB more: on the async
/// runtime, and after it moved to a relay thread.
#[tokio::test]
async fn a_quiet_connections_counts_show_up_on_their_deadline() {
    let echo = Echo::start("e").await;
    let gw = Gateway::start_with_offload(
        &[route("quiet", 0, &spec("/quiet", "/quiet", &[echo.addr]))],
        Duration::from_secs(5),
        OffloadOptions {
            threads: 1,
            after_messages: 4,
        },
    )
    .await;
    // Stays on the async runtime: 2 messages (1 each way).
    let mut on_runtime = connect(&gw.ws("/quiet")).await;
    echoed(&mut on_runtime, Message::text("a")).await;
    // Moves after 4 messages; then one more each way on the thread.
    let mut on_thread = connect(&gw.ws("/quiet")).await;
    echoed(&mut on_thread, Message::text("b")).await;
    echoed(&mut on_thread, Message::text("c")).await;
    eventually("the busy relay moved to its thread", || {
        gw.metrics
            .encode()
            .contains("wsgate_relays_on_threads 1")
            .then_some(())
    })
    .await;
    echoed(&mut on_thread, Message::text("d")).await;
    // 1 + 3 messages each way, none counted yet by size or bytes at 256 KiB, no close.
    let want = [
        r#"wsgate_messages_total{route="quiet",direction="ClientToUpstream"} 4"#,
        r#"wsgate_messages_total{route="quiet",direction="UpstreamToClient"} 4"#,
        r#"wsgate_message_size_bytes_count{direction="ClientToUpstream"} 4"#,
    ];
    eventually_async(
        "both quiet connections' counts",
        Duration::from_secs(20),
        || async {
            let text = gw.metrics.encode();
            want.iter().all(|l| text.contains(l)).then_some(())
        },
    )
    .await;
    // Still open: the counts came on the deadline, not at the end.
    echoed(&mut on_runtime, Message::text("still")).await;
    echoed(&mut on_thread, Message::text("still")).await;
}
