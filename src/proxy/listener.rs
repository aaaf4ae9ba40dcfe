//! Accepting client connections and serving HTTP/1.1 on them (hyper), with upgrades.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::service::handle;
use super::Gateway;

/// hyper's read buffer: room for a head at the 431 limit plus what arrives behind it.
const READ_BUF_BYTES: usize = 2 * super::service::MAX_HEAD_BYTES;
/// A client must send its whole request head within this time (slowloris guard).
const HEAD_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves until the drain starts, then stops accepting. Connections keep running in the
/// drain's tracker.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, proto: &'static str) {
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
        let mut conn_drain = gw.drain.signal();
        gw.drain.spawn(async move {
            let svc = service_fn(move |req| handle(Arc::clone(&gw2), peer, proto, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_READ_TIMEOUT)
                .max_buf_size(READ_BUF_BYTES)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = conn_drain.wait() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracing::info!("listener stopped accepting");
}
