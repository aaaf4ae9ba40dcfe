//! TLS both ways. Termination: one rustls `ServerConfig` whose certificate resolver reads
//! the *current* route table on every handshake (exact SNI, wildcard, default), so a new
//! table rotates certificates for new handshakes while live connections keep theirs.
//! Origination: the handshake with `wss`/`https` backends, with the configuration
//! `compile` built for the route (`table::UpstreamTls`: platform roots plus the route's
//! CA, or the accept-anything verifier the route asked for) and the backend's host (or
//! `backendTls.serverName`) as SNI.
//!
//! Only TLS 1.2 and 1.3, ALPN `http/1.1`, the ring provider (kube links it already).

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;

use super::error::BackendTlsFailure;
use super::stream::Stream;
use super::Error;
use crate::model::{crypto_provider, Endpoint};
use crate::table::{CompiledRoute, Publisher};

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Chooses the certificate per ClientHello from the table serving now.
struct SniResolver {
    publisher: Arc<Publisher>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.publisher.current();
        let found = table.certificates().resolve(hello.server_name());
        if found.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate for this server name and no default; refusing the handshake");
        }
        found.map(|c| Arc::clone(c.certified_key()))
    }
}

/// The TLS listener's configuration: TLS 1.2/1.3, ALPN `http/1.1`, certificates by SNI
/// from `publisher`'s current table.
pub fn server_config(publisher: Arc<Publisher>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { publisher }));
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Wraps a connected backend socket in TLS when the route is `wss`; a refused certificate
/// or failed handshake is a 502 naming the route, the endpoint and the reason.
pub async fn upstream_stream(
    route: &CompiledRoute,
    tcp: TcpStream,
    endpoint: &Endpoint,
) -> Result<Stream, Error> {
    let Some(tls) = &route.upstream_tls else {
        return Ok(Stream::Tcp(tcp));
    };
    let fail = |source: BackendTlsFailure| {
        let e = Error::UpstreamTls {
            route: route.route.id.0.clone(),
            endpoint: endpoint.authority(),
            source,
        };
        tracing::warn!(error = %e.chain(), "TLS to backend failed");
        e
    };
    let config = tls
        .config()
        .map_err(|e| fail(BackendTlsFailure::Settings(e)))?;
    let name = tls
        .server_name(endpoint)
        .map_err(|e| fail(BackendTlsFailure::Settings(e)))?;
    let server_name = name.to_str().into_owned();
    let connector = tokio_rustls::TlsConnector::from(config);
    let timeout = route.route.timeouts.connect.max(Duration::from_secs(1));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(Stream::Client(Box::new(stream))),
        // rustls reports a refused certificate as an `io::Error` wrapping `rustls::Error`,
        // whose text names the reason (e.g. `invalid peer certificate: UnknownIssuer`).
        Ok(Err(source)) => Err(fail(BackendTlsFailure::Handshake {
            server_name,
            source,
        })),
        Err(_) => Err(fail(BackendTlsFailure::Timeout {
            server_name,
            ms: timeout.as_millis() as u64,
        })),
    }
}
