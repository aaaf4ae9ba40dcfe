//! Per-route series appear only once a route is used (issue 21, item 9): through a real
//! gateway, a route that is compiled but never used adds nothing to `/metrics`, a used one
//! adds exactly the series of what it did, and the upstream-connect histogram is one
//! process-wide series set unless the real binary runs with `--per-route-histograms`.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// The sample lines of `text` that carry `route="{route}"`, sorted.
fn series_of(text: &str, route: &str) -> Vec<String> {
    let label = format!("route=\"{route}\"");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(&label))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// One message echoed through the gateway on `url`, then a clean close.
async fn one_echo(url: &str) {
    let mut ws = connect(url).await;
    within("send", ws.send(Message::text("12345")))
        .await
        .unwrap();
    let echoed = within("echo", ws.next()).await;
    assert!(matches!(echoed, Some(Ok(Message::Text(_)))), "{echoed:?}");
    within("close", ws.close(None)).await.unwrap();
    while let Ok(Some(_)) = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await
    {
    }
}

/// Of two compiled routes, only the used one has series, and exactly these: its
/// connection gauge and counter, its traffic both ways and the two sides' Closes; no
/// failure or refusal reason at zero, and the connect histogram without a route label.
#[tokio::test]
async fn only_a_used_route_has_series_and_exactly_those_it_used() {
    let echo = Echo::start("e").await;
    let gw = Gateway::start(&[
        route("used", 0, &spec("/used/{x}", "/{x}", &[echo.addr])),
        route("idle", 1, &spec("/idle/{x}", "/{x}", &[echo.addr])),
    ])
    .await;
    let admin = format!("http://{}/metrics", gw.server.admin_addr);
    let (status, before) = http_get(&admin).await;
    assert_eq!(status, 200);
    assert_eq!(series_of(&before, "used"), Vec::<String>::new(), "{before}");
    assert_eq!(series_of(&before, "idle"), Vec::<String>::new(), "{before}");

    one_echo(&gw.ws("/used/a")).await;
    let want = [
        r#"wsgate_bytes_total{route="used",direction="ClientToUpstream"}"#,
        r#"wsgate_bytes_total{route="used",direction="UpstreamToClient"}"#,
        // Each side's Close as the connection ended (the code is the peers' own).
        r#"wsgate_closes_total{route="used",side="backend","#,
        r#"wsgate_closes_total{route="used",side="client","#,
        r#"wsgate_connections_active{route="used"} 0"#,
        r#"wsgate_connections_total{route="used"} 1"#,
        r#"wsgate_messages_total{route="used",direction="ClientToUpstream"} 1"#,
        r#"wsgate_messages_total{route="used",direction="UpstreamToClient"} 1"#,
    ];
    let text = eventually_async("the connection's series", DEADLINE, || {
        let admin = admin.clone();
        async move {
            let (_, text) = http_get(&admin).await;
            let got = series_of(&text, "used");
            (got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.starts_with(w)))
                .then_some(text)
        }
    })
    .await;
    assert_eq!(series_of(&text, "idle"), Vec::<String>::new(), "{text}");
    assert!(
        text.contains("wsgate_upstream_connect_seconds_count 1\n"),
        "one process-wide connect histogram\n{text}"
    );
}

/// `wsgate run --per-route-histograms`: the route that dialled has its own connect
/// histogram (17 buckets), the idle route none. (A routes file's route is named
/// `FILE#INDEX (NAME)`.)
#[tokio::test]
async fn per_route_histograms_flag_gives_a_dialled_route_its_own_histogram() {
    let echo = Echo::start("e").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes_yaml(&[
            ("dialled", "/dialled/{x}", "/{x}", echo.addr),
            ("quiet", "/quiet/{x}", "/{x}", echo.addr),
        ]),
    )
    .unwrap();
    let process = Process::start(
        &[
            "run",
            "--routes",
            "routes.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--per-route-histograms",
        ],
        dir.path(),
    )
    .await;
    let (listen, admin) = (process.listening.listen, process.listening.admin);
    one_echo(&format!("ws://{listen}/dialled/a")).await;
    let admin = format!("http://{admin}/metrics");
    let text = eventually_async("the route's histogram", DEADLINE, || {
        let admin = admin.clone();
        async move {
            let (_, text) = http_get(&admin).await;
            text.contains(
                r#"wsgate_upstream_connect_seconds_count{route="routes.yaml#1 (dialled)"} 1"#,
            )
            .then_some(text)
        }
    })
    .await;
    let buckets = text
        .lines()
        .filter(|l| {
            l.starts_with("wsgate_upstream_connect_seconds_bucket{")
                && l.contains(r#"route="routes.yaml#1 (dialled)""#)
        })
        .count();
    assert_eq!(buckets, 17, "{text}");
    assert!(
        !text.contains("wsgate_upstream_connect_seconds_count "),
        "{text}"
    );
    assert!(!text.contains("(quiet)"), "{text}");
    drop(process);
}
