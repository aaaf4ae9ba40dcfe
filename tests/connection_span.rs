//! Every line a connection logs names it: the relay's idle close carries the connection's
//! span (client, request id, route, endpoint) on both request paths and after the relay
//! moved to a relay thread. A test binary of its own, with one global subscriber set once
//! for all its tests: the relay thread logs through the global subscriber (a thread-local
//! one would never see it), and a thread-local one set while other tests log in parallel
//! can miss lines (tracing caches each log site's interest; CI saw it flake). Tests tell
//! their lines apart by request id.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use support::logs::CapturedLogs;
use support::relay_checks::next_msg;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The process's log output, captured from the first call on.
fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        tracing::subscriber::set_global_default(logs.subscriber())
            .expect("the only global subscriber");
        logs
    })
}

/// A route to `echo` whose relays the idle limit closes after 300 ms of quiet: the log line
/// these tests read.
fn quiet_after_300ms(echo: &Echo) -> wsgate::api::WsRouteSpec {
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.timeouts = Some(wsgate::api::RouteTimeouts {
        idle: Some("300ms".into()),
        ..Default::default()
    });
    s
}

#[tokio::test]
async fn a_moved_relay_logs_in_its_connection_span() {
    let logs = logs();
    let echo = Echo::start("e").await;
    let s = quiet_after_300ms(&echo);
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
    match next_msg(&mut ws).await {
        Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::Away),
        other => panic!("expected the idle Close, got {other:?}"),
    }
    let line = eventually("the idle close logged", || {
        logs.lines_with("closing idle WebSocket connection")
            .into_iter()
            .find(|l| l["span"]["request_id"] == "span-moved")
    })
    .await;
    let line = &line;
    let span = &line["span"];
    assert_eq!(span["name"], "connection", "{line}");
    assert_eq!(span["request_id"], "span-moved", "{line}");
    assert_eq!(span["route"], "span-thread", "{line}");
    assert_eq!(span["endpoint"], echo.addr.to_string(), "{line}");
}

/// Every line a connection logs names it: the relay's idle close carries the connection's
/// span with client, request id, route and endpoint, for a relay on a connection's first
/// request (the direct path) and one after a plain request (the relay task hyper hands
/// the connection to). JSON as the binary writes it with `--log-format json`.
#[tokio::test]
async fn relay_log_lines_carry_the_connection_span() {
    let logs = logs();
    let echo = Echo::start("e").await;
    let s = quiet_after_300ms(&echo);
    let gw = Gateway::start(&[route("span-idle", 0, &s)]).await;

    let mut direct = connect_with(&gw.ws("/first"), &[("x-request-id", "span-direct")]).await;
    let mut later = TcpStream::connect(gw.server.listen_addr).await.unwrap();
    later
        .write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\nX-Request-Id: span-plain\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until(&mut later, &mut got, b"}").await;
    later
        .write_all(
            format!(
                "GET /later HTTP/1.1\r\nHost: a\r\nX-Request-Id: span-later\r\n{RAW_UPGRADE}\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until(&mut later, &mut got, b"HTTP/1.1 101").await;
    // Both go quiet: the idle limit closes them (Close 1001 arrives as 0x88 0x0e 0x03 0xe9).
    match next_msg(&mut direct).await {
        Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::Away),
        other => panic!("expected the idle Close, got {other:?}"),
    }
    read_until(&mut later, &mut got, &[0x88, 0x0e, 0x03, 0xe9]).await;

    let idle_close = "closing idle WebSocket connection";
    let lines = eventually("both idle closes logged", || {
        let lines = logs.lines_with(idle_close);
        let ours = |id: &str| lines.iter().any(|l| l["span"]["request_id"] == id);
        (ours("span-direct") && ours("span-later")).then_some(lines)
    })
    .await;
    for request_id in ["span-direct", "span-later"] {
        let line = lines
            .iter()
            .find(|l| l["span"]["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no idle close in the span of {request_id}: {lines:?}"));
        let span = &line["span"];
        assert_eq!(span["name"], "connection", "{line}");
        assert_eq!(span["route"], "span-idle", "{line}");
        assert_eq!(span["endpoint"], echo.addr.to_string(), "{line}");
        assert!(
            span["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{line}"
        );
    }
}
