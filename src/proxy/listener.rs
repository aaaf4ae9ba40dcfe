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
        let gw2 = Arc::clone(&gw);
        let conn_drain = gw.drain.signal();
        let tls = tls.clone();
        // Boxed: the task then holds a pointer, not the connection's whole future, so
        // spawning and finishing it copy a few bytes instead of ~1.6 KB several times over
        // (callgrind: ~3 % of a handshake's instructions).
        let span = connection_span(peer);
        let proxy_protocol = gw.client_address.proxy_protocol;
        gw.drain.spawn(Box::pin(async move {
            let mut stream = stream;
            let mut peer = peer;
            if proxy_protocol {
                match proxy_protocol::read_header(&mut stream).await {
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
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
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
            super::connection::serve(gw2, stream, peer, proto, conn_drain).await;
        }.instrument(span)));
    }
    tracing::info!("listener stopped accepting");
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
