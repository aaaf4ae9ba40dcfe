//! The soak test (issue 21): a thousand live WebSockets (ws and wss) exchange messages while
//! a hundred changes happen — route edits, endpoints added and removed, certificates
//! rotated — and then every backend is replaced one by one. Nothing may be lost: every
//! connection either lives to the end, or is closed by its own client (clients recycle
//! their connections now and then, as real ones do), or is drained deliberately because
//! its endpoint left, with Close 1001 inside the route's drain budget, spread over it.
//!
//! Standalone first (the real binary, a routes file it reloads), then cluster mode (the
//! kube source against the fake API server feeding an in-process gateway). Bounded: each
//! phase takes well under a minute; `WSGATE_SOAK_CONNECTIONS` changes the fleet's size.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use support::certs::{self_signed, wss_connect, Leaf};
use support::fake_apiserver::FakeApiServer;
use support::{eventually_async, http_get, Echo, Process, DEADLINE};
use wsgate::app::cluster::{Cluster, ClusterOptions};
use wsgate::app::ServerOptions;

/// The route's drain budget: a removed endpoint's connections get Close 1001 inside it.
const BUDGET: Duration = Duration::from_secs(3);
/// Time allowed past the budget for the Close to travel and the close handshake.
const SLACK: Duration = Duration::from_millis(1500);
/// How often each connection sends a message and waits for its echo.
const PERIOD: Duration = Duration::from_millis(1000);
/// An echo later than this is a lost connection.
const ECHO_DEADLINE: Duration = Duration::from_secs(5);
const CHANGES: usize = 100;
/// Time between two changes.
const CHANGE_EVERY: Duration = Duration::from_millis(200);

fn connections() -> usize {
    std::env::var("WSGATE_SOAK_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

// ---- the fleet of clients ---------------------------------------------------------------

/// How one connection ended.
#[derive(Clone, Debug, PartialEq)]
enum How {
    /// The test stopped the fleet; the connection was alive and echoing until then.
    Stopped,
    /// Its client closed it (recycling) and opened another.
    Recycled,
    /// wsgate (or the backend) sent this Close code.
    Closed(u16),
    /// Anything else: an error, a missing echo, a connection that ended without a Close.
    Lost(String),
}

#[derive(Clone, Debug)]
struct Ended {
    slot: usize,
    backend: String,
    how: How,
    at: Instant,
    echoes: u32,
}

/// Where a slot connects: plain ws to the listener, or wss with SNI `soak.test`.
#[derive(Clone, Copy)]
enum Target {
    Ws(SocketAddr),
    Wss(SocketAddr),
}

struct Fleet {
    stop: watch::Sender<bool>,
    ended: Arc<Mutex<Vec<Ended>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Opens `n` connections (every tenth over TLS when `tls` is given) and waits until all
    /// have their backend's hello.
    async fn open(n: usize, plain: SocketAddr, tls: Option<SocketAddr>) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let ended = Arc::new(Mutex::new(Vec::new()));
        let (up_tx, mut up_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for slot in 0..n {
            let target = match tls {
                Some(addr) if slot % 10 == 9 => Target::Wss(addr),
                _ => Target::Ws(plain),
            };
            let stop = stop_rx.clone();
            let ended = Arc::clone(&ended);
            let up = up_tx.clone();
            tasks.push(tokio::spawn(async move {
                run_slot(slot, target, stop, ended, up).await;
            }));
            if slot % 50 == 49 {
                // Open in waves so the listener's queue is not the subject.
                tokio::task::yield_now().await;
            }
        }
        drop(up_tx);
        let mut up = 0;
        let deadline = tokio::time::Instant::now() + DEADLINE * 3;
        while up < n {
            match tokio::time::timeout_at(deadline, up_rx.recv()).await {
                Ok(Some(())) => up += 1,
                _ => panic!("only {up} of {n} connections opened"),
            }
        }
        // Later hellos (reconnects) are not waited for.
        tokio::spawn(async move { while up_rx.recv().await.is_some() {} });
        Fleet { stop, ended, tasks }
    }

    /// Stops every slot and returns how every connection ended.
    async fn stop(self) -> Vec<Ended> {
        self.stop.send_replace(true);
        for task in self.tasks {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("a slot stops in time")
                .expect("a slot does not panic");
        }
        let ended = self.ended.lock().unwrap().clone();
        ended
    }
}

/// One client slot: connect, exchange messages, reconnect after its own recycling or a
/// drain, until stopped or lost.
async fn run_slot(
    slot: usize,
    target: Target,
    stop: watch::Receiver<bool>,
    ended: Arc<Mutex<Vec<Ended>>>,
    up: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut round = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        // Recycle after 8 to 20 s, differently per slot and round.
        let lifetime =
            Duration::from_millis(8_000 + (slot as u64 * 7919 + round * 104_729) % 12_000);
        round += 1;
        let path = format!("/soak/{slot}?hello=1");
        let end = match target {
            Target::Ws(addr) => {
                match tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await {
                    Ok((ws, _)) => session(slot, ws, lifetime, stop.clone(), &up).await,
                    Err(e) => lost(slot, "", format!("connect: {e}")),
                }
            }
            Target::Wss(addr) => {
                let (ws, _) = wss_connect(addr, "soak.test", &path).await;
                session(slot, ws, lifetime, stop.clone(), &up).await
            }
        };
        let again = matches!(end.how, How::Recycled | How::Closed(1001 | 1012));
        ended.lock().unwrap().push(end);
        if !again {
            return;
        }
    }
}

fn lost(slot: usize, backend: &str, why: String) -> Ended {
    Ended {
        slot,
        backend: backend.into(),
        how: How::Lost(why),
        at: Instant::now(),
        echoes: 0,
    }
}

async fn session<S>(
    slot: usize,
    mut ws: WebSocketStream<S>,
    lifetime: Duration,
    mut stop: watch::Receiver<bool>,
    up: &tokio::sync::mpsc::UnboundedSender<()>,
) -> Ended
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let backend = match tokio::time::timeout(ECHO_DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<serde_json::Value>(t.as_str())
            .ok()
            .and_then(|v| v["echo"].as_str().map(str::to_string))
            .unwrap_or_default(),
        other => return lost(slot, "", format!("no hello: {other:?}")),
    };
    let _ = up.send(());
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(
        started + PERIOD.mul_f64((slot % 100) as f64 / 100.0),
        PERIOD,
    );
    let mut pending: Option<(String, Instant)> = None;
    let mut echoes = 0u32;
    let mut n = 0u64;
    let end = |how: How, echoes: u32| Ended {
        slot,
        backend: backend.clone(),
        how,
        at: Instant::now(),
        echoes,
    };
    loop {
        tokio::select! {
            _ = stop.changed() => {
                if pending.is_some() {
                    // Wait for the echo in flight before closing.
                    match tokio::time::timeout(ECHO_DEADLINE, ws.next()).await {
                        Ok(Some(Ok(Message::Text(_)))) => echoes += 1,
                        other => return end(How::Lost(format!("last echo: {other:?}")), echoes),
                    }
                }
                let _ = ws.close(None).await;
                return end(How::Stopped, echoes);
            }
            _ = tick.tick() => {
                if let Some((_, sent)) = &pending {
                    if sent.elapsed() > ECHO_DEADLINE {
                        return end(How::Lost("echo timed out".into()), echoes);
                    }
                    continue;
                }
                if started.elapsed() > lifetime {
                    let _ = ws.close(None).await;
                    // Read to the end of the close handshake.
                    let _ = tokio::time::timeout(ECHO_DEADLINE, async {
                        while ws.next().await.is_some() {}
                    })
                    .await;
                    return end(How::Recycled, echoes);
                }
                n += 1;
                let text = format!("{slot}:{n}");
                if let Err(e) = ws.send(Message::text(text.clone())).await {
                    return end(How::Lost(format!("send: {e}")), echoes);
                }
                pending = Some((text, Instant::now()));
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match &pending {
                    Some((want, _)) if t.as_str() == want => {
                        echoes += 1;
                        pending = None;
                    }
                    _ => return end(How::Lost(format!("unexpected text {t:?}")), echoes),
                },
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    // Finish the close handshake as a client does.
                    let _ = tokio::time::timeout(ECHO_DEADLINE, async {
                        while ws.next().await.is_some() {}
                    })
                    .await;
                    let how = if pending.is_some() && !matches!(code, 1001 | 1012) {
                        How::Lost(format!("closed {code} with an echo owed"))
                    } else {
                        How::Closed(code)
                    };
                    return end(how, echoes);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return end(How::Lost(format!("read: {e}")), echoes),
                None => return end(How::Lost("ended without a Close".into()), echoes),
            },
        }
    }
}

// ---- what the run must show -------------------------------------------------------------

/// When each backend left its route, every time it did (the drain of its connections
/// starts then).
type Removals = HashMap<String, Vec<Instant>>;

/// Checks every ending against the removals and returns the drained ones per backend.
fn verdict(phase: &str, ended: &[Ended], removed: &Removals) -> HashMap<String, Vec<Duration>> {
    let mut drained: HashMap<String, Vec<Duration>> = HashMap::new();
    let mut problems = Vec::new();
    let (mut stopped, mut recycled, mut echoes) = (0, 0, 0u64);
    for e in ended {
        echoes += u64::from(e.echoes);
        match &e.how {
            How::Stopped => stopped += 1,
            How::Recycled => recycled += 1,
            How::Closed(code @ (1001 | 1012)) => {
                let removals = removed
                    .get(&e.backend)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                // The removal this close belongs to: the last one before it.
                match removals.iter().rev().find(|at| **at <= e.at) {
                    Some(at) if e.at - *at <= BUDGET + SLACK => {
                        drained.entry(e.backend.clone()).or_default().push(e.at - *at);
                    }
                    Some(at) => problems.push(format!(
                        "slot {} on {}: Close {code} {:?} after its backend left (budget {BUDGET:?})",
                        e.slot,
                        e.backend,
                        e.at - *at
                    )),
                    None => problems.push(format!(
                        "slot {} on {}: Close {code}, but its backend had not left",
                        e.slot, e.backend
                    )),
                }
            }
            How::Closed(code) => problems.push(format!(
                "slot {} on {}: unexpected Close {code}",
                e.slot, e.backend
            )),
            How::Lost(why) => {
                problems.push(format!("slot {} on {}: lost: {why}", e.slot, e.backend))
            }
        }
    }
    let total: usize = drained.values().map(Vec::len).sum();
    eprintln!(
        "soak {phase}: {} connections ended: {stopped} alive to the end, {recycled} recycled by their client, {total} drained ({}), {echoes} echoes",
        ended.len(),
        drained
            .iter()
            .map(|(b, d)| format!("{b}: {}", d.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        problems.is_empty(),
        "soak {phase}: {} connections lost or closed wrongly, e.g.:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
    drained
}

/// The closes of one drained backend are spread over the budget, not bunched: no tenth of
/// the budget holds more than three times its share (plus a little, for small counts).
fn assert_spread(phase: &str, backend: &str, after_removal: &[Duration]) {
    let mut slices = [0usize; 10];
    for d in after_removal {
        let i = (d.as_secs_f64() / BUDGET.as_secs_f64() * 10.0) as usize;
        slices[i.min(9)] += 1;
    }
    let share = after_removal.len() as f64 / 10.0;
    let max = *slices.iter().max().unwrap();
    eprintln!(
        "soak {phase}: {backend}'s {} drained connections per tenth of the {BUDGET:?} budget: {slices:?}",
        after_removal.len()
    );
    assert!(
        (max as f64) <= 3.0 * share + 5.0,
        "{backend}'s drain is bunched: {slices:?} per tenth of the budget"
    );
}

// ---- standalone -------------------------------------------------------------------------

struct RoutesFile {
    path: std::path::PathBuf,
    /// Endpoints of the soak routes, by backend name.
    endpoints: Vec<(String, SocketAddr)>,
    edit: usize,
    cert: usize,
}

impl RoutesFile {
    fn render(&self) -> String {
        let endpoints: String = self
            .endpoints
            .iter()
            .map(|(_, a)| format!("    - {{host: {}, port: {}}}\n", a.ip(), a.port()))
            .collect();
        let common = format!(
            "  downstreamHostAndPorts:\n{endpoints}  loadBalancerOptions: {{type: LeastConnection}}\n  drain: {{budget: {}ms, jitter: true}}\n",
            BUDGET.as_millis()
        );
        format!(
            "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {{name: soak}}\nspec:\n  upstreamPathTemplate: /soak/{{x}}\n  downstreamPathTemplate: /{{x}}\n{common}---\n\
             apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {{name: soak-tls}}\nspec:\n  upstreamHost: soak.test\n  upstreamPathTemplate: /soak/{{x}}\n  downstreamPathTemplate: /{{x}}\n  tls: {{certFile: soak-{cert}.crt, keyFile: soak-{cert}.key}}\n{common}---\n\
             apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {{name: edited}}\nspec:\n  upstreamPathTemplate: /edited-{edit}/{{x}}\n  downstreamPathTemplate: /{{x}}\n  downstreamHostAndPorts:\n{endpoints}",
            cert = self.cert,
            edit = self.edit,
        )
    }

    fn write(&self) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, self.render()).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

/// Waits until `url` (a plain HTTP GET through the gateway) is routed: the echo answers
/// 200 once the reload that added the route is serving.
async fn routed(url: &str) {
    eventually_async("the edit served", DEADLINE, || async {
        (http_get(url).await.0 == 200).then_some(())
    })
    .await;
}

// ---- cluster mode -----------------------------------------------------------------------

fn kube_route(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute",
        "metadata": {"namespace": "apps", "name": name}, "spec": spec})
}

fn kube_soak_spec() -> Value {
    json!({"upstreamPathTemplate": "/soak/{x}", "downstreamPathTemplate": "/{x}",
        "serviceName": "soak", "servicePort": "ws",
        "loadBalancerOptions": {"type": "LeastConnection"},
        "drain": {"budget": format!("{}ms", BUDGET.as_millis()), "jitter": true}})
}

fn kube_edited(edit: usize) -> Value {
    kube_route(
        "edited",
        json!({"upstreamPathTemplate": format!("/edited-{edit}/{{x}}"),
            "downstreamPathTemplate": "/{x}", "serviceName": "soak", "servicePort": "ws"}),
    )
}

fn kube_slice(name: &str, backend: SocketAddr) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "apps", "name": format!("soak-{name}"),
            "labels": {"kubernetes.io/service-name": "soak"}},
        "addressType": "IPv4",
        "ports": [{"name": "ws", "port": backend.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend.ip().to_string()],
            "conditions": {"ready": true, "serving": true, "terminating": false}}]})
}

fn kube_tls_secret(leaf: &Leaf) -> Value {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"namespace": "apps", "name": "soak-cert"},
        "data": {"tls.crt": b64(&leaf.cert_pem), "tls.key": b64(&leaf.key_pem)}})
}

// ---- the run, for either source ---------------------------------------------------------

/// Where the routes come from, and how each kind of change is made there.
enum Source<'a> {
    File(RoutesFile, &'a std::path::Path),
    Kube(&'a FakeApiServer),
}

impl Source<'_> {
    async fn edit(&mut self, edit: usize) {
        match self {
            Source::File(file, _) => {
                file.edit = edit;
                file.write();
            }
            Source::Kube(fake) => fake.apply(kube_edited(edit)).await,
        }
    }

    async fn add(&mut self, name: &str, addr: SocketAddr) {
        match self {
            Source::File(file, _) => {
                file.endpoints.push((name.into(), addr));
                file.write();
            }
            Source::Kube(fake) => fake.apply(kube_slice(name, addr)).await,
        }
    }

    async fn remove(&mut self, name: &str) {
        match self {
            Source::File(file, _) => {
                file.endpoints.retain(|(n, _)| n != name);
                file.write();
            }
            Source::Kube(fake) => {
                fake.delete("EndpointSlice", "apps", &format!("soak-{name}"))
                    .await
            }
        }
    }

    async fn rotate(&mut self, leaf: &Leaf) {
        match self {
            Source::File(file, dir) => {
                file.cert += 1;
                leaf.write(dir, &format!("soak-{}", file.cert));
                file.write();
            }
            Source::Kube(fake) => fake.apply(kube_tls_secret(leaf)).await,
        }
    }
}

/// Opens the fleet, makes the hundred changes, replaces `e0` and `e1` one by one, and
/// checks how every connection ended. `backends` holds e0..e3; e0 and e1 serve at the start.
async fn run(
    phase: &str,
    mut source: Source<'_>,
    backends: &mut HashMap<String, Echo>,
    plain: SocketAddr,
    tls: SocketAddr,
) {
    let n = connections();
    let opened = Instant::now();
    let fleet = Fleet::open(n, plain, Some(tls)).await;
    eprintln!(
        "soak {phase}: {n} connections open in {:?}",
        opened.elapsed()
    );

    // A hundred changes: edits, endpoints in and out, certificate rotations, in turn.
    let mut removed = Removals::new();
    let mut edit = 0;
    let churn = Instant::now();
    for change in 0..CHANGES {
        let extra = if change % 8 < 4 { "e2" } else { "e3" };
        match change % 4 {
            0 => {
                edit += 1;
                source.edit(edit).await;
                routed(&format!("http://{plain}/edited-{edit}/x")).await;
            }
            1 => source.add(extra, backends[extra].addr).await,
            2 => {
                let leaf = self_signed(&["soak.test"]);
                source.rotate(&leaf).await;
                let want = leaf.der.clone();
                eventually_async("the rotated certificate served", DEADLINE, || async {
                    let (_, presented) = wss_connect(tls, "soak.test", "/soak/probe?hello=1").await;
                    (presented == want).then_some(())
                })
                .await;
            }
            _ => {
                source.remove(extra).await;
                // A later removal of the same endpoint drains the connections it got
                // after coming back; the drain starts when the change is made.
                removed
                    .entry(extra.into())
                    .or_default()
                    .push(Instant::now());
            }
        }
        // Pacing: the rate of changes is part of the subject.
        tokio::time::sleep(CHANGE_EVERY).await;
    }
    eprintln!("soak {phase}: {CHANGES} changes in {:?}", churn.elapsed());
    // The last removal's drain runs its course. A wait, not a poll: the whole budget and its
    // slack must pass, so that a close coming late is in the record the verdict judges.
    tokio::time::sleep(BUDGET + SLACK).await;

    // Replace every backend one by one: the new one joins, the old one leaves and drains.
    for old in ["e0", "e1"] {
        let new = format!("n{}", &old[1..]);
        backends.insert(new.clone(), Echo::start(&new).await);
        source.add(&new, backends[&new].addr).await;
        // A fresh edit proves the addition is served before the old endpoint leaves.
        edit += 1;
        source.edit(edit).await;
        routed(&format!("http://{plain}/edited-{edit}/x")).await;
        source.remove(old).await;
        removed.entry(old.into()).or_default().push(Instant::now());
        // The drain runs its course (the whole budget and slack, as above).
        tokio::time::sleep(BUDGET + SLACK).await;
    }

    let ended = fleet.stop().await;
    let drained = verdict(phase, &ended, &removed);
    for old in ["e0", "e1"] {
        let closes = drained.get(old).map(Vec::as_slice).unwrap_or_default();
        assert!(
            closes.len() >= n / 10,
            "{phase}: {old} held a share of the fleet and drained only {}",
            closes.len()
        );
        assert_spread(phase, old, closes);
    }
}

async fn echo_backends() -> HashMap<String, Echo> {
    let mut backends = HashMap::new();
    for name in ["e0", "e1", "e2", "e3"] {
        backends.insert(name.to_string(), Echo::start(name).await);
    }
    backends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_standalone_a_thousand_connections_through_a_hundred_changes() {
    wsgate::app::raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let mut backends = echo_backends().await;
    let file = RoutesFile {
        path: dir.path().join("routes.yaml"),
        endpoints: vec![
            ("e0".into(), backends["e0"].addr),
            ("e1".into(), backends["e1"].addr),
        ],
        edit: 0,
        cert: 0,
    };
    self_signed(&["soak.test"]).write(dir.path(), "soak-0");
    file.write();
    let gw = Process::start(
        &[
            "run",
            "--routes",
            "routes.yaml",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--reload-interval",
            "50ms",
        ],
        dir.path(),
    )
    .await;
    let (plain, tls) = (gw.listening.listen, gw.listening.tls_listen.expect("TLS"));
    run(
        "standalone",
        Source::File(file, dir.path()),
        &mut backends,
        plain,
        tls,
    )
    .await;
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_cluster_a_thousand_connections_through_a_hundred_changes() {
    wsgate::app::raise_fd_limit();
    let mut backends = echo_backends().await;
    let fake = FakeApiServer::start().await;
    fake.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "apps", "name": "soak"},
        "spec": {"ports": [{"name": "ws", "port": 80, "protocol": "TCP"}]}}))
        .await;
    fake.apply(kube_route("soak", kube_soak_spec())).await;
    let mut tls_spec = kube_soak_spec();
    tls_spec["upstreamHost"] = json!("soak.test");
    tls_spec["tls"] = json!({"secretName": "soak-cert"});
    fake.apply(kube_route("soak-tls", tls_spec)).await;
    fake.apply(kube_edited(0)).await;
    fake.apply(kube_tls_secret(&self_signed(&["soak.test"])))
        .await;
    for name in ["e0", "e1"] {
        fake.apply(kube_slice(name, backends[name].addr)).await;
    }
    let client = kube::Client::try_from(kube::Config::new(fake.url().parse().expect("url")))
        .expect("client");
    let cluster = Cluster::start(
        ClusterOptions {
            namespaces: Vec::new(),
            route_selector: None,
            identity: "wsgate-0".into(),
            lease_namespace: "wsgate-system".into(),
            write_status: false,
            server: ServerOptions {
                listen: "127.0.0.1:0".parse().expect("addr"),
                admin_listen: "127.0.0.1:0".parse().expect("addr"),
                shutdown_delay: Duration::ZERO,
                drain_timeout: Duration::from_secs(2),
                drain_jitter: true,
                metrics: Default::default(),
                access_log: Default::default(),
                relay_offload: Default::default(),
                listening_file: None,
                max_connections: None,
                client_address: Default::default(),
                tls_listen: Some("127.0.0.1:0".parse().expect("addr")),
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
    let admin = cluster.server.admin_addr;
    eventually_async("ready after the first sync", DEADLINE, || async {
        (http_get(&format!("http://{admin}/readyz")).await.0 == 200).then_some(())
    })
    .await;
    let plain = cluster.server.listen_addr;
    let tls = cluster.server.tls_addr.expect("TLS listener");
    run("cluster", Source::Kube(&fake), &mut backends, plain, tls).await;
}
