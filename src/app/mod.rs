//! Wiring the pieces into running processes: the gateway server (listeners, admin,
//! shutdown), standalone mode, the demo and the small client.

pub mod client;
pub mod cluster;
pub mod demo;
pub mod server;
pub mod standalone;

pub use server::{ListeningReport, Server, ServerOptions};

/// The sticky-session key from `--sticky-key-file` or `WSGATE_STICKY_KEY` (at most one),
/// else a random one with a loud warning: cookies set by this process then mean nothing to
/// other replicas or after a restart.
pub fn sticky_key(
    file: Option<&std::path::Path>,
    inline: Option<&str>,
) -> anyhow::Result<crate::balance::StickyKey> {
    use crate::balance::StickyKey;
    use anyhow::Context;
    let bytes = match (file, inline.filter(|k| !k.is_empty())) {
        (Some(_), Some(_)) => anyhow::bail!(
            "give the sticky-session key once: --sticky-key-file or WSGATE_STICKY_KEY, not both"
        ),
        (Some(path), None) => {
            let raw = std::fs::read(path).with_context(|| {
                format!(
                    "cannot read the sticky-session key file {} (--sticky-key-file)",
                    path.display()
                )
            })?;
            // A Secret mounted from `kubectl create secret --from-literal` or an editor may
            // end in a newline that is not part of the key.
            let end = raw
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |i| i + 1);
            raw[..end].to_vec()
        }
        (None, Some(key)) => key.trim().as_bytes().to_vec(),
        (None, None) => {
            tracing::warn!(
                "no --sticky-key-file or WSGATE_STICKY_KEY: sticky-session cookies are signed with a random per-process key, \
                 so CookieStickySessions does not hold across wsgate replicas or restarts; give every replica the same key"
            );
            return Ok(StickyKey::random());
        }
    };
    StickyKey::new(&bytes).with_context(|| match file {
        Some(p) => format!("sticky-session key from {}", p.display()),
        None => "sticky-session key from WSGATE_STICKY_KEY".to_string(),
    })
}

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

/// The platform's trust anchors for `wss` backends. Blocking (it reads the system's
/// certificate files): `main` calls it once, before the async runtime starts, so no
/// runtime worker waits on the disk (it used to happen on the first `wss` dial) and a
/// one-worker gateway stays one thread (no blocking pool).
pub fn load_platform_roots() -> crate::table::BackendRoots {
    let started = std::time::Instant::now();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "some platform CA certificates could not be read");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(
        added,
        ignored,
        ms = started.elapsed().as_secs_f64() * 1e3,
        "platform CA certificates loaded"
    );
    crate::table::BackendRoots::new(roots)
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

#[cfg(test)]
mod tests {
    use super::sticky_key;

    /// What a key signs with: the keyed id of one endpoint (equal ids, equal keys).
    fn signs_as(key: &crate::balance::StickyKey) -> u64 {
        key.endpoint_id("10.0.0.1:8080")
    }

    /// The key comes from the file (trailing newline dropped) or the environment value,
    /// never both; a short key is refused; none at all gives a random key.
    #[test]
    fn sticky_key_sources() {
        use crate::balance::StickyKey;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "0123456789abcdef\n").unwrap();
        // The newline is not part of the key: a replica given the same key without it (in
        // WSGATE_STICKY_KEY, or a file written without one) must honour the same cookies.
        let bare = signs_as(&StickyKey::new(b"0123456789abcdef").unwrap());
        let with_newline = signs_as(&StickyKey::new(b"0123456789abcdef\n").unwrap());
        assert_ne!(bare, with_newline, "a newline would change the key");
        assert_eq!(
            signs_as(&sticky_key(Some(&file), None).unwrap()),
            bare,
            "the file's trailing newline became part of the key"
        );
        assert_eq!(
            signs_as(&sticky_key(None, Some("0123456789abcdef\n")).unwrap()),
            bare
        );
        assert_eq!(
            signs_as(&sticky_key(None, Some("0123456789abcdef")).unwrap()),
            bare
        );
        let random = sticky_key(None, None).unwrap();
        assert_ne!(signs_as(&random), bare);
        assert_ne!(
            signs_as(&random),
            signs_as(&sticky_key(None, None).unwrap()),
            "each random key is new"
        );

        let both = sticky_key(Some(&file), Some("0123456789abcdef")).unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        std::fs::write(&file, "short\n").unwrap();
        let short = format!("{:#}", sticky_key(Some(&file), None).unwrap_err());
        assert!(
            short.contains("5 bytes") && short.contains("at least 16"),
            "{short}"
        );
        let missing = format!(
            "{:#}",
            sticky_key(Some(&dir.path().join("nope")), None).unwrap_err()
        );
        assert!(missing.contains("--sticky-key-file"), "{missing}");
    }
}
