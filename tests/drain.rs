//! Gentle drains (issue 21, item 5) through the real gateway on loopback: wsgate's own
//! shutdown spreads Close 1001 over the route's budget (or closes at once without jitter),
//! an endpoint removed from a route has its connections (only those) closed over the
//! budget, a terminating endpoint keeps them for the budget and then closes them. Close
//! times are measured by real WebSocket clients; the spread is asserted on their
//! distribution.

mod support;

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsgate::api::{DrainSpec, WsRouteSpec};
use wsgate::model::{EndpointState, Route};

/// A client's end as it saw it: when the Close came (since the test's trigger), its code
/// and reason, and which backend the connection was on.
#[derive(Debug, Clone)]
struct Closed {
    at: Duration,
    code: u16,
    reason: String,
    backend: String,
}

fn drain_spec(
    up: &str,
    backends: &[std::net::SocketAddr],
    budget: &str,
    jitter: bool,
) -> WsRouteSpec {
    let mut s = spec(up, "/{x}", backends);
    s.drain = Some(DrainSpec {
        budget: Some(budget.into()),
        jitter: Some(jitter),
    });
    s.load_balancer_options =
        Some(serde_json::from_value(serde_json::json!({"type": "RoundRobin"})).unwrap());
    s
}

/// Opens `n` WebSockets at `url_of(i)` (50 at a time) and reads each one's hello: the name
/// of the backend it reached.
async fn open(n: usize, url_of: impl Fn(usize) -> String) -> Vec<(String, Ws)> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let opened = join_all(chunk.iter().map(|&i| {
            let url = url_of(i);
            async move {
                let mut ws = connect(&url).await;
                let backend = match within("hello", ws.next()).await {
                    Some(Ok(Message::Text(t))) => {
                        serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap()["echo"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    }
                    other => panic!("expected hello, got {other:?}"),
                };
                (backend, ws)
            }
        }))
        .await;
        out.extend(opened);
    }
    out
}

/// Watches every client until the gateway closes it; the times count from `t0` (set
/// by the caller once it triggers the drain). Each client answers the Close (tungstenite
/// does) and reads on until the connection ends, as a real client would.
fn watch(
    clients: Vec<(String, Ws)>,
) -> (
    tokio::sync::watch::Sender<Option<Instant>>,
    tokio::task::JoinHandle<Vec<Closed>>,
) {
    let (t0_tx, t0_rx) = tokio::sync::watch::channel(None::<Instant>);
    let task = tokio::spawn(async move {
        let tasks = clients.into_iter().map(|(backend, mut ws)| {
            let t0_rx = t0_rx.clone();
            tokio::spawn(async move {
                let deadline = Duration::from_secs(30);
                let mut closed = None;
                while let Ok(Some(msg)) = tokio::time::timeout(deadline, ws.next()).await {
                    match msg {
                        Ok(Message::Close(frame)) => {
                            let now = Instant::now();
                            let t0 = t0_rx.borrow().expect("closed before the trigger");
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((0, String::new()));
                            closed = Some(Closed {
                                at: now.saturating_duration_since(t0),
                                code,
                                reason,
                                backend: backend.clone(),
                            });
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                closed.unwrap_or_else(|| panic!("a client on {backend} ended without a Close"))
            })
        });
        join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("client task"))
            .collect()
    });
    (t0_tx, task)
}

/// The closes are spread over `budget`, not bunched: every one inside the budget, no
/// slice of `slices` holding more than 3× its share, and most slices used.
fn assert_spread(closes: &[Closed], from: Duration, budget: Duration, slices: usize) {
    let mut counts = vec![0usize; slices];
    for c in closes {
        assert!(
            c.at >= from && c.at < from + budget,
            "a close at {:?}, outside [{from:?}, {:?})",
            c.at,
            from + budget
        );
        let i = ((c.at - from).as_secs_f64() / budget.as_secs_f64() * slices as f64) as usize;
        counts[i.min(slices - 1)] += 1;
    }
    eprintln!(
        "{} closes over {slices} slices of {budget:?} from {from:?}: {counts:?}",
        closes.len()
    );
    let share = closes.len() as f64 / slices as f64;
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            (n as f64) <= 3.0 * share,
            "slice {i} of {slices} holds {n} closes (share {share:.1}): {counts:?}"
        );
    }
    let used = counts.iter().filter(|&&n| n > 0).count();
    assert!(
        used * 10 >= slices * 7,
        "closes bunched into {used} of {slices} slices: {counts:?}"
    );
}

fn assert_all(closes: &[Closed], code: u16, reason: &str) {
    for c in closes {
        assert_eq!((c.code, c.reason.as_str()), (code, reason), "{c:?}");
    }
}

/// Every client in `clients` still relays: a message goes and comes back.
async fn still_relays(clients: &mut [(String, Ws)]) {
    for (backend, ws) in clients.iter_mut() {
        within("send", ws.send(Message::text("still here")))
            .await
            .unwrap_or_else(|e| panic!("client on {backend}: {e}"));
        loop {
            match within("echo", ws.next()).await {
                Some(Ok(Message::Text(t))) if t.as_str() == "still here" => break,
                Some(Ok(Message::Text(_))) => continue,
                other => panic!("client on {backend} closed: {other:?}"),
            }
        }
    }
}

/// wsgate's shutdown with `drain: {budget: 2s, jitter: true}`: 1,000 clients get Close 1001
/// "gateway shutting down" spread over the budget, and the shutdown ends clean within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spreads_close_1001_over_the_route_budget() {
    wsgate::app::raise_fd_limit();
    let echo = Echo::start("a").await;
    let budget = Duration::from_secs(2);
    let r = route("spread", 0, &drain_spec("/s/{x}", &[echo.addr], "2s", true));
    // The process default would close at once: the route's own block decides.
    let gw =
        Gateway::start_with_drain(&[r], Duration::from_secs(5), false, Default::default()).await;
    let clients = open(1000, |i| gw.ws(&format!("/s/{i}?hello=1"))).await;
    let (t0, closes) = watch(clients);
    t0.send_replace(Some(Instant::now()));
    let started = Instant::now();
    let clean = within("shutdown", gw.server.shutdown()).await;
    let took = started.elapsed();
    let closes = within("every client closed", closes).await.unwrap();
    assert!(clean, "the drain ended with connections left");
    assert_eq!(closes.len(), 1000);
    assert_all(&closes, 1001, "gateway shutting down");
    assert_spread(&closes, Duration::ZERO, budget, 10);
    assert!(
        took < budget + Duration::from_millis(500),
        "shutdown took {took:?}"
    );
}

/// Without jitter (the process default), every client gets Close 1001 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_jitter_closes_every_socket_at_once() {
    wsgate::app::raise_fd_limit();
    let echo = Echo::start("a").await;
    let r = route("once", 0, &spec("/o/{x}", "/{x}", &[echo.addr]));
    let gw =
        Gateway::start_with_drain(&[r], Duration::from_secs(5), false, Default::default()).await;
    let clients = open(100, |i| gw.ws(&format!("/o/{i}?hello=1"))).await;
    let (t0, closes) = watch(clients);
    t0.send_replace(Some(Instant::now()));
    assert!(within("shutdown", gw.server.shutdown()).await);
    let closes = within("every client closed", closes).await.unwrap();
    assert_all(&closes, 1001, "gateway shutting down");
    let last = closes.iter().map(|c| c.at).max().unwrap();
    assert!(
        last < Duration::from_millis(500),
        "the last close came at {last:?}"
    );
}

/// The routes of the removal and terminating tests: two backends, round robin.
async fn two_backends(
    budget: &str,
    offload: OffloadOptions,
) -> (Echo, Echo, WsRouteSpec, Gateway, Vec<(String, Ws)>) {
    wsgate::app::raise_fd_limit();
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let s = drain_spec("/t/{x}", &[a.addr, b.addr], budget, true);
    let gw = Gateway::start_with_drain(
        &[route("two", 0, &s)],
        Duration::from_secs(30),
        false,
        offload,
    )
    .await;
    let clients = open(160, |i| gw.ws(&format!("/t/{i}?hello=1"))).await;
    let on_b = clients.iter().filter(|(n, _)| n == "b").count();
    assert!(
        (60..=100).contains(&on_b),
        "round robin put {on_b} of 160 on b"
    );
    (a, b, s, gw, clients)
}

/// An endpoint removed from its route: its connections, and only those, get Close 1001
/// "endpoint removed" spread over the route's budget; the others keep relaying. On the
/// async runtime and on relay threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_connections_get_1001_spread_over_the_budget() {
    // No relay threads: every relay stays on the async runtime.
    removed_endpoint(OffloadOptions {
        threads: 0,
        ..Default::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_endpoint_connections_on_relay_threads_get_1001_spread_over_the_budget() {
    // One message (the hello) moves a relay to the thread.
    removed_endpoint(OffloadOptions {
        threads: 1,
        after_messages: 1,
    })
    .await;
}

async fn removed_endpoint(offload: OffloadOptions) {
    let budget = Duration::from_millis(1500);
    let (a, _b, s, gw, clients) = two_backends("1500ms", offload).await;
    if offload.after_messages == 1 {
        eventually("relays moved to the relay thread", || {
            gw.metrics
                .encode()
                .contains("wsgate_relays_on_threads 160")
                .then_some(())
        })
        .await;
    }
    let (mut on_a, on_b): (Vec<_>, Vec<_>) = clients.into_iter().partition(|(n, _)| n == "a");
    let n_b = on_b.len();
    let (t0, closes) = watch(on_b);
    let mut only_a = s.clone();
    only_a.downstream_host_and_ports.truncate(1);
    assert_eq!(
        only_a.downstream_host_and_ports[0].port,
        i32::from(a.addr.port())
    );
    t0.send_replace(Some(Instant::now()));
    gw.publisher.publish(&[route("two", 0, &only_a)]);
    let closes = within("b's clients closed", closes).await.unwrap();
    assert_eq!(closes.len(), n_b);
    assert!(closes.iter().all(|c| c.backend == "b"));
    assert_all(&closes, 1001, "endpoint removed");
    assert_spread(&closes, Duration::ZERO, budget, 5);
    // a's connections were not touched.
    still_relays(&mut on_a).await;
    let metrics = gw.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "wsgate_scheduled_closes_total{{route=\"two\",reason=\"endpoint_removed\"}} {n_b}"
        )),
        "{metrics}"
    );
}

/// An endpoint that starts terminating keeps its connections for the route's budget; then
/// they get Close 1001 "endpoint terminating", spread over the next budget. The other
/// endpoint's connections keep relaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_endpoint_connections_are_kept_for_the_budget_then_closed() {
    let budget = Duration::from_secs(1);
    let (_a, _b, s, gw, clients) = two_backends("1s", Default::default()).await;
    let (mut on_a, on_b): (Vec<_>, Vec<_>) = clients.into_iter().partition(|(n, _)| n == "a");
    let n_b = on_b.len();
    let (t0, closes) = watch(on_b);
    let mut terminating: Route = route("two", 0, &s);
    terminating.endpoints[1].state = EndpointState::Terminating;
    t0.send_replace(Some(Instant::now()));
    gw.publisher.publish(&[terminating]);
    let closes = within("b's clients closed", closes).await.unwrap();
    assert_eq!(closes.len(), n_b);
    assert_all(&closes, 1001, "endpoint terminating");
    // None before the budget passed; then spread over the next one.
    assert_spread(&closes, budget, budget, 5);
    still_relays(&mut on_a).await;
}

/// The real binary: `--drain-jitter` spreads the Close 1001 of SIGTERM's drain over
/// `--drain-timeout` for routes without their own `drain`, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_drain_jitter_spreads_closes_over_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("e").await;
    std::fs::write(
        dir.path().join("routes.yaml"),
        routes_yaml(&[("all", "/{x}", "/{x}", echo.addr)]),
    )
    .unwrap();
    let mut process = Process::start(
        &[
            "run",
            "--routes",
            "routes.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--drain-timeout",
            "2s",
            "--drain-jitter",
        ],
        dir.path(),
    )
    .await;
    let listen = process.listening.listen;
    let clients = open(200, |i| format!("ws://{listen}/c{i}?hello=1")).await;
    let (t0, closes) = watch(clients);
    t0.send_replace(Some(Instant::now()));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &process.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let closes = within("every client closed", closes).await.unwrap();
    assert_all(&closes, 1001, "gateway shutting down");
    assert_spread(&closes, Duration::ZERO, Duration::from_secs(2), 10);
    let code = process.exit_status().await;
    assert!(code.success(), "exit status {code:?}\n{}", process.log());
}

/// `wsgate check` names a bad `drain` or `rebalance` field with its line.
#[test]
fn check_names_bad_drain_and_rebalance_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drain.yaml");
    let text = "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata:\n  name: a\nspec:\n  upstreamPathTemplate: /a\n  downstreamPathTemplate: /\n  downstreamHostAndPorts:\n    - {host: 127.0.0.1, port: 9001}\n  drain:\n    budget: 0s\n  rebalance:\n    maxSkew: 0.9\n    perSecond: 0\n";
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "drain.yaml:11: document 1 (a): spec.drain.budget: InvalidParameters: the budget must be more than 0",
        "drain.yaml:13: document 1 (a): spec.rebalance.maxSkew: InvalidParameters: 0.9 is not a skew",
        "drain.yaml:14: document 1 (a): spec.rebalance.perSecond: InvalidParameters: 0 is not a rate",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
