//! The real `wsgate` binary: SIGTERM drains with Close 1001 and exits 0; editing the routes
//! file reloads the table without touching live connections; a broken edit keeps the
//! last good table; `wsgate check` reports problems by location.

mod support;

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Writes the file through a temp file and rename, as editors and ConfigMap updates do.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Running {
    process: Process,
    listen: String,
    admin: String,
}

/// Starts `wsgate run` on port 0 with `routes.yaml` in `dir` and waits until it reports
/// its ports and `/readyz` answers 200.
async fn start_binary(dir: &Path, extra: &[&str]) -> Running {
    let mut args = vec![
        "run",
        "--routes",
        "routes.yaml",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--reload-interval",
        "50ms",
    ];
    args.extend_from_slice(extra);
    let process = Process::start(&args, dir).await;
    let listen = process.listening.listen.to_string();
    let admin = process.listening.admin.to_string();
    let ready_url = format!("http://{admin}/readyz");
    eventually_async("wsgate ready", DEADLINE, || async {
        matches!(try_get(&ready_url).await, Ok((200, _))).then_some(())
    })
    .await;
    Running {
        process,
        listen,
        admin,
    }
}

async fn try_get(url: &str) -> Result<(u16, String), ()> {
    let uri: http::Uri = url.parse().unwrap();
    let stream = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str())
        .await
        .map_err(|_| ())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|_| ())?;
    tokio::spawn(conn);
    let req = http::Request::get(uri.path())
        .header("host", "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|_| ())?;
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.map_err(|_| ())?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn hello_name(ws: &mut Ws) -> String {
    match within("hello", ws.next()).await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap()["echo"]
            .as_str()
            .unwrap()
            .to_string(),
        other => panic!("expected hello, got {other:?}"),
    }
}

async fn echo_round_trip(ws: &mut Ws, text: &str) {
    within("send", ws.send(Message::text(text))).await.unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text(text)
    );
}

/// SIGTERM: readiness fails first, every WebSocket gets Close 1001, the process exits 0.
#[tokio::test]
async fn sigterm_sends_close_1001_to_every_socket_and_exits_zero() {
    sigterm_drains(&[]).await;
}

/// The same with one worker, which runs everything on a current-thread runtime (the
/// default on one CPU): relaying, the admin server, signals and the drain share one thread.
#[tokio::test]
async fn one_worker_relays_and_drains_like_many() {
    sigterm_drains(&["--workers", "1"]).await;
}

async fn sigterm_drains(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("e").await;
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes_yaml(&[("all", "/{everything}", "/{everything}", echo.addr)]),
    )
    .unwrap();
    let mut args = vec!["--shutdown-delay", "300ms", "--drain-timeout", "5s"];
    args.extend_from_slice(extra);
    let mut gw = start_binary(dir.path(), &args).await;
    let mut sockets = Vec::new();
    for i in 0..3 {
        let mut ws = connect(&format!("ws://{}/s{i}", gw.listen)).await;
        echo_round_trip(&mut ws, "before").await;
        sockets.push(ws);
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &gw.process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Readiness turns off while the shutdown delay runs.
    let ready_url = format!("http://{}/readyz", gw.admin);
    eventually_async("/readyz fails", DEADLINE, || async {
        matches!(try_get(&ready_url).await, Ok((503, _))).then_some(())
    })
    .await;

    for ws in &mut sockets {
        loop {
            match within("close 1001", ws.next()).await {
                Some(Ok(Message::Close(Some(c)))) => {
                    assert_eq!(c.code, CloseCode::Away);
                    // Keep reading so the client's Close reply is flushed, as a real
                    // client's is, then see the gateway end the connection.
                    while let Some(Ok(_)) = within("end after close", ws.next()).await {}
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("expected Close 1001, got {other:?}"),
            }
        }
    }
    let code = gw.process.exit_status().await;
    assert!(code.success(), "exit status {code:?}");
    assert!(
        !gw.process.listening_file.exists(),
        "the listening file outlived the listeners"
    );
}

/// With one worker the whole process is one thread, through loading, relaying and a reload,
/// until a relay gets busy enough to move to a relay thread (not here: one message): glibc
/// then keeps its single-threaded paths (system calls without cancellation bookkeeping,
/// malloc without arena locks), which a single stray thread, e.g. tokio's blocking pool for
/// `tokio::fs`, would switch off for good.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn one_worker_process_never_starts_a_second_thread() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let echo = Echo::start("e").await;
    std::fs::write(&file, routes_yaml(&[("a", "/a/{x}", "/{x}", echo.addr)])).unwrap();
    let gw = start_binary(dir.path(), &["--workers", "1"]).await;
    let mut ws = connect(&format!("ws://{}/a/1", gw.listen)).await;
    echo_round_trip(&mut ws, "relayed").await;

    replace_file(
        &file,
        &routes_yaml(&[
            ("a", "/a/{x}", "/{x}", echo.addr),
            ("b", "/b/{x}", "/{x}", echo.addr),
        ]),
    );
    let url = format!("ws://{}/b/1", gw.listen);
    let mut reloaded = connect_eventually("the reloaded route", &url).await;
    echo_round_trip(&mut reloaded, "after the reload").await;

    let tasks = format!("/proc/{}/task", gw.process.pid());
    let threads: Vec<String> = std::fs::read_dir(&tasks)
        .unwrap()
        .map(|t| {
            let comm = t.unwrap().path().join("comm");
            std::fs::read_to_string(comm)
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect();
    assert_eq!(
        threads.len(),
        1,
        "threads of a one-worker gateway: {threads:?}"
    );
}

/// Editing the routes file while sockets are open: new handshakes see the new table, the
/// open sockets keep working against their old backend (still in the route: an endpoint
/// that leaves its route has its connections drained gently, see tests/drain.rs); a broken
/// edit changes nothing.
#[tokio::test]
async fn routes_file_edit_reloads_without_touching_live_connections() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let old = Echo::start("old").await;
    let new = Echo::start("new").await;
    std::fs::write(&file, routes_yaml(&[("a", "/a/{x}", "/{x}", old.addr)])).unwrap();
    let gw = start_binary(dir.path(), &[]).await;

    let mut live = Vec::new();
    for i in 0..5 {
        let mut ws = connect(&format!("ws://{}/a/{i}?hello=1", gw.listen)).await;
        assert_eq!(hello_name(&mut ws).await, "old");
        live.push(ws);
    }

    // `a` now sends new connections to `new` (the first ready endpoint) and keeps `old`.
    let a_yaml = routes_yaml(&[("a", "/a/{x}", "/{x}", new.addr)])
        + &format!(
            "    - host: {}\n      port: {}\n",
            old.addr.ip(),
            old.addr.port()
        );
    replace_file(
        &file,
        &(a_yaml + "---\n" + &routes_yaml(&[("b", "/b/{x}", "/{x}", new.addr)])),
    );
    // Poll until a new handshake sees the new table.
    let url = format!("ws://{}/b/1?hello=1", gw.listen);
    let mut ws = connect_eventually("the new route", &url).await;
    assert_eq!(hello_name(&mut ws).await, "new");
    let mut fresh = connect(&format!("ws://{}/a/9?hello=1", gw.listen)).await;
    assert_eq!(hello_name(&mut fresh).await, "new");
    for ws in &mut live {
        echo_round_trip(ws, "still here").await;
    }

    // A broken edit is rejected; the table that serves stays.
    replace_file(&file, "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {name: a}\nspec:\n  upstreamPathTemplate: nope\n");
    let metrics_url = format!("http://{}/metrics", gw.admin);
    eventually_async("the broken edit reported", DEADLINE, || async {
        let text = try_get(&metrics_url).await.ok()?.1;
        text.contains("wsgate_route_table_reloads_failed_total 1")
            .then_some(())
    })
    .await;
    let mut after = connect(&format!("ws://{}/b/2?hello=1", gw.listen)).await;
    assert_eq!(hello_name(&mut after).await, "new");
    for ws in &mut live {
        echo_round_trip(ws, "survived the broken edit").await;
    }

    // The first generation lives as long as the connections it routed, and no longer.
    let alive = |n: u32| {
        let metrics_url = metrics_url.clone();
        async move {
            let text = try_get(&metrics_url).await.ok()?.1;
            text.contains(&format!("wsgate_route_tables_alive {n}\n"))
                .then_some(())
        }
    };
    eventually_async("two generations alive", DEADLINE, || alive(2)).await;
    for mut ws in live {
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    }
    eventually_async("the old generation freed", DEADLINE, || alive(1)).await;
}
