//! Wiring the pieces into running processes: the gateway server (listeners, admin,
//! shutdown), standalone mode, the demo and the small client.

pub mod client;
pub mod cluster;
pub mod demo;
pub mod server;
pub mod standalone;

pub use server::{Server, ServerOptions};

/// Where the TLS listener goes when a certificate is configured and `--tls-listen` is not.
pub const DEFAULT_TLS_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8443);

/// Reads a PEM certificate chain and key (`--default-cert`, `--default-key`).
pub fn read_certificate(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<crate::model::ServerCertificate> {
    use anyhow::Context;
    let cert_pem =
        std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    Ok(crate::model::ServerCertificate::from_pem(
        format!("file {}", cert.display()),
        &cert_pem,
        &key_pem,
    )?)
}

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
