//! A relay that moved to a relay thread still logs inside its connection's span: the thread
//! enters the span the relay carried along when it logs for it. A test binary of its own:
//! the relay thread logs through the process's global subscriber (a thread-local one, as
//! other tests use, would never see it), and a global subscriber can be set once only.

mod support;

use std::time::Duration;

use support::logs::CapturedLogs;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_moved_relay_logs_in_its_connection_span() {
    let logs = CapturedLogs::default();
    let subscriber = logs.subscriber();
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    let echo = Echo::start("e").await;
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.timeouts = Some(wsgate::api::RouteTimeouts {
        idle: Some("300ms".into()),
        ..Default::default()
    });
    let moving = OffloadOptions {
        threads: 1,
        after_messages: 1,
    };
    let gw = Gateway::start_with_offload(
        &[route("span-thread", 0, &s)],
        Duration::from_secs(5),
        moving,
    )
    .await;
    let mut ws = connect_with(&gw.ws("/moved"), &[("x-request-id", "span-moved")]).await;
    // One message: the relay moves to the relay thread, then goes quiet until the idle
    // limit, which the thread enforces.
    relay_checks::round_trip(&mut ws, Message::text("hi")).await;
    eventually("the relay moved", || {
        gw.metrics
            .encode()
            .lines()
            .any(|l| l == "wsgate_relays_on_threads 1")
            .then_some(())
    })
    .await;
    match relay_checks::next_msg(&mut ws).await {
        Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::Away),
        other => panic!("expected the idle Close, got {other:?}"),
    }
    let lines = eventually("the idle close logged", || {
        let lines = logs.lines_with("closing idle WebSocket connection");
        (!lines.is_empty()).then_some(lines)
    })
    .await;
    let line = &lines[0];
    let span = &line["span"];
    assert_eq!(span["name"], "connection", "{line}");
    assert_eq!(span["request_id"], "span-moved", "{line}");
    assert_eq!(span["route"], "span-thread", "{line}");
    assert_eq!(span["endpoint"], echo.addr.to_string(), "{line}");
}
