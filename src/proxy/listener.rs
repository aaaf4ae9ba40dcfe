//! Accepting client connections (plain, or TLS with certificates chosen by SNI); each is
//! then served by `connection.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::tls::Stream;
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
        let _ = stream.set_nodelay(true);
        let gw2 = Arc::clone(&gw);
        let conn_drain = gw.drain.signal();
        let tls = tls.clone();
        // Boxed: the task then holds a pointer, not the connection's whole future, so
        // spawning and finishing it copy a few bytes instead of ~1.6 KB several times over
        // (callgrind: ~3 % of a handshake's instructions).
        gw.drain.spawn(Box::pin(async move {
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
        }));
    }
    tracing::info!("listener stopped accepting");
}
