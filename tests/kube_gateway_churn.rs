//! Cluster mode end to end, short of a real cluster: the real kube client against the fake
//! API server, the kube source feeding the gateway's `table::Publisher`, the real gateway on
//! loopback and real echo backends whose addresses are the EndpointSlice endpoints. Live
//! WebSockets keep exchanging messages while the slices churn; those of an endpoint that
//! leaves the Service get Close 1001 "endpoint removed" (a gentle drain, issue 21).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wsgate::app::cluster::{Cluster, ClusterOptions};
use wsgate::app::ServerOptions;
use wsgate::model::EndpointState;
use wsgate::source::kube::Resource;

use support::fake_apiserver::FakeApiServer;
use support::{connect, eventually, eventually_async, http_get, within, Echo, Ws, DEADLINE};

/// The bound for a scale-up or scale-down to reach the live table.
const SCALE_BOUND: Duration = Duration::from_secs(1);

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "apps", "name": "chat"},
        "spec": {"ports": [{"name": "ws", "port": 80, "protocol": "TCP"}]}})
}

fn route() -> Value {
    json!({"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute",
        "metadata": {"namespace": "apps", "name": "chat"},
        "spec": {"upstreamPathTemplate": "/chat/{everything}", "downstreamPathTemplate": "/{everything}",
                 "serviceName": "chat", "servicePort": "ws",
                 "loadBalancerOptions": {"type": "RoundRobin"},
                 // A terminating endpoint keeps its connections for the whole test; a
                 // removed one has them closed at once.
                 "drain": {"budget": "1h", "jitter": false}}})
}

#[derive(Clone, Copy)]
enum Pod {
    Ready,
    /// What the EndpointSlice controller shows for a pod being deleted that still serves.
    Terminating,
}

/// One slice per backend: each echo listens on its own port, and a slice's ports apply to
/// all its endpoints.
fn slice(name: &str, backend: SocketAddr, pod: Pod) -> Value {
    let conditions = match pod {
        Pod::Ready => json!({"ready": true, "serving": true, "terminating": false}),
        Pod::Terminating => json!({"ready": false, "serving": true, "terminating": true}),
    };
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "apps", "name": format!("chat-{name}"),
            "labels": {"kubernetes.io/service-name": "chat"}},
        "addressType": "IPv4",
        "ports": [{"name": "ws", "port": backend.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": conditions}]})
}

/// Backends by port, to read the table in backend names.
struct Names(BTreeMap<u16, &'static str>);

impl Names {
    /// The `apps/chat` endpoints of the table now serving, by backend name.
    fn table(&self, cluster: &Cluster) -> BTreeMap<&'static str, EndpointState> {
        let table = cluster.publisher.current();
        table
            .routes()
            .iter()
            .filter(|r| r.route.id.0 == "apps/chat")
            .flat_map(|r| r.route.endpoints.iter())
            .map(|e| {
                let name = self.0.get(&e.port).copied().unwrap_or("unknown");
                (name, e.state)
            })
            .collect()
    }
}

fn states(entries: &[(&'static str, EndpointState)]) -> BTreeMap<&'static str, EndpointState> {
    entries.iter().copied().collect()
}

/// Polls until the live table shows `want`, and fails if that took longer than
/// `SCALE_BOUND`.
async fn table_within_bound(
    what: &str,
    names: &Names,
    cluster: &Cluster,
    want: BTreeMap<&'static str, EndpointState>,
) {
    let start = tokio::time::Instant::now();
    eventually(what, || (names.table(cluster) == want).then_some(())).await;
    let took = start.elapsed();
    assert!(
        took <= SCALE_BOUND,
        "{what}: the table changed after {took:?}, the bound is {SCALE_BOUND:?}"
    );
}

/// Opens a WebSocket through the gateway and returns it with the name of the backend that
/// answered (from the echo's `hello=1` message).
async fn open(gateway: SocketAddr) -> (Ws, String) {
    let mut ws = connect(&format!("ws://{gateway}/chat/room?hello=1")).await;
    let hello = match within("the echo's hello", ws.next()).await {
        Some(Ok(Message::Text(t))) => t,
        other => panic!("expected the echo's hello, got {other:?}"),
    };
    let hello: Value = serde_json::from_str(&hello).expect("hello is JSON");
    let name = hello["echo"]
        .as_str()
        .expect("hello names the echo")
        .to_string();
    (ws, name)
}

/// Opens `n` connections, closes them, and returns which backends answered.
async fn new_connections(gateway: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for _ in 0..n {
        let (mut ws, name) = open(gateway).await;
        within("close", ws.close(None)).await.expect("close");
        names.insert(name);
    }
    names
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Sends a message and expects it back unchanged.
async fn echo_once(ws: &mut Ws, text: String) {
    within("send", ws.send(Message::text(text.clone())))
        .await
        .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
    match within("echo", ws.next()).await {
        Some(Ok(Message::Text(t))) if t.as_str() == text => {}
        other => panic!("expected {text:?} back, got {other:?}"),
    }
}

/// Exchanges messages on `ws` until `stop`, counting round trips in `count`; any lost
/// message or dropped connection fails the test. A Close from the gateway ends it with
/// the Close's code and reason (its endpoint was drained).
async fn chatter(
    mut ws: Ws,
    id: usize,
    count: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<Ws, (u16, String)> {
    loop {
        if *stop.borrow_and_update() {
            return Ok(ws);
        }
        let n = count.load(Ordering::Relaxed);
        let text = format!("conn {id} message {n}");
        within("send", ws.send(Message::text(text.clone())))
            .await
            .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
        match within("echo", ws.next()).await {
            Some(Ok(Message::Text(t))) if t.as_str() == text => {}
            Some(Ok(Message::Close(Some(close)))) => {
                return Err((u16::from(close.code), close.reason.to_string()))
            }
            other => panic!("expected {text:?} back, got {other:?}"),
        }
        count.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

async fn readyz(admin: SocketAddr) -> u16 {
    http_get(&format!("http://{admin}/readyz")).await.0
}

/// `/readyz` is false until the first sync; connections opened before the churn keep
/// echoing through scale-up, a terminating endpoint (for the route's drain budget), and
/// the removal and re-add of another; a removed endpoint's connections get Close 1001
/// "endpoint removed" (b, then a at the scale-down); new connections go only to ready
/// endpoints; each scale step reaches the live table within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_churn_keeps_live_connections_and_sends_new_ones_to_ready_endpoints() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let c = Echo::start("c").await;
    let names = Names(BTreeMap::from([
        (a.addr.port(), "a"),
        (b.addr.port(), "b"),
        (c.addr.port(), "c"),
    ]));

    let fake = FakeApiServer::start().await;
    fake.apply(service()).await;
    fake.apply(route()).await;
    fake.apply(slice("a", a.addr, Pod::Ready)).await;
    fake.apply(slice("b", b.addr, Pod::Ready)).await;
    // The API server is unreachable when the gateway starts.
    fake.set_down(true);

    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let cluster = Cluster::start(
        ClusterOptions {
            namespaces: Vec::new(),
            route_selector: None,
            identity: "wsgate-0".into(),
            lease_namespace: "wsgate-system".into(),
            write_status: true,
            server: ServerOptions {
                listen: "127.0.0.1:0".parse().expect("addr"),
                admin_listen: "127.0.0.1:0".parse().expect("addr"),
                shutdown_delay: Duration::ZERO,
                drain_timeout: Duration::from_secs(2),
                relay_offload: Default::default(),
                listening_file: None,
                max_connections: None,
                client_address: Default::default(),
                drain_jitter: false,
                tls_listen: None,
                metrics: Default::default(),
                access_log: Default::default(),
            },
            sticky_key: wsgate::balance::StickyKey::random(),
            backend_roots: wsgate::table::BackendRoots::none(),
            default_certificate: None,
            default_certificate_secret: None,
        },
        client,
    )
    .await
    .expect("cluster mode starts");
    let gateway = cluster.server.listen_addr;
    let admin = cluster.server.admin_addr;

    // Before the first sync: not ready, and the table is the empty generation 0.
    eventually("a failed list while the API server is down", || {
        (cluster.kube_metrics.watch_errors(Resource::EndpointSlice) > 0).then_some(())
    })
    .await;
    assert_eq!(readyz(admin).await, 503, "not ready before the first sync");
    assert_eq!(cluster.publisher.current().generation(), 0);

    fake.set_down(false);
    eventually_async(
        "/readyz ready after the API server came back",
        DEADLINE,
        || async { (readyz(admin).await == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        names.table(&cluster),
        states(&[("a", EndpointState::Ready), ("b", EndpointState::Ready)]),
        "the first table after the sync has both endpoints"
    );

    // Live connections, spread over a and b by the round robin.
    let mut live = Vec::new();
    for _ in 0..4 {
        live.push(open(gateway).await);
    }
    let first: BTreeSet<String> = live.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(first, set(&["a", "b"]));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut counts = Vec::new();
    let mut chatters = Vec::new();
    for (id, (ws, name)) in live.into_iter().enumerate() {
        let count = Arc::new(AtomicU64::new(0));
        counts.push((name, Arc::clone(&count)));
        chatters.push(tokio::spawn(chatter(ws, id, count, stop_rx.clone())));
    }
    // The connections on the backends in `on` keep echoing.
    let advanced = |what: &'static str, on: &'static [&'static str]| {
        let before: Vec<u64> = counts
            .iter()
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .collect();
        let counts = &counts;
        async move {
            eventually(what, || {
                counts
                    .iter()
                    .zip(&before)
                    .filter(|((name, _), _)| on.contains(&name.as_str()))
                    .all(|((_, c), b)| c.load(Ordering::Relaxed) > *b + 2)
                    .then_some(())
            })
            .await
        }
    };
    let all_advanced = |what: &'static str| advanced(what, &["a", "b"]);
    all_advanced("every live connection echoes before the churn").await;

    // Scale up.
    fake.apply(slice("c", c.addr, Pod::Ready)).await;
    table_within_bound(
        "scale-up to a, b, c",
        &names,
        &cluster,
        states(&[
            ("a", EndpointState::Ready),
            ("b", EndpointState::Ready),
            ("c", EndpointState::Ready),
        ]),
    )
    .await;
    assert_eq!(new_connections(gateway, 6).await, set(&["a", "b", "c"]));
    all_advanced("live connections echo after the scale-up").await;

    // a is terminating: it keeps its connections, takes no new ones.
    fake.apply(slice("a", a.addr, Pod::Terminating)).await;
    table_within_bound(
        "a terminating",
        &names,
        &cluster,
        states(&[
            ("a", EndpointState::Terminating),
            ("b", EndpointState::Ready),
            ("c", EndpointState::Ready),
        ]),
    )
    .await;
    assert_eq!(new_connections(gateway, 6).await, set(&["b", "c"]));
    all_advanced("live connections (a's too) echo while a terminates").await;

    // b leaves the Service.
    fake.delete("EndpointSlice", "apps", "chat-b").await;
    table_within_bound(
        "b removed",
        &names,
        &cluster,
        states(&[
            ("a", EndpointState::Terminating),
            ("c", EndpointState::Ready),
        ]),
    )
    .await;
    assert_eq!(new_connections(gateway, 4).await, set(&["c"]));
    // b's connections are drained (at once: the route's drain has no jitter); a's, on
    // a terminating endpoint, are kept for the route's budget.
    let mut chatters: Vec<_> = chatters.into_iter().map(Some).collect();
    for (id, (name, _)) in counts.iter().enumerate() {
        if name == "b" {
            let task = chatters[id].take().unwrap();
            let ended = within("b's connection drained", task).await.unwrap();
            assert_eq!(
                ended.err(),
                Some((1001, "endpoint removed".to_string())),
                "connection {id} on b"
            );
        }
    }
    advanced("a's connections echo after b left the table", &["a"]).await;

    // b comes back.
    fake.apply(slice("b", b.addr, Pod::Ready)).await;
    table_within_bound(
        "b re-added",
        &names,
        &cluster,
        states(&[
            ("a", EndpointState::Terminating),
            ("b", EndpointState::Ready),
            ("c", EndpointState::Ready),
        ]),
    )
    .await;
    assert_eq!(new_connections(gateway, 4).await, set(&["b", "c"]));
    advanced("a's connections echo after b came back", &["a"]).await;

    // Scale down: a's slice goes away entirely, and its connections are drained.
    fake.delete("EndpointSlice", "apps", "chat-a").await;
    table_within_bound(
        "scale-down to b, c",
        &names,
        &cluster,
        states(&[("b", EndpointState::Ready), ("c", EndpointState::Ready)]),
    )
    .await;
    for (id, task) in chatters.into_iter().enumerate() {
        let Some(task) = task else { continue };
        let ended = within("a's connection drained", task)
            .await
            .unwrap_or_else(|e| panic!("connection {id} failed during the churn: {e}"));
        assert_eq!(
            ended.err(),
            Some((1001, "endpoint removed".to_string())),
            "connection {id} on a"
        );
    }
    drop(stop_tx);
    // Connections opened now, on b and c, echo.
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(open(gateway).await);
    }
    let names_after: BTreeSet<String> = after.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(names_after, set(&["b", "c"]));
    for (id, (mut ws, _)) in after.into_iter().enumerate() {
        echo_once(&mut ws, format!("conn {id} after the churn")).await;
        within("close", ws.close(None)).await.expect("close");
    }
    for (name, count) in &counts {
        assert!(
            count.load(Ordering::Relaxed) > 10,
            "the connection to {name} exchanged only {count:?} messages"
        );
    }
    assert!(
        names
            .table(&cluster)
            .values()
            .all(|s| *s == EndpointState::Ready),
        "{:?}",
        names.table(&cluster)
    );

    within("cluster shutdown", cluster.shutdown()).await;
}
