//! The access log (`--access-log PATH`, issue 21 item 1): the real gateway in-process writing
//! to a temporary file, real WebSocket clients and backends. One line per relayed
//! connection when it ends (who closed and why), per proxied HTTP request, and per answer
//! wsgate gives itself; `access_token`'s value never appears.

mod support;

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgate::api::WsRouteSpec;
use wsgate::telemetry::access_log::{AccessLogFormat, AccessLogOptions, AccessLogTarget};

/// A gateway whose access log goes to a file in `dir`, in `format`.
async fn gateway(
    dir: &Path,
    format: AccessLogFormat,
    routes: &[wsgate::model::Route],
) -> (Gateway, std::path::PathBuf) {
    let path = dir.join("access.log");
    let target = AccessLogTarget::File(path.clone());
    let gw = Gateway::start_with_options(routes, |o| {
        o.access_log = AccessLogOptions { target, format };
    })
    .await;
    (gw, path)
}

fn chat(echo: &Echo) -> WsRouteSpec {
    spec("/chat/{room}", "/rooms/{room}", &[echo.addr])
}

/// The file's lines as JSON, each of which must parse.
fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits until a line with `request_id` was written, and returns it.
async fn line_of(path: &Path, request_id: &str) -> Value {
    eventually(&format!("an access log line for {request_id}"), || {
        json_lines(path)
            .into_iter()
            .find(|l| l["request_id"] == request_id)
    })
    .await
}

/// Reads until the connection ends (the Close handshake done, or the TCP connection gone).
async fn until_end(ws: &mut Ws) {
    within("the connection's end", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

async fn connect_as(url: &str, request_id: &str) -> Ws {
    connect_with(url, &[("x-request-id", request_id)]).await
}

fn num(line: &Value, field: &str) -> f64 {
    line[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {line}"))
}

/// A connection the client closes: every field of its line.
#[tokio::test]
async fn a_connection_the_client_closes_logs_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("e").await;
    let (gw, path) = gateway(
        dir.path(),
        AccessLogFormat::Json,
        &[route("chat", 0, &chat(&echo))],
    )
    .await;
    let url = gw.ws("/chat/a?access_token=SECRET-TOKEN-VALUE&room=1");
    let mut ws = connect_as(&url, "client-closes").await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("hello")
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    until_end(&mut ws).await;

    let line = line_of(&path, "client-closes").await;
    assert_eq!(line["kind"], "ws");
    assert_eq!(line["route"], "chat");
    assert!(
        line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(line["endpoint"], echo.addr.to_string());
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/chat/a?access_token=[redacted]&room=1");
    assert_eq!(line["status"], 101);
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    let upgrade = num(&line, "upgrade_ms");
    let duration = num(&line, "duration_ms");
    assert!(upgrade > 0.0, "{line}");
    // The client waited 30 ms before closing.
    assert!(duration >= upgrade + 30.0, "{line}");
    assert_eq!(line["messages_up"], 1);
    assert_eq!(line["messages_down"], 1);
    // "hello" masked (2 + 4 + 5) and the client's Close (2 + 4 + 2 + 3).
    assert_eq!(line["bytes_up"], 11 + 11);
    // "hello" unmasked and the backend's Close answer (2 + 2 at least).
    assert!(num(&line, "bytes_down") >= 7.0 + 4.0, "{line}");
    assert_eq!(line["closed_by"], "client");
    assert_eq!(line["close_code"], 1000);
    assert!(line.get("close_reason").is_none(), "{line}");
    assert!(line.get("reason").is_none(), "{line}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("SECRET-TOKEN-VALUE"), "{text}");
    assert!(gw
        .metrics
        .encode()
        .contains("wsgate_access_log_dropped_total 0"));
}

/// The backend closes with its own code; then a backend that dies without a Close.
#[tokio::test]
async fn a_backend_close_and_a_backend_that_dies_are_the_backends() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("e").await;
    let (gw, path) = gateway(
        dir.path(),
        AccessLogFormat::Json,
        &[route("chat", 0, &chat(&echo))],
    )
    .await;

    let mut ws = connect_as(&gw.ws("/chat/a?close=4001"), "backend-closes").await;
    until_end(&mut ws).await;
    let line = line_of(&path, "backend-closes").await;
    assert_eq!(line["closed_by"], "backend");
    assert_eq!(line["close_code"], 4001);

    let mut ws = connect_as(&gw.ws("/chat/a?drop=1"), "backend-dies").await;
    ws.send(Message::text("one")).await.unwrap();
    until_end(&mut ws).await;
    let line = line_of(&path, "backend-dies").await;
    assert_eq!(line["closed_by"], "backend");
    assert_eq!(line["close_code"], 1006);
    assert_eq!(
        line["close_reason"],
        "backend connection ended without a Close"
    );
    assert_eq!(line["messages_up"], 1);
}

/// wsgate closes: the route's idle timeout, then its message size limit.
#[tokio::test]
async fn wsgate_closing_is_logged_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("e").await;
    let mut idle = spec("/idle", "/idle", &[echo.addr]);
    idle.timeouts = Some(wsgate::api::RouteTimeouts {
        idle: Some("300ms".into()),
        ..Default::default()
    });
    let mut limited = spec("/limited", "/limited", &[echo.addr]);
    limited.limits = Some(wsgate::api::LimitsSpec {
        max_message_bytes: Some(100),
        ..Default::default()
    });
    let routes = [route("idle", 0, &idle), route("limited", 1, &limited)];
    let (gw, path) = gateway(dir.path(), AccessLogFormat::Json, &routes).await;

    let mut ws = connect_as(&gw.ws("/idle"), "idle").await;
    until_end(&mut ws).await;
    let line = line_of(&path, "idle").await;
    assert_eq!(line["route"], "idle");
    assert_eq!(line["closed_by"], "wsgate");
    assert_eq!(line["close_code"], 1001);
    assert_eq!(line["close_reason"], "idle timeout");

    let mut ws = connect_as(&gw.ws("/limited"), "limited").await;
    ws.send(Message::binary(vec![7u8; 200])).await.unwrap();
    until_end(&mut ws).await;
    let line = line_of(&path, "limited").await;
    assert_eq!(line["closed_by"], "wsgate");
    assert_eq!(line["close_code"], 1009);
    assert_eq!(
        line["close_reason"],
        "message over the route's maxMessageBytes"
    );
    assert_eq!(line["messages_up"], 0);
}

/// A plain HTTP request gets its line when its response has been sent; a refusal and a
/// request no route matches get theirs with status and reason.
#[tokio::test]
async fn http_requests_and_wsgates_own_answers_get_lines() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("e").await;
    let mut guarded = spec("/guarded", "/guarded", &[echo.addr]);
    guarded.allowed_origins = Some(vec!["https://ok.example".into()]);
    let routes = [
        route("chat", 0, &chat(&echo)),
        route("guarded", 1, &guarded),
    ];
    let (gw, path) = gateway(dir.path(), AccessLogFormat::Json, &routes).await;

    let (status, body) = http_get(&gw.http("/chat/plain?access_token=HTTP-SECRET")).await;
    assert_eq!(status, 200);
    let http = eventually("the HTTP request's line", || {
        json_lines(&path).into_iter().find(|l| l["kind"] == "http")
    })
    .await;
    assert_eq!(http["status"], 200);
    assert_eq!(http["route"], "chat");
    assert_eq!(http["method"], "GET");
    assert_eq!(http["path"], "/chat/plain?access_token=[redacted]");
    assert_eq!(http["endpoint"], echo.addr.to_string());
    assert_eq!(http["bytes_down"], body.len());
    assert!(http.get("upgrade_ms").is_none(), "{http}");

    let upgrade = |path: &str, extra: &str, id: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Request-Id: {id}\r\n{extra}\r\n"
        )
    };
    let resp = raw_request(
        gw.server.listen_addr,
        upgrade(
            "/guarded?access_token=REFUSED-SECRET",
            "Origin: https://evil.example\r\n",
            "refused",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    let line = line_of(&path, "refused").await;
    assert_eq!(line["kind"], "ws");
    assert_eq!(line["status"], 403);
    assert_eq!(line["reason"], "origin");
    assert_eq!(line["route"], "guarded");
    assert_eq!(line["path"], "/guarded?access_token=[redacted]");
    assert!(line.get("closed_by").is_none(), "{line}");

    let resp = raw_request(
        gw.server.listen_addr,
        upgrade("/nowhere", "", "unrouted").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 404, "{resp}");
    let line = line_of(&path, "unrouted").await;
    assert_eq!(line["status"], 404);
    assert_eq!(line["reason"], "no_route");
    assert_eq!(line["route"], "");
    assert_eq!(line["endpoint"], "");

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("SECRET"), "{text}");
}

/// `--access-log-format text`: one `key=value` line per connection or request.
#[tokio::test]
async fn text_lines_are_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("e").await;
    let (gw, path) = gateway(
        dir.path(),
        AccessLogFormat::Text,
        &[route("chat", 0, &chat(&echo))],
    )
    .await;
    let mut ws = connect_as(&gw.ws("/chat/a?note=two%20words"), "text-ws").await;
    ws.send(Message::text("x")).await.unwrap();
    within("echo", ws.next()).await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    until_end(&mut ws).await;
    let (status, _) = http_get(&gw.http("/chat/plain")).await;
    assert_eq!(status, 200);
    let lines = eventually("two text lines", || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        (text.lines().count() == 2).then_some(text)
    })
    .await;
    for line in lines.lines() {
        assert!(line.starts_with("time="), "{line}");
        assert!(!line.contains('{'), "{line}");
    }
    let ws_line = lines.lines().find(|l| l.contains("kind=ws")).unwrap();
    for field in [
        "request_id=text-ws",
        "route=chat",
        "method=GET",
        "path=/chat/a?note=two%20words",
        "status=101",
        "messages_up=1",
        "messages_down=1",
        "closed_by=client",
        // A Close without a code.
        "close_code=1005",
    ] {
        assert!(ws_line.contains(field), "{field} missing in {ws_line}");
    }
    assert!(lines
        .lines()
        .any(|l| l.contains("kind=http") && l.contains("status=200")));
}
