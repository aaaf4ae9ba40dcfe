//! The refusal log through the real gateway: each refusal is logged once at `warn` with
//! route, client address and reason, and a flood of refusals is cut to the process-wide
//! budget (`LINES_PER_SECOND`), the refusals left out counted and reported by the next line
//! that gets through, so every refusal is either logged or counted, and all are in the
//! metric. A test binary of its own: the budget is process-wide and the subscriber global.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::logs::CapturedLogs;
use support::*;

const LINES_PER_SECOND: u64 = 20;

fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        tracing::subscriber::set_global_default(logs.subscriber())
            .expect("the only global subscriber");
        logs
    })
}

#[tokio::test]
async fn a_flood_of_refusals_is_logged_within_the_budget_and_every_one_accounted_for() {
    let logs = logs();
    let echo = Echo::start("e").await;
    let mut s = spec("/{everything}", "/{everything}", &[echo.addr]);
    s.allowed_origins = Some(vec!["https://app.example.com".into()]);
    let gw = Gateway::start(&[route("guarded", 0, &s)]).await;
    let addr = gw.server.listen_addr;

    // One refusal on a route: its line names route, client address and reason.
    let resp = raw_request(
        addr,
        format!("GET /chat HTTP/1.1\r\nHost: a\r\nOrigin: https://evil.com\r\n{RAW_UPGRADE}\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&resp), 403, "{resp}");
    let line = eventually("the origin refusal logged", || {
        logs.lines_with("request refused").into_iter().next()
    })
    .await;
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["fields"]["route"], "guarded");
    assert_eq!(line["fields"]["reason"], "origin");
    assert_eq!(line["fields"]["status"], 403);
    assert!(line["fields"]["client"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(line["fields"]["error"]
        .as_str()
        .unwrap()
        .contains("does not allow `Origin: https://evil.com`"));

    // A flood of path refusals from 8 clients at once, bounded in count.
    const FLOOD: u64 = 400;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..FLOOD / 8 {
                let resp = raw_request(addr, b"GET /../etc HTTP/1.1\r\nHost: a\r\n\r\n").await;
                assert_eq!(status_of(&resp), 400, "{resp}");
            }
        }));
    }
    for t in tasks {
        within("the flood", t).await.unwrap();
    }
    let windows = started.elapsed().as_secs() + 2;
    let logged = logs.lines_with("request refused").len() as u64;
    assert!(
        logged <= 1 + LINES_PER_SECOND * windows,
        "{logged} lines for {FLOOD} refusals in {windows} windows"
    );
    assert!(logged < FLOOD, "the flood was cut");

    // One more refusal at a time until a line gets through with the count of those left out.
    let mut sent = 1 + FLOOD;
    eventually_async(
        "a line reporting the refusals left out",
        Duration::from_secs(10),
        || {
            sent += 1;
            async move {
                raw_request(addr, b"GET /%2f HTTP/1.1\r\nHost: a\r\n\r\n").await;
                // Pacing is the point: the log's budget renews each second, so a refusal
                // every ~100 ms reaches the next second without flooding it again.
                tokio::time::sleep(Duration::from_millis(100)).await;
                (!logs.lines_with("refusals left out of the log").is_empty()).then_some(())
            }
        },
    )
    .await;
    let suppressed: u64 = logs
        .lines_with("refusals left out of the log")
        .iter()
        .map(|l| l["fields"]["suppressed"].as_u64().unwrap())
        .sum();
    let logged = logs.lines_with("request refused").len() as u64;
    // Each refusal was logged, or left out and reported by a later line (the last report
    // came with the last refusal sent).
    assert_eq!(
        logged + suppressed,
        sent,
        "{logged} logged + {suppressed} reported"
    );
    let metrics = gw.metrics.encode();
    let counted: u64 = ["origin", "path"]
        .iter()
        .map(|reason| {
            let prefix = format!(
                r#"wsgate_refusals_total{{route="{}",reason="{reason}"}} "#,
                if *reason == "origin" { "guarded" } else { "" }
            );
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&prefix).map(|n| n.parse::<u64>().unwrap()))
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(counted, sent, "every refusal is counted\n{metrics}");
}
