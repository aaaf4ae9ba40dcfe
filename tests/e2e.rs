//! End-to-end checks of a running wsgate, from the outside, in two environments:
//!
//! - **local** (default, what CI runs): each test starts two `wsgate echo` processes and
//!   `wsgate run --routes <generated file>` on loopback port 0, then talks to the gateway;
//! - **kind** (`WSGATE_E2E_MODE=kind`, `WSGATE_E2E_URL=http://127.0.0.1:PORT`): the same
//!   checks against the gateway `tests/e2e/kind.sh` installed with Helm, through a
//!   `kubectl port-forward`, with the echo backend of `examples/echo-backend.yaml` behind
//!   the WsRoute of `examples/wsroute.yaml` (`/echo/{everything}` → `/{everything}`).
//!
//! The `kind_*` tests are ignored by default: they scale and roll out the backend with
//! kubectl (`WSGATE_E2E_NAMESPACE`, `WSGATE_E2E_KUBECTL_CONTEXT`) and need the cluster;
//! kind.sh runs them with `--ignored`. `WSGATE_E2E_EXPECT_BACKENDS` (default 2) is how many
//! backend pods the route has when the tests start.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for one step against a local gateway (a connect, an echo, a start-up).
const STEP: Duration = Duration::from_secs(10);
/// Upper bound for a cluster to converge (scale, rollout, endpoints reaching the gateway).
const CLUSTER_STEP: Duration = Duration::from_secs(180);
/// How often a kept connection sends a message to prove it is alive.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(200);
/// Messages a kept connection may have outstanding before it counts as broken.
const MAX_OUTSTANDING: usize = 10;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// ---------------------------------------------------------------------------------------
// Waiting helpers: every await is bounded, state is polled to a deadline.

async fn within<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails the test after `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = within(limit, what, check()).await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition never held within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The environment under test.

/// Where the gateway is, and what runs behind it.
struct Env {
    /// `127.0.0.1:PORT`: the gateway's ws/http listener (or the port-forward).
    authority: String,
    /// Backends the route has when the test starts.
    expect_backends: usize,
    /// Local mode: the processes, stopped when the test ends.
    local: Option<Local>,
}

struct Local {
    /// Echo backends by instance name.
    echoes: BTreeMap<String, Proc>,
    _gateway: Proc,
    _dir: tempfile::TempDir,
}

fn kind_mode() -> bool {
    std::env::var("WSGATE_E2E_MODE").is_ok_and(|m| m == "kind")
}

fn expected_backends() -> usize {
    match std::env::var("WSGATE_E2E_EXPECT_BACKENDS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("WSGATE_E2E_EXPECT_BACKENDS={v:?} is not a number")),
        Err(_) => 2,
    }
}

impl Env {
    async fn start() -> Env {
        if kind_mode() {
            let url = std::env::var("WSGATE_E2E_URL")
                .expect("WSGATE_E2E_MODE=kind needs WSGATE_E2E_URL (the port-forwarded gateway, http://127.0.0.1:PORT)");
            let authority = url
                .strip_prefix("http://")
                .unwrap_or_else(|| panic!("WSGATE_E2E_URL={url:?} must start with http://"))
                .trim_end_matches('/')
                .to_string();
            return Env {
                authority,
                expect_backends: expected_backends(),
                local: None,
            };
        }
        let local = tokio::task::spawn_blocking(Local::start)
            .await
            .expect("local environment start-up panicked");
        Env {
            authority: local._gateway.addr("listen").to_string(),
            expect_backends: local.echoes.len(),
            local: Some(local),
        }
    }

    fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.authority)
    }

    /// Opens a WebSocket on `/echo/ws?hello=1` and returns it with the backend's name, taken
    /// from the echo's hello message.
    async fn connect_named(&self) -> (Ws, String) {
        let url = self.ws_url("/echo/ws?hello=1");
        let (mut ws, response) = within(
            STEP,
            "WebSocket handshake through the gateway",
            tokio_tungstenite::connect_async(&url),
        )
        .await
        .unwrap_or_else(|e| panic!("handshake with {url} failed: {e}"));
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let hello = match within(STEP, "the echo's hello message", ws.next()).await {
            Some(Ok(Message::Text(t))) => t,
            other => panic!("expected the echo's hello, got {other:?}"),
        };
        let hello: serde_json::Value = serde_json::from_str(&hello).expect("hello is JSON");
        assert_eq!(
            hello["path"], "/ws",
            "the route strips /echo: the backend must see /ws, hello was {hello}"
        );
        let name = hello["echo"]
            .as_str()
            .expect("hello names the backend")
            .to_string();
        (ws, name)
    }

    /// One HTTP/1.1 request through the gateway; returns status, `x-echo-name` and body.
    async fn http(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> (StatusCode, Option<String>, Bytes) {
        let stream = within(
            STEP,
            "TCP connect to the gateway",
            TcpStream::connect(&self.authority),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", self.authority));
        let (mut sender, conn) = within(
            STEP,
            "HTTP/1.1 handshake",
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await
        .expect("HTTP/1.1 client handshake");
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let response = within(
            STEP,
            "HTTP response through the gateway",
            sender.send_request(request),
        )
        .await
        .expect("HTTP response");
        let status = response.status();
        let name = response
            .headers()
            .get("x-echo-name")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = within(STEP, "HTTP response body", response.into_body().collect())
            .await
            .expect("response body")
            .to_bytes();
        (status, name, body)
    }

    /// Opens connections until every one of `expect` backends holds at least `per_backend`.
    async fn connections_on_every_backend(
        &self,
        expect: usize,
        per_backend: usize,
    ) -> Vec<(Ws, String)> {
        let mut conns = Vec::new();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let budget = expect * per_backend * 10;
        for _ in 0..budget {
            if counts.len() == expect && counts.values().all(|&n| n >= per_backend) {
                return conns;
            }
            let (ws, name) = self.connect_named().await;
            *counts.entry(name.clone()).or_default() += 1;
            conns.push((ws, name));
        }
        panic!("after {budget} connections the backends reached were {counts:?}, expected {expect} backends with {per_backend} each");
    }
}

/// Sends text, binary and ping through `ws` and checks each comes back unchanged.
async fn assert_echoes(ws: &mut Ws, tag: &str) {
    let text = format!("hello from {tag}");
    within(STEP, "send text", ws.send(Message::text(text.clone())))
        .await
        .expect("send text");
    match within(STEP, "text echo", next_data(ws)).await {
        Message::Text(t) => assert_eq!(t.as_str(), text),
        other => panic!("expected the text echo, got {other:?}"),
    }
    let binary = Bytes::from_static(&[0, 1, 2, 0x7f, 0x80, 0xff]);
    within(
        STEP,
        "send binary",
        ws.send(Message::Binary(binary.clone())),
    )
    .await
    .expect("send binary");
    match within(STEP, "binary echo", next_data(ws)).await {
        Message::Binary(b) => assert_eq!(b, binary),
        other => panic!("expected the binary echo, got {other:?}"),
    }
}

/// The next text or binary message (pings and pongs are answered by tungstenite).
async fn next_data(ws: &mut Ws) -> Message {
    loop {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)))) => return m,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("WebSocket failed: {e}"),
            None => panic!("WebSocket ended without a Close frame"),
        }
    }
}

/// Closes with 1000 and waits for the peer's Close.
async fn close_cleanly(mut ws: Ws) {
    within(STEP, "send Close", ws.close(None))
        .await
        .expect("send Close");
    loop {
        match within(STEP, "the Close reply", ws.next()).await {
            Some(Ok(Message::Close(_))) | None => return,
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("closing failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Kept connections: a task per WebSocket that keeps sending and checking echoes, until the
// test stops it or the backend closes it.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Still echoing when stopped.
    Open,
    /// The backend went away and said so: Close 1001.
    ClosedAway,
    /// Anything else: an error, a reset, a Close without 1001, echoes that stopped coming.
    Broken(String),
}

struct Kept {
    backend: String,
    echoes: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Outcome>,
}

impl Kept {
    fn start(ws: Ws, backend: String) -> Kept {
        let echoes = Arc::new(AtomicU32::new(0));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(keep(ws, Arc::clone(&echoes), stopped));
        Kept {
            backend,
            echoes,
            stop,
            task,
        }
    }

    fn echoes(&self) -> u32 {
        self.echoes.load(Ordering::Relaxed)
    }

    async fn outcome(self) -> (String, Outcome) {
        let _ = self.stop.send(true);
        let outcome = within(STEP, "kept connection to stop", self.task)
            .await
            .expect("kept connection task panicked");
        (self.backend, outcome)
    }
}

async fn keep(ws: Ws, echoes: Arc<AtomicU32>, mut stopped: watch::Receiver<bool>) -> Outcome {
    let (mut sink, mut stream) = ws.split();
    let mut outstanding: VecDeque<String> = VecDeque::new();
    let mut tick = tokio::time::interval(KEEP_ALIVE_EVERY);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stopped.changed() => return Outcome::Open,
            _ = tick.tick() => {
                if outstanding.len() >= MAX_OUTSTANDING {
                    return Outcome::Broken(format!("{} messages sent without an echo", outstanding.len()));
                }
                n += 1;
                let msg = format!("keep-{n}");
                // A failed send is judged by what the read side then sees (a Close 1001 may
                // already be in flight).
                if sink.send(Message::text(msg.clone())).await.is_ok() {
                    outstanding.push_back(msg);
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if outstanding.front().map(String::as_str) != Some(t.as_str()) {
                        return Outcome::Broken(format!("echo {t:?} does not match {:?}", outstanding.front()));
                    }
                    outstanding.pop_front();
                    echoes.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => return Outcome::ClosedAway,
                Some(Ok(Message::Close(frame))) => return Outcome::Broken(format!("closed with {frame:?}, expected 1001")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Outcome::Broken(format!("WebSocket error: {e}")),
                None => return Outcome::Broken("ended without a Close frame".into()),
            }
        }
    }
}

/// Waits until every kept connection has echoed at least `more` messages past `from`.
async fn all_echoing(kept: &[&Kept], more: u32, what: &str) {
    let from: Vec<u32> = kept.iter().map(|k| k.echoes()).collect();
    eventually(STEP, what, || {
        let ok = kept
            .iter()
            .zip(&from)
            .all(|(k, &f)| k.task.is_finished() || k.echoes() >= f + more);
        async move { ok.then_some(()) }
    })
    .await;
}

/// Stops every kept connection and checks: on a backend in `stayed`, still open; on any
/// other backend, closed with 1001.
async fn assert_outcomes(kept: Vec<Kept>, stayed: &BTreeSet<String>) {
    let mut wrong = Vec::new();
    for k in kept {
        let (backend, outcome) = k.outcome().await;
        let want = if stayed.contains(&backend) {
            Outcome::Open
        } else {
            Outcome::ClosedAway
        };
        if outcome != want {
            wrong.push(format!(
                "connection to {backend}: {outcome:?}, expected {want:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "stayed = {stayed:?}:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Checks that run everywhere.

/// A WebSocket through the gateway reaches a backend on the rewritten path and echoes text
/// and binary messages unchanged, then closes cleanly.
#[tokio::test]
async fn websocket_messages_echo_through_the_gateway() {
    let env = Env::start().await;
    let (mut ws, _) = env.connect_named().await;
    assert_echoes(&mut ws, "websocket_messages_echo_through_the_gateway").await;
    close_cleanly(ws).await;
}

/// Several WebSockets held at once each get only their own echoes, interleaved.
#[tokio::test]
async fn several_connections_stay_open_and_independent() {
    let env = Env::start().await;
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(env.connect_named().await.0);
    }
    for round in 0..3 {
        for (i, ws) in conns.iter_mut().enumerate() {
            within(
                STEP,
                "send",
                ws.send(Message::text(format!("conn {i} round {round}"))),
            )
            .await
            .expect("send");
        }
        for (i, ws) in conns.iter_mut().enumerate() {
            match within(STEP, "echo", next_data(ws)).await {
                Message::Text(t) => assert_eq!(t.as_str(), format!("conn {i} round {round}")),
                other => panic!("connection {i}: expected its echo, got {other:?}"),
            }
        }
    }
    for ws in conns {
        close_cleanly(ws).await;
    }
}

/// Plain HTTP on the same route (SignalR negotiate, long polling) reaches a backend with the
/// prefix stripped, the query and the body intact.
#[tokio::test]
async fn plain_http_requests_ride_the_same_route() {
    let env = Env::start().await;
    let (status, name, body) = env.http("GET", "/echo/hello?x=1", "").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "body: {}",
        String::from_utf8_lossy(&body)
    );
    assert!(name.is_some(), "the echo names itself in x-echo-name");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("echo answers JSON");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/hello");
    assert_eq!(json["query"], "x=1");

    let (status, _, body) = env
        .http("POST", "/echo/chat/negotiate?negotiateVersion=1", "{}")
        .await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("echo answers JSON");
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/chat/negotiate");
    assert_eq!(json["body"], "{}");
}

/// New connections are spread over every backend of the route (RoundRobin).
#[tokio::test]
async fn connections_spread_over_every_backend() {
    let env = Env::start().await;
    let conns = env
        .connections_on_every_backend(env.expect_backends, 1)
        .await;
    for (ws, _) in conns {
        close_cleanly(ws).await;
    }
}

/// A backend that shuts down closes its own connections with 1001; connections to the other
/// backend keep echoing, and new connections still succeed (on the backend that is left).
#[tokio::test]
async fn backend_leaving_closes_only_its_connections() {
    if kind_mode() {
        // kind_scale_down_keeps_connections_to_remaining_pods is this check on a cluster.
        return;
    }
    let mut env = Env::start().await;
    let conns = env.connections_on_every_backend(2, 2).await;
    let kept: Vec<Kept> = conns
        .into_iter()
        .map(|(ws, b)| Kept::start(ws, b))
        .collect();
    all_echoing(
        &kept.iter().collect::<Vec<_>>(),
        2,
        "every connection echoing",
    )
    .await;

    let local = env.local.as_mut().expect("local mode");
    let leaving = local
        .echoes
        .keys()
        .next_back()
        .cloned()
        .expect("two echoes");
    let mut proc = local.echoes.remove(&leaving).expect("echo process");
    tokio::task::spawn_blocking(move || proc.terminate())
        .await
        .expect("terminate echo");

    let (stay, go): (Vec<&Kept>, Vec<&Kept>) = kept.iter().partition(|k| k.backend != leaving);
    eventually(STEP, "connections to the leaving backend to end", || {
        let done = go.iter().all(|k| k.task.is_finished());
        async move { done.then_some(()) }
    })
    .await;
    all_echoing(
        &stay,
        3,
        "connections to the remaining backend still echoing",
    )
    .await;
    for _ in 0..4 {
        let (ws, name) = env.connect_named().await;
        assert_ne!(
            name, leaving,
            "a new connection went to the backend that left"
        );
        close_cleanly(ws).await;
    }
    assert_eq!(probe(&env).await, Probe::Echoed);
    let stayed: BTreeSet<String> = env
        .local
        .as_ref()
        .expect("local")
        .echoes
        .keys()
        .cloned()
        .collect();
    assert_outcomes(kept, &stayed).await;
}

// ---------------------------------------------------------------------------------------
// Checks that need the kind cluster (tests/e2e/kind.sh runs them with --ignored).

/// kubectl in the e2e namespace and context.
async fn kubectl(args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("kubectl");
    if let Ok(ctx) = std::env::var("WSGATE_E2E_KUBECTL_CONTEXT") {
        cmd.arg("--context").arg(ctx);
    }
    let ns = std::env::var("WSGATE_E2E_NAMESPACE").unwrap_or_else(|_| "wsgate-e2e".into());
    cmd.arg("--namespace").arg(ns).args(args).kill_on_drop(true);
    let out = within(CLUSTER_STEP, &format!("kubectl {args:?}"), cmd.output())
        .await
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_kind() {
    assert!(
        kind_mode(),
        "this test needs the kind cluster: run tests/e2e/kind.sh (WSGATE_E2E_MODE=kind)"
    );
}

/// Scales the echo Deployment and waits until the WsRoute reports that many ready endpoints.
async fn scale_echo(replicas: usize) {
    kubectl(&[
        "scale",
        "deployment/echo",
        &format!("--replicas={replicas}"),
    ])
    .await;
    let want = replicas.to_string();
    eventually(
        CLUSTER_STEP,
        &format!("WsRoute echo readyEndpoints = {replicas}"),
        || {
            let want = want.clone();
            async move {
                let got = kubectl(&[
                    "get",
                    "wsroute",
                    "echo",
                    "-o",
                    "jsonpath={.status.readyEndpoints}",
                ])
                .await;
                (got.trim() == want).then_some(())
            }
        },
    )
    .await;
}

/// Names of the echo pods that are running and not being deleted.
async fn staying_echo_pods() -> BTreeSet<String> {
    let out = kubectl(&[
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=echo",
        "-o",
        "json",
    ])
    .await;
    let pods: serde_json::Value = serde_json::from_str(&out).expect("kubectl prints JSON");
    pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running"
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect()
}

/// Scaling the backend down closes connections to the removed pods with 1001 and leaves
/// connections to the remaining pod echoing; new connections go to the remaining pod.
#[tokio::test]
#[ignore = "needs the kind cluster: tests/e2e/kind.sh"]
async fn kind_scale_down_keeps_connections_to_remaining_pods() {
    require_kind();
    let env = Env::start().await;
    scale_echo(3).await;
    let conns = env.connections_on_every_backend(3, 2).await;
    let kept: Vec<Kept> = conns
        .into_iter()
        .map(|(ws, b)| Kept::start(ws, b))
        .collect();
    all_echoing(
        &kept.iter().collect::<Vec<_>>(),
        2,
        "every connection echoing",
    )
    .await;

    scale_echo(1).await;
    let stayed = staying_echo_pods().await;
    assert_eq!(stayed.len(), 1, "one echo pod left: {stayed:?}");
    let (stay, go): (Vec<&Kept>, Vec<&Kept>) =
        kept.iter().partition(|k| stayed.contains(&k.backend));
    eventually(CLUSTER_STEP, "connections to removed pods to end", || {
        let done = go.iter().all(|k| k.task.is_finished());
        async move { done.then_some(()) }
    })
    .await;
    all_echoing(&stay, 3, "connections to the remaining pod still echoing").await;
    for _ in 0..4 {
        let (ws, name) = env.connect_named().await;
        assert!(
            stayed.contains(&name),
            "new connection went to {name}, not to {stayed:?}"
        );
        close_cleanly(ws).await;
    }
    assert_outcomes(kept, &stayed).await;
    scale_echo(2).await;
}

/// A rolling restart of the backend: every new handshake during the rollout succeeds, and
/// every connection to an old pod keeps echoing until its own pod leaves, then gets 1001.
#[tokio::test]
#[ignore = "needs the kind cluster: tests/e2e/kind.sh"]
async fn kind_rollout_keeps_connections_until_their_pod_leaves() {
    require_kind();
    let env = Arc::new(Env::start().await);
    scale_echo(2).await;
    kubectl(&["rollout", "status", "deployment/echo", "--timeout=180s"]).await;
    let conns = env.connections_on_every_backend(2, 2).await;
    let kept: Vec<Kept> = conns
        .into_iter()
        .map(|(ws, b)| Kept::start(ws, b))
        .collect();
    all_echoing(
        &kept.iter().collect::<Vec<_>>(),
        2,
        "every connection echoing",
    )
    .await;

    let (stop_probe, mut probe_stopped) = watch::channel(false);
    let probe_env = Arc::clone(&env);
    let prober = tokio::spawn(async move {
        let mut results: Vec<Probe> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = probe_stopped.changed() => return results,
                _ = tick.tick() => results.push(probe(&probe_env).await),
            }
        }
    });

    kubectl(&["rollout", "restart", "deployment/echo"]).await;
    kubectl(&["rollout", "status", "deployment/echo", "--timeout=180s"]).await;
    eventually(CLUSTER_STEP, "connections to the old pods to end", || {
        let done = kept.iter().all(|k| k.task.is_finished());
        async move { done.then_some(()) }
    })
    .await;
    let _ = stop_probe.send(true);
    let probes = within(STEP, "prober to stop", prober)
        .await
        .expect("prober panicked");
    let failed: Vec<&Probe> = probes
        .iter()
        .filter(|p| matches!(p, Probe::Failed(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "probes failed during the rollout: {failed:?}"
    );
    assert!(
        probes.contains(&Probe::Echoed),
        "no probe echoed during the rollout: {probes:?}"
    );
    assert_outcomes(kept, &BTreeSet::new()).await;
}

#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// Handshake, echo and close all worked.
    Echoed,
    /// Reached a pod in the instant it began to shut down, which said so with 1001: the
    /// client would reconnect. Not a failure.
    WentAway,
    Failed(String),
}

/// One short-lived connection: handshake, one echo, close.
async fn probe(env: &Env) -> Probe {
    let url = env.ws_url("/echo/ws");
    let mut ws = match tokio::time::timeout(STEP, tokio_tungstenite::connect_async(&url)).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return Probe::Failed(format!("handshake: {e}")),
        Err(_) => return Probe::Failed("handshake timed out".into()),
    };
    if let Err(e) = ws.send(Message::text("probe")).await {
        return Probe::Failed(format!("send: {e}"));
    }
    loop {
        match tokio::time::timeout(STEP, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "probe" => break,
            Ok(Some(Ok(Message::Close(Some(f))))) if f.code == CloseCode::Away => {
                return Probe::WentAway
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => return Probe::Failed(format!("expected the echo, got {other:?}")),
            Err(_) => return Probe::Failed("echo timed out".into()),
        }
    }
    let _ = tokio::time::timeout(STEP, ws.close(None)).await;
    Probe::Echoed
}

// ---------------------------------------------------------------------------------------
// Local mode: real `wsgate` processes on loopback.

/// A child process whose stderr (JSON logs) is forwarded to the test's output.
struct Proc {
    name: String,
    child: Child,
    addrs: BTreeMap<String, SocketAddr>,
    /// Its stderr lines; disconnected once the process has exited and closed stderr.
    /// (In a Mutex only so that `Proc` is `Sync` for the tasks that share the environment.)
    lines: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Proc {
    /// Starts `wsgate --log-format json ARGS` and waits for the log line that carries every
    /// field in `addr_fields` (bound addresses, e.g. `listen`).
    fn spawn(name: &str, args: &[&str], addr_fields: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start wsgate ({name}): {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines_tx, lines) = mpsc::channel::<String>();
        let prefix = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{prefix}] {line}");
                let _ = lines_tx.send(line);
            }
        });
        let mut proc = Proc {
            name: name.to_string(),
            child,
            addrs: BTreeMap::new(),
            lines: std::sync::Mutex::new(lines),
        };
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = proc.lines.lock().expect("lines").recv_timeout(left);
            match line {
                Ok(line) => {
                    if let Some(addrs) = bound_addrs(&line, addr_fields) {
                        proc.addrs = addrs;
                        return proc;
                    }
                }
                Err(_) => {
                    let status = proc.child.try_wait().ok().flatten();
                    panic!("{name} never logged its addresses {addr_fields:?} (exit status: {status:?}); its log is above");
                }
            }
        }
    }

    fn addr(&self, field: &str) -> SocketAddr {
        self.addrs[field]
    }

    /// SIGTERM, then waits for the exit.
    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} ({}) failed", self.name);
        // Exiting closes its stderr, which ends the reader thread and this channel.
        let deadline = std::time::Instant::now() + STEP;
        let lines = self.lines.get_mut().expect("lines");
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(_) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("{} did not exit after SIGTERM", self.name)
                }
            }
        }
        self.child.wait().expect("reap the exited process");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The socket addresses in a JSON log line, if it has every one of `fields` (at the top
/// level, or under `fields` when events are not flattened).
fn bound_addrs(line: &str, fields: &[&str]) -> Option<BTreeMap<String, SocketAddr>> {
    let json: serde_json::Value = serde_json::from_str(line).ok()?;
    fields
        .iter()
        .map(|f| {
            let v = json.get(*f).or_else(|| json.get("fields")?.get(*f))?;
            Some((f.to_string(), v.as_str()?.parse().ok()?))
        })
        .collect()
}

impl Local {
    fn start() -> Local {
        let mut echoes = BTreeMap::new();
        for name in ["echo-a", "echo-b"] {
            let proc = Proc::spawn(
                name,
                &["echo", "--listen", "127.0.0.1:0", "--name", name],
                &["listen"],
            );
            echoes.insert(name.to_string(), proc);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let routes = dir.path().join("routes.yaml");
        std::fs::write(
            &routes,
            routes_yaml(echoes.values().map(|p| p.addr("listen"))),
        )
        .expect("write routes");
        let routes_arg = routes.to_str().expect("UTF-8 temp path");
        let gateway = Proc::spawn(
            "gateway",
            &[
                "run",
                "--routes",
                routes_arg,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--drain-timeout",
                "2s",
            ],
            &["listen", "admin"],
        );
        wait_ready(gateway.addr("admin"));
        Local {
            echoes,
            _gateway: gateway,
            _dir: dir,
        }
    }
}

/// The WsRoute of examples/wsroute.yaml, with static backends instead of a Service.
fn routes_yaml(backends: impl Iterator<Item = SocketAddr>) -> String {
    let mut yaml = String::from(
        "apiVersion: wsgate.io/v1alpha1\n\
         kind: WsRoute\n\
         metadata:\n  name: echo\n\
         spec:\n  upstreamPathTemplate: /echo/{everything}\n  downstreamPathTemplate: /{everything}\n  \
         downstreamScheme: ws\n  loadBalancerOptions:\n    type: RoundRobin\n  downstreamHostAndPorts:\n",
    );
    for addr in backends {
        yaml.push_str(&format!(
            "    - host: \"{}\"\n      port: {}\n",
            addr.ip(),
            addr.port()
        ));
    }
    yaml
}

/// Polls the admin `/readyz` until it answers 200.
fn wait_ready(admin: SocketAddr) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let answer = std::net::TcpStream::connect_timeout(&admin, STEP).and_then(|mut s| {
            s.set_read_timeout(Some(STEP))?;
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        });
        if answer
            .as_deref()
            .is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway never became ready on {admin}/readyz: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
