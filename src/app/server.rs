//! A running gateway: the ws/http listener, the wss/https listener (when configured), the
//! admin listener, and the shutdown sequence (readiness off → optional delay → stop accepting + Close 1001, each connection at its own moment inside its route's drain budget → the longest budget).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::proxy::{self, Drain, Gateway};
use crate::table::Publisher;
use crate::telemetry::access_log::{AccessLog, AccessLogOptions};
use crate::telemetry::admin::{self, Readiness};
use crate::telemetry::Metrics;

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    /// Address for wss:// and https:// traffic; `None` = no TLS listener. Certificates come
    /// from the route table by SNI.
    pub tls_listen: Option<SocketAddr>,
    pub admin_listen: SocketAddr,
    /// After readiness turns off, keep accepting this long so load balancers notice.
    pub shutdown_delay: Duration,
    /// The drain budget of routes without their own (`--drain-timeout`): how long live
    /// connections get to finish before the process exits (the longest route budget, if
    /// longer), and the window their Close 1001 is spread over with `drain_jitter`.
    pub drain_timeout: Duration,
    /// Relay threads for busy plain-TCP relays, and when a relay moves to one.
    pub relay_offload: proxy::OffloadOptions,
    /// Where to write the bound addresses as JSON once every listener is up
    /// (`--listening-file`), so whoever started wsgate on port 0 learns its ports.
    pub listening_file: Option<PathBuf>,
    /// `--max-connections`: upgraded connections plus plain HTTP requests in flight, for
    /// the whole process; over it, 503.
    pub max_connections: Option<u32>,
    /// Whose `X-Forwarded-For` is believed (`--trusted-proxies`).
    pub client_address: proxy::ClientAddressOptions,
    /// `--drain-jitter`: routes without their own `drain` block spread their closes over
    /// `drain_timeout` (instead of closing at once when the drain starts).
    pub drain_jitter: bool,
    /// Metric cardinality (`--per-route-histograms`); read where `Metrics` is made.
    pub metrics: crate::telemetry::MetricsOptions,
    /// `--access-log` and `--access-log-format`.
    pub access_log: AccessLogOptions,
}

pub struct Server {
    pub gateway: Arc<Gateway>,
    pub readiness: Arc<Readiness>,
    pub listen_addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    options: ServerOptions,
}

impl Server {
    /// Binds both listeners and starts serving. Readiness stays false until the caller
    /// has a table (`readiness.set_loaded()`).
    pub async fn start(
        options: ServerOptions,
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Server> {
        use anyhow::Context;
        let listener = bind(options.listen)
            .with_context(|| format!("cannot listen on {} (--listen)", options.listen))?;
        let admin_listener = TcpListener::bind(options.admin_listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (--admin-listen)", options.admin_listen)
            })?;
        let tls_listener = match options.tls_listen {
            None => None,
            Some(addr) => Some(
                bind(addr).with_context(|| format!("cannot listen on {addr} (--tls-listen)"))?,
            ),
        };
        let listen_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let tls_config = proxy::tls::server_config(Arc::clone(&publisher))
            .context("cannot build the TLS configuration")?;
        let drain_defaults = proxy::DrainDefaults {
            budget: options.drain_timeout,
            jitter: options.drain_jitter,
        };
        let access_log = AccessLog::start(&options.access_log, metrics.access_log_dropped.clone())
            .with_context(|| {
                format!(
                    "cannot open the access log {:?} (--access-log)",
                    options.access_log.target
                )
            })?;
        let gateway = Gateway::new(
            Arc::clone(&publisher),
            Arc::clone(&metrics),
            Drain::new(),
            proxy::GatewayOptions {
                offload: options.relay_offload,
                max_connections: options.max_connections,
                client_address: options.client_address.clone(),
                drain_defaults,
                access_log,
            },
        );
        // Gentle drains of removed and terminating endpoints, after every publish.
        tokio::spawn(proxy::drain::plan::run(
            Arc::clone(&publisher),
            Arc::clone(&gateway.live),
            drain_defaults,
            metrics.drain(),
        ));
        // Rebalancing of routes with `rebalance`, every 100 ms.
        tokio::spawn(proxy::rebalance::run(
            publisher,
            Arc::clone(&gateway.live),
            metrics.drain(),
        ));
        let readiness = Arc::new(Readiness::default());
        tokio::spawn(proxy::serve(listener, Arc::clone(&gateway), "http"));
        if let Some(tls_listener) = tls_listener {
            tokio::spawn(proxy::serve_tls(
                tls_listener,
                Arc::clone(&gateway),
                tokio_rustls::TlsAcceptor::from(tls_config),
            ));
        }
        tokio::spawn(admin::serve(
            admin_listener,
            metrics,
            Arc::clone(&readiness),
        ));
        tracing::info!(listen = %listen_addr, tls_listen = ?tls_addr, admin = %admin_addr, "wsgate listening");
        if let Some(path) = &options.listening_file {
            let report = ListeningReport {
                pid: std::process::id(),
                listen: listen_addr,
                tls_listen: tls_addr,
                admin: admin_addr,
            };
            write_listening_file(path, &report)
                .with_context(|| format!("cannot write {} (--listening-file)", path.display()))?;
        }
        Ok(Server {
            gateway,
            readiness,
            listen_addr,
            tls_addr,
            admin_addr,
            options,
        })
    }

    /// The shutdown sequence. Returns true if every connection ended within the budget.
    pub async fn shutdown(&self) -> bool {
        self.readiness.set_draining();
        if !self.options.shutdown_delay.is_zero() {
            tracing::info!(
                delay_ms = self.options.shutdown_delay.as_millis() as u64,
                "readiness off; waiting before draining"
            );
            tokio::time::sleep(self.options.shutdown_delay).await;
        }
        let drain = &self.gateway.drain;
        // Each connection closes at its own moment inside its route's budget; the process
        // waits for the longest.
        let budget = self
            .gateway
            .drain_defaults
            .longest(&self.gateway.publisher.current());
        tracing::info!(
            connections = drain.active(),
            budget_ms = budget.as_millis() as u64,
            jitter = self.options.drain_jitter,
            "draining: stopped accepting, sending Close 1001 to every WebSocket within its route's drain budget"
        );
        drain.start();
        let clean = drain.wait(budget).await;
        if clean {
            tracing::info!("drain complete");
        } else {
            tracing::warn!(
                remaining = drain.active(),
                "drain budget ran out; closing the remaining connections"
            );
        }
        if let Some(log) = &self.gateway.access_log {
            // The writer flushes within 200 ms anyway; this makes sure the lines of the
            // connections that just drained are out before the process exits. Blocking, but
            // brief and once, at the end.
            if !log.flush(std::time::Duration::from_secs(1)) {
                tracing::warn!("the access log could not be flushed within 1 s");
            }
        }
        if let Some(path) = &self.options.listening_file {
            // The file says where this process listens; it no longer does.
            if let Err(e) = std::fs::remove_file(path) {
                tracing::debug!(path = %path.display(), error = %e, "listening file not removed");
            }
        }
        clean
    }
}

/// What `--listening-file` holds: the process and the address each listener is bound to
/// (the real port where port 0 was asked for). The field names are those of the
/// `wsgate listening` log line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListeningReport {
    pub pid: u32,
    pub listen: SocketAddr,
    /// `null` when no TLS listener runs.
    pub tls_listen: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// Writes `report` to a temporary file beside `path` and renames it over `path`, so a
/// reader polling for the file finds nothing or the whole report, never a partial one.
/// Blocking, once at start-up and on a few bytes: `tokio::fs` would start the blocking
/// pool's thread, which a one-worker process otherwise never has (tests/lifecycle.rs).
fn write_listening_file(path: &Path, report: &ListeningReport) -> std::io::Result<()> {
    let mut json = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    json.push(b'\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", report.pid));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, &json)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Binds a traffic listener with a deep accept queue: a burst of handshakes (every client
/// reconnecting after a deploy) must wait in the kernel, not be refused. The kernel caps
/// the backlog at `net.core.somaxconn`. Accepts are deferred until the client's first bytes
/// (`defer_accept`).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    // Accepted connections inherit it (Linux and the BSDs): no setsockopt per connection
    // (the accept loop checks the first connection and sets it itself where not inherited).
    socket.set_nodelay(true)?;
    if let Err(e) = defer_accept(&socket) {
        tracing::debug!(error = %e, "TCP_DEFER_ACCEPT not available; accepting at once");
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Every client of this listener speaks first (an HTTP request head, a TLS ClientHello), so
/// the kernel may hand a connection over only once its first bytes are in: the accept and the
/// head then come with one wake-up, and the first read never finds an empty socket. Side by
/// side (`bench/pair.sh ... handshakes`, 5 rounds) this saved ~1.8 system calls and ~5 % of
/// the CPU of a proxied handshake (92.4 -> 87.8 µs by the median; bench/RESULTS.md). A client
/// that stays silent is handed over anyway once its second ACK comes, about a second later
/// (nginx's `deferred` uses the same 1 s for the same reason); the head-read timeout takes
/// over from there.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn defer_accept(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let seconds: libc::c_int = 1;
    // SAFETY: a valid descriptor owned by `socket` for the duration of the call, and a
    // pointer to a live `c_int` with its exact size, as TCP_DEFER_ACCEPT expects.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_accept(_socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A client that has connected but sent nothing is not handed over yet; its first bytes
    /// bring the connection in, and they are already readable when the accept returns.
    #[tokio::test]
    async fn traffic_listener_hands_over_connections_with_their_first_bytes() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        // The kernel holds a silent connection for about a second (the deferral), so a
        // handover within this window would mean the option is not set.
        let early = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(early.is_err(), "a silent connection was accepted at once");
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (accepted, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("accepted once bytes arrived")
            .unwrap();
        let mut head = [0u8; 64];
        let n = accepted
            .try_read(&mut head)
            .expect("bytes readable at accept");
        assert_eq!(&head[..n], b"GET / HTTP/1.1\r\n");
        // Set on the listener, inherited: the accept loop relies on it to skip a system call.
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY not inherited");
    }
}
