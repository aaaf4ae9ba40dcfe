//! Wiring the pieces into running processes: the gateway server (listeners, admin,
//! shutdown), standalone mode, the demo and the small client.

pub mod client;
pub mod cluster;
pub mod demo;
pub mod server;
pub mod standalone;

pub use server::{Server, ServerOptions};

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Raises the open-file soft limit to the hard limit: a relayed connection needs two
/// descriptors, and the default soft limit (1024) caps a gateway at ~500 sockets.
pub fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit raised"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}
