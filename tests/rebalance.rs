//! Rebalancing after a scale-out (issue 21, item 6) through the real gateway on loopback:
//! a route on two endpoints holds its connections; two endpoints are added; wsgate closes
//! the oldest connections of the over-loaded endpoints with 1012 at the route's rate, the
//! clients reconnect (LeastConnection sends them to the new endpoints), and the skew
//! falls to `maxSkew` within the time the rate allows.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use wsgate::api::{RebalanceSpec, WsRouteSpec};

/// What the test's clients saw: each close of the gateway (code, the closed connection's
/// backend and its place in the opening order), and which backend every live client is on.
#[derive(Default)]
struct Seen {
    closes: Vec<(Instant, u16, String, String, usize)>,
    live: HashMap<usize, String>,
}

fn rebalance_spec(backends: &[std::net::SocketAddr]) -> WsRouteSpec {
    let mut s = spec("/r/{x}", "/{x}", backends);
    s.load_balancer_options =
        Some(serde_json::from_value(serde_json::json!({"type": "LeastConnection"})).unwrap());
    s.rebalance = Some(RebalanceSpec {
        max_skew: 1.5,
        per_second: Some(40),
    });
    s
}

async fn hello(ws: &mut Ws) -> String {
    match within("hello", ws.next()).await {
        Some(Ok(Message::Text(t))) => serde_json::from_str::<serde_json::Value>(t.as_str())
            .unwrap()["echo"]
            .as_str()
            .unwrap()
            .to_string(),
        other => panic!("expected hello, got {other:?}"),
    }
}

/// A client that, when the gateway closes it, records the close and reconnects (as a
/// real client does on 1012), until the test ends.
fn client(url: String, id: usize, ws: Ws, backend: String, seen: Arc<Mutex<Seen>>) {
    tokio::spawn(async move {
        let (mut ws, mut backend, mut original) = (ws, backend, true);
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((0, String::new()));
                    {
                        let mut seen = seen.lock().unwrap();
                        // Only the connections opened before the scale-out carry their
                        // place in the opening order.
                        let place = if original { id } else { usize::MAX };
                        seen.closes
                            .push((Instant::now(), code, reason, backend.clone(), place));
                        seen.live.remove(&id);
                    }
                    while let Some(Ok(_)) = ws.next().await {}
                    let mut next = connect(&url).await;
                    backend = hello(&mut next).await;
                    seen.lock().unwrap().live.insert(id, backend.clone());
                    ws = next;
                    original = false;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    });
}

/// The most loaded backend's live clients over the fair share (clients over backends).
fn client_skew(live: &HashMap<usize, String>, backends: usize) -> f64 {
    let mut per: HashMap<&str, usize> = HashMap::new();
    for b in live.values() {
        *per.entry(b).or_default() += 1;
    }
    let most = per.values().copied().max().unwrap_or(0);
    most as f64 / (live.len() as f64 / backends as f64)
}

fn skew_metric(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix("wsgate_route_skew{route=\"rb\"} ")
            .and_then(|v| v.parse().ok())
    })
}

/// Four endpoints, two added after 400 connections on the first two (about 200 each):
/// with `rebalance: {maxSkew: 1.5, perSecond: 40}` each of the two closes its ~50 oldest
/// connections over the 150 its share allows, with 1012, at most 40 per second, and the
/// skew is at most 1.5 within the time that rate needs; clients reconnect to the new
/// endpoints. (The shape, at 40 per second instead of 5 to keep the test short.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skew_falls_to_max_skew_after_scale_out_at_the_set_rate_oldest_first() {
    wsgate::app::raise_fd_limit();
    let echoes = [
        Echo::start("a").await,
        Echo::start("b").await,
        Echo::start("c").await,
        Echo::start("d").await,
    ];
    let addrs: Vec<_> = echoes.iter().map(|e| e.addr).collect();
    let gw = Gateway::start_with_drain(
        &[route("rb", 0, &rebalance_spec(&addrs[..2]))],
        Duration::from_secs(5),
        false,
        OffloadOptions {
            threads: 0,
            ..Default::default()
        },
    )
    .await;
    let url = gw.ws("/r/x?hello=1");
    let seen = Arc::new(Mutex::new(Seen::default()));
    // Opened one after the other, so the gateway registers them in this order.
    let mut order: HashMap<String, Vec<usize>> = HashMap::new();
    for id in 0..400 {
        let mut ws = connect(&url).await;
        let backend = hello(&mut ws).await;
        order.entry(backend.clone()).or_default().push(id);
        seen.lock().unwrap().live.insert(id, backend.clone());
        client(url.clone(), id, ws, backend, Arc::clone(&seen));
    }
    // LeastConnection splits them evenly, give or take a tie.
    let on = |b: &str| order.get(b).map_or(0, Vec::len);
    assert!((195..=205).contains(&on("a")), "a holds {}", on("a"));
    assert_eq!(on("a") + on("b"), 400);
    // Two endpoints alone hold their fair share: no skew, nothing closed.
    eventually("the skew of two balanced endpoints measured", || {
        skew_metric(&gw.metrics.encode())
            .filter(|s| *s <= 1.0)
            .map(|_| ())
    })
    .await;
    assert!(seen.lock().unwrap().closes.is_empty());

    let scaled_out = Instant::now();
    gw.publisher
        .publish(&[route("rb", 0, &rebalance_spec(&addrs))]);
    // Fair share 100, allowed 150: about 50 closes on each of a and b at 40 per second.
    let excess = |b: &str| on(b) - 150;
    let expected = Duration::from_secs_f64(excess("a").max(excess("b")) as f64 / 40.0);
    let settled = eventually_async("the skew at most 1.5", expected * 3 + DEADLINE, || {
        let seen = Arc::clone(&seen);
        let metrics = gw.metrics.encode();
        async move {
            let seen = seen.lock().unwrap();
            let closed = seen.closes.len();
            (closed >= 100
                && seen.live.len() == 400
                && skew_metric(&metrics).is_some_and(|s| s <= 1.5)
                && client_skew(&seen.live, 4) <= 1.5)
                .then(Instant::now)
        }
    })
    .await;
    let took = settled - scaled_out;
    eprintln!(
        "skew at most 1.5 after {took:?} (the rate needs {expected:?}); a held {}, b {}",
        on("a"),
        on("b")
    );
    assert!(
        took <= expected * 3,
        "the skew took {took:?} to settle (the rate allows it in {expected:?})"
    );
    // Let the rebalancer run on a little: a settled route loses nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.closes.len(), 100, "closes beyond the skew's need");
    for (_, code, reason, _, _) in &seen.closes {
        assert_eq!((*code, reason.as_str()), (1012, "rebalancing"));
    }
    // The rate: at most 40 per second from one endpoint, the budget refilling from empty
    // (at most one tick's worth, 4, may date from before the scale-out), so k closes on
    // one take at least (k - 4) / 40 seconds.
    for backend in ["a", "b"] {
        let k = excess(backend);
        let times: Vec<Instant> = seen
            .closes
            .iter()
            .filter(|c| c.3 == backend)
            .map(|c| c.0)
            .collect();
        assert_eq!(times.len(), k, "closes on {backend}");
        let last = *times.iter().max().unwrap() - scaled_out;
        let least = Duration::from_secs_f64((k as f64 - 4.0) / 40.0);
        assert!(
            last >= least,
            "{k} closes on {backend} within {last:?}: faster than 40 per second"
        );
        // Oldest first: the closed ones are the first k opened on that backend.
        let mut closed: Vec<usize> = seen
            .closes
            .iter()
            .filter(|c| c.3 == backend)
            .map(|c| c.4)
            .collect();
        closed.sort_unstable();
        assert_eq!(closed, order[backend][..k], "not the oldest on {backend}");
    }
    // The reconnected clients went to the new endpoints.
    let on_new = seen
        .live
        .values()
        .filter(|b| *b == "c" || *b == "d")
        .count();
    assert_eq!(on_new, 100);
    assert!(
        gw.metrics
            .encode()
            .contains("wsgate_scheduled_closes_total{route=\"rb\",reason=\"rebalance\"} 100"),
        "{}",
        gw.metrics.encode()
    );
}
