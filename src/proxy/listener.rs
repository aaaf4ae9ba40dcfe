//! Accepting client connections (plain, or TLS with certificates chosen by SNI); each is
//! then served by `connection.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use tracing::Instrument;

use super::proxy_protocol;
use super::request::connection_span;
use super::stream::Stream;
use super::Gateway;

/// A client must finish its TLS handshake within this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until the drain starts, then stops accepting. Connections keep running in the
/// drain's tracker.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, proto: &'static str) {
    accept_loop(listener, gw, proto, None).await
}

/// `serve` for the TLS listener: each connection's handshake runs in its own task, with
/// the certificate chosen by `acceptor`'s resolver from the current table.
pub async fn serve_tls(listener: TcpListener, gw: Arc<Gateway>, acceptor: TlsAcceptor) {
    accept_loop(listener, gw, "https", Some(acceptor)).await
}

async fn accept_loop(
    listener: TcpListener,
    gw: Arc<Gateway>,
    proto: &'static str,
    tls: Option<TlsAcceptor>,
) {
    let mut drain = gw.drain.signal();
    let mut nodelay = NoDelay::Unknown;
    loop {
        let accepted = tokio::select! {
            _ = drain.wait() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        nodelay.ensure(&stream);
        let span = connection_span(peer);
        let task = connection_task(Arc::clone(&gw), stream, peer, proto, tls.clone());
        // Boxed: the task then holds a pointer, not the connection's whole future, so
        // spawning and finishing it copy a few bytes instead of ~1.3 KB several times over
        // (callgrind: ~3 % of a handshake's instructions).
        gw.drain.spawn(Box::pin(task.instrument(span)));
    }
    tracing::info!("listener stopped accepting");
}

/// One accepted connection from its first byte to its end: the PROXY protocol header when
/// `--proxy-protocol` asks for it, the TLS handshake on the TLS listener, then
/// `connection::serve`.
///
/// Its future is boxed for the life of the connection and sized by its largest state, so
/// the PROXY header read and the TLS handshake are boxed on their own (freed once done):
/// an idle relayed connection's box is then the relay's size, under mimalloc's 1,280-byte
/// class instead of in its 2,048-byte one (bench/RESULTS.md, "Issue 22: idle memory"). A
/// function returning an `async move` block, not an async fn, for the same reason as
/// `connection::serve`.
fn connection_task(
    gw: Arc<Gateway>,
    mut stream: tokio::net::TcpStream,
    mut peer: std::net::SocketAddr,
    proto: &'static str,
    tls: Option<TlsAcceptor>,
) -> impl std::future::Future<Output = ()> + Send {
    let conn_drain = gw.drain.signal();
    let proxy_protocol = gw.client_address.proxy_protocol;
    async move {
        if proxy_protocol {
            match Box::pin(proxy_protocol::read_header(&mut stream)).await {
                Ok(Some(source)) => {
                    tracing::Span::current()
                        .record("forwarded_for", tracing::field::display(source));
                    peer = source;
                }
                // A balancer's health check: the TCP peer stays.
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "connection closed: no valid PROXY protocol header");
                    return;
                }
            }
        }
        let stream = match tls {
            None => Stream::Tcp(stream),
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                match Box::pin(handshake).await {
                    Ok(Ok(s)) => Stream::Server(Box::new(s)),
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake with client failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %peer, "TLS handshake with client timed out");
                        return;
                    }
                }
            }
        };
        super::connection::serve(gw, stream, peer, proto, conn_drain).await;
    }
}

/// Whether accepted connections arrive with TCP_NODELAY already set (inherited from a
/// listener bound with it, as `app::server` binds them), learned from the first connection
/// with one `getsockopt`, so the rest skip a `setsockopt` each.
enum NoDelay {
    Unknown,
    Inherited,
    SetEach,
}

impl NoDelay {
    fn ensure(&mut self, stream: &tokio::net::TcpStream) {
        match self {
            NoDelay::Inherited => {}
            NoDelay::SetEach => {
                let _ = stream.set_nodelay(true);
            }
            NoDelay::Unknown => {
                *self = if stream.nodelay().unwrap_or(false) {
                    NoDelay::Inherited
                } else {
                    let _ = stream.set_nodelay(true);
                    NoDelay::SetEach
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NoDelay;

    /// An idle relayed connection's memory is mostly this future's box (the relay inside
    /// it): it must stay within mimalloc's 1,280-byte size class.
    #[tokio::test]
    async fn connection_task_stays_in_the_1280_byte_class() {
        let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
        let publisher = std::sync::Arc::new(crate::table::Publisher::new(metrics.clone()));
        let drain = crate::proxy::Drain::new();
        let gw = crate::proxy::Gateway::new(publisher, metrics, drain, Default::default());
        let stream = accepted(true).await;
        let peer = stream.peer_addr().unwrap();
        let task = super::connection_task(gw, stream, peer, "http", None);
        let size = std::mem::size_of_val(&task);
        // 1,560 before issue 22 boxed the handshakes and dropped the async fns' copies of
        // their arguments (print-type-size); 2,000 bytes and more earlier.
        assert!(size <= 1280, "connection task grew to {size} bytes");
    }

    async fn accepted(listener_nodelay: bool) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_nodelay(listener_nodelay).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(8).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        listener.accept().await.unwrap().0
    }

    /// Every accepted connection ends up with TCP_NODELAY, whether the listener passed it on
    /// (then no call per connection) or not (then each is set).
    #[tokio::test]
    async fn accepted_connections_always_get_nodelay() {
        for listener_nodelay in [true, false] {
            let mut state = NoDelay::Unknown;
            for _ in 0..2 {
                let stream = accepted(listener_nodelay).await;
                state.ensure(&stream);
                assert!(
                    stream.nodelay().unwrap(),
                    "listener nodelay {listener_nodelay}"
                );
            }
            assert_eq!(
                matches!(state, NoDelay::Inherited),
                listener_nodelay,
                "what the first connection showed is remembered"
            );
        }
    }
}
