//! Shared helpers for integration tests: real echo backends, an in-process gateway on
//! loopback port 0, route builders, WebSocket clients and deadline-bound waiting.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use wsgate::api::WsRouteSpec;
use wsgate::app::{Server, ServerOptions};
use wsgate::echo::{self, EchoConfig};
use wsgate::model::{route_from_spec, Route, RouteId, SpecBackends};
pub use wsgate::proxy::OffloadOptions;
use wsgate::table::Publisher;
use wsgate::telemetry::Metrics;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than the deadline.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {DEADLINE:?}: {what}"),
    }
}

/// Reads from `s` until it holds a whole HTTP head (through the blank line) and returns what
/// was read, head and anything behind it; `None` if the peer closed or failed first.
pub async fn read_http_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The status code of a raw HTTP response (0 when there is none).
pub fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Reads one response from `s`, which stays open: a 101's head, or a head and its
/// `content-length` body (wsgate's own answers and the echo backend's carry one).
pub async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    read_until(s, &mut buf, b"\r\n\r\n").await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    if status_of(&text) == 101 {
        return text;
    }
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    let len: usize = text[..head_end]
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut chunk = [0u8; 4096];
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed inside the body: {text}");
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Polls `check` until it returns Some, or fails the test at the deadline.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition never held within {DEADLINE:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the async `check` until it returns Some, or fails the test after `limit`.
/// Each check gets at most one second, so a hung connect cannot eat the whole budget.
pub async fn eventually_async<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(Some(v)) = tokio::time::timeout(Duration::from_secs(1), check()).await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition never held within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A routes file (YAML, `---` between documents) of plain routes: `(name, upstream path
/// template, downstream path template, backend)` each.
pub fn routes_yaml(routes: &[(&str, &str, &str, SocketAddr)]) -> String {
    routes
        .iter()
        .map(|(name, up, down, addr)| {
            format!(
                "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata:\n  name: {name}\nspec:\n  upstreamPathTemplate: {up}\n  downstreamPathTemplate: {down}\n  downstreamHostAndPorts:\n    - host: {}\n      port: {}\n",
                addr.ip(),
                addr.port()
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A running echo backend; stops when dropped.
pub struct Echo {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Echo {
    pub async fn start(name: &str) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(echo::serve(
            listener,
            EchoConfig { name: name.into() },
            async move {
                let _ = stopped.await;
            },
        ));
        Echo {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the backend and waits until it has returned.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = within("echo backend stop", &mut self.task).await;
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A WsRoute spec with static backends, for tests to adjust.
pub fn spec(up: &str, down: &str, backends: &[SocketAddr]) -> WsRouteSpec {
    WsRouteSpec::with_static_backends(up, down, backends)
}

pub fn route(name: &str, order: u64, spec: &WsRouteSpec) -> Route {
    route_from_spec(RouteId(name.into()), order, spec, SpecBackends::Static)
        .unwrap_or_else(|e| panic!("test route {name} invalid: {e:?}"))
}

/// The gateway in-process on loopback port 0 with the given routes.
pub struct Gateway {
    pub server: Server,
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
}

impl Gateway {
    pub async fn start(routes: &[Route]) -> Gateway {
        Self::start_with(routes, Duration::from_secs(5)).await
    }

    pub async fn start_with(routes: &[Route], drain_timeout: Duration) -> Gateway {
        Self::start_with_offload(routes, drain_timeout, OffloadOptions::default()).await
    }

    /// With `relay_offload` deciding when relays move to relay threads.
    pub async fn start_with_offload(
        routes: &[Route],
        drain_timeout: Duration,
        relay_offload: OffloadOptions,
    ) -> Gateway {
        Self::start_configured(
            routes,
            drain_timeout,
            relay_offload,
            None,
            Default::default(),
        )
        .await
    }

    /// With every option a test varies: relay threads, `--max-connections`, and whose
    /// client address is believed (`--trusted-proxies`, `--proxy-protocol`).
    pub async fn start_configured(
        routes: &[Route],
        drain_timeout: Duration,
        relay_offload: OffloadOptions,
        max_connections: Option<u32>,
        client_address: wsgate::proxy::ClientAddressOptions,
    ) -> Gateway {
        Self::start_with_options(routes, |options| {
            options.drain_timeout = drain_timeout;
            options.relay_offload = relay_offload;
            options.max_connections = max_connections;
            options.client_address = client_address;
        })
        .await
    }

    /// With the process-wide drain: `drain_timeout` the budget, `drain_jitter` whether
    /// routes without their own spread their closes over it.
    pub async fn start_with_drain(
        routes: &[Route],
        drain_timeout: Duration,
        drain_jitter: bool,
        relay_offload: OffloadOptions,
    ) -> Gateway {
        Self::start_with_options(routes, |options| {
            options.tls_listen = None;
            options.drain_timeout = drain_timeout;
            options.drain_jitter = drain_jitter;
            options.relay_offload = relay_offload;
        })
        .await
    }

    /// With the default options as `adjust` changes them (`--access-log`, and whatever
    /// else `ServerOptions` holds).
    pub async fn start_with_options(
        routes: &[Route],
        adjust: impl FnOnce(&mut ServerOptions),
    ) -> Gateway {
        let mut options = ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_listen: Some("127.0.0.1:0".parse().unwrap()),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            relay_offload: OffloadOptions::default(),
            listening_file: None,
            max_connections: None,
            client_address: Default::default(),
            drain_jitter: false,
            metrics: Default::default(),
            access_log: Default::default(),
        };
        adjust(&mut options);
        Self::start_server(routes, options).await
    }

    /// With these server options (listeners on loopback, port 0).
    pub async fn start_server(routes: &[Route], options: ServerOptions) -> Gateway {
        let metrics = Arc::new(Metrics::new());
        let publisher = Arc::new(Publisher::new(Arc::clone(&metrics)));
        let published = publisher.publish(routes);
        assert!(published.problems.is_empty(), "{:?}", published.problems);
        let server = Server::start(options, Arc::clone(&publisher), Arc::clone(&metrics))
            .await
            .unwrap();
        server.readiness.set_loaded();
        Gateway {
            server,
            publisher,
            metrics,
        }
    }

    pub fn ws(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.server.listen_addr, path_and_query)
    }

    pub fn http(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.server.listen_addr, path_and_query)
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Retries the handshake until it succeeds (a process still starting, a route table still
/// reloading), failing the test with `what` after the deadline.
pub async fn connect_eventually(what: &str, url: &str) -> Ws {
    eventually_async(what, DEADLINE, || async {
        tokio_tungstenite::connect_async(url)
            .await
            .ok()
            .map(|(ws, _)| ws)
    })
    .await
}

/// Opens a WebSocket with a deadline; panics with the handshake error otherwise.
pub async fn connect(url: &str) -> Ws {
    connect_with(url, &[]).await
}

pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Ws {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, _resp) = within(
        "websocket connect",
        tokio_tungstenite::connect_async_with_config(req, Some(config), false),
    )
    .await
    .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

/// Sends raw bytes and reads until the peer closes or `\r\n\r\n` plus any body declared by
/// Content-Length arrived; returns the whole response text.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    within("raw request", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                if buf.len() >= head_end + 4 + len {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
    .await
}

/// The built `wsgate` binary, started with arguments; killed on drop. Its output goes to
/// `wsgate.log` in the working directory (a pipe nobody reads would fill and stall it).
pub struct Process {
    pub child: tokio::process::Child,
    /// Where the process said it listens (read from `listening_file`).
    pub listening: Listening,
    /// Its `--listening-file`.
    pub listening_file: std::path::PathBuf,
    log: std::path::PathBuf,
}

/// The bound addresses a process reported in its `--listening-file`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening {
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl Process {
    /// Starts `wsgate ARGS --listening-file FILE` (ARGS name `run` or `demo`; give them
    /// port 0 to listen on) and waits, within the deadline, for the file with the ports
    /// the process got. Fails the test, showing the process's log, if the process exits
    /// first or never writes the file. Must run inside the tokio runtime (the child is
    /// reaped by it).
    pub async fn start(args: &[&str], dir: &Path) -> Process {
        let log = dir.join("wsgate.log");
        let listening_file = dir.join("listening.json");
        let log_file = std::fs::File::create(&log).expect("create wsgate.log");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(args)
            .arg("--listening-file")
            .arg(&listening_file)
            .current_dir(dir)
            .stdout(Stdio::from(log_file.try_clone().expect("clone log file")))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .expect("start wsgate binary");
        let pid = child.id().expect("a just-started process has an id");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let listening = loop {
            if let Some(report) = read_listening_file(&listening_file, pid) {
                break report;
            }
            let exited = child.try_wait().expect("poll wsgate");
            if exited.is_some() || tokio::time::Instant::now() > deadline {
                panic!(
                    "wsgate {args:?} did not report its addresses in {} within {DEADLINE:?} \
                     (exit status: {exited:?}); its log:\n{}",
                    listening_file.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        Process {
            child,
            listening,
            listening_file,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("process still running") as i32
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (within the deadline) for the process to exit by itself.
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        within("wsgate process exit", self.child.wait())
            .await
            .expect("wait for wsgate")
    }
}

/// The report in `path` if it is there and written by process `pid` (the file is written
/// whole by a rename, so a parse failure means a bug, not a partial write).
fn read_listening_file(path: &Path, pid: u32) -> Option<Listening> {
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text:?}", path.display()));
    assert_eq!(
        json["pid"],
        pid,
        "{} names another process: {text}",
        path.display()
    );
    let addr = |field: &str| -> Option<SocketAddr> {
        let value = &json[field];
        if value.is_null() {
            return None;
        }
        Some(
            value
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| {
                    panic!("{field} in {} is not an address: {text}", path.display())
                }),
        )
    };
    Some(Listening {
        listen: addr("listen").unwrap_or_else(|| panic!("no listen address: {text}")),
        tls_listen: addr("tls_listen"),
        admin: addr("admin").unwrap_or_else(|| panic!("no admin address: {text}")),
    })
}

/// GET over plain HTTP/1.1, returning (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    let resp = within("http get", reqwest_like_get(url)).await;
    resp
}

async fn reqwest_like_get(url: &str) -> (u16, String) {
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap_or(80));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", uri.authority().unwrap().as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub mod certs;
pub mod fake_apiserver;
pub mod jwt;
pub mod logs;
pub mod raw_ws;
pub mod relay_checks;
pub mod signalr_hub;

/// The upgrade headers of a raw request (a fixed, valid key).
pub const RAW_UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Reads from `s` until `buf` holds `want` (a byte sequence) and returns everything read.
pub async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, want: &[u8]) {
    within("bytes from the gateway", async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(want.len()).any(|w| w == want) {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(buf));
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}
