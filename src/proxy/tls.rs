//! TLS both ways. Termination: one rustls `ServerConfig` whose certificate resolver reads
//! the *current* route table on every handshake (exact SNI, wildcard, default), so a new
//! table rotates certificates for new handshakes while live connections keep theirs.
//! Origination: `wss`/`https` backends verified against the platform roots plus the
//! route's CA, with the backend's host (or `backendTls.serverName`) as SNI; the dangerous
//! accept-anything verifier applies to the one route that asked for it.
//!
//! Only TLS 1.2 and 1.3, ALPN `http/1.1`, the ring provider (kube links it already).

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::TcpStream;

// Re-exported: `Stream` lives in stream.rs; relay.rs still names it by this path.
pub use super::stream::Stream;
use super::Error;
use crate::model::{crypto_provider, BackendTls, CaBundle, Endpoint, Route};
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

/// The platform's trust anchors, read once per process.
fn platform_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "some platform CA certificates could not be read");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "platform CA certificates loaded");
        roots
    })
}

/// TLS towards one `wss` route's backends. Built in `compile` without I/O; the rustls
/// configuration (platform roots + the route's CA) is made on the first dial and shared by
/// every later one of this table generation.
#[derive(Debug)]
pub struct UpstreamTls {
    accept_any: bool,
    backend: BackendTls,
    config: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl UpstreamTls {
    pub fn new(route: &Route) -> Self {
        UpstreamTls {
            accept_any: route.insecure_skip_verify,
            backend: route.backend_tls.clone(),
            config: OnceLock::new(),
        }
    }

    fn config(&self) -> Result<Arc<ClientConfig>, String> {
        self.config
            .get_or_init(|| client_config(self.accept_any, self.backend.ca.as_ref()))
            .clone()
    }

    /// The name sent as SNI and checked against the certificate.
    fn server_name(&self, endpoint: &Endpoint) -> Result<ServerName<'static>, String> {
        let name = self
            .backend
            .server_name
            .as_deref()
            .unwrap_or_else(|| endpoint.host.trim_start_matches('[').trim_end_matches(']'));
        ServerName::try_from(name.to_string())
            .map_err(|_| format!("`{name}` is not a valid TLS server name"))
    }
}

fn client_config(accept_any: bool, ca: Option<&CaBundle>) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let mut config = if accept_any {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate))
            .with_no_client_auth()
    } else {
        let mut roots = platform_roots().clone();
        if let Some(ca) = ca {
            roots.extend(ca.roots().roots.iter().cloned());
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
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
    let fail = |reason: String| {
        tracing::warn!(route = %route.route.id, endpoint = %endpoint.authority(), reason = %reason, "TLS to backend failed");
        Error::UpstreamTls {
            route: route.route.id.0.clone(),
            endpoint: endpoint.authority(),
            reason,
        }
    };
    let config = tls.config().map_err(fail)?;
    let name = tls.server_name(endpoint).map_err(fail)?;
    let shown = name.to_str().into_owned();
    let connector = tokio_rustls::TlsConnector::from(config);
    let timeout = route.route.timeouts.connect.max(Duration::from_secs(1));
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(Stream::Client(Box::new(stream))),
        Ok(Err(e)) => Err(fail(format!("handshake as `{shown}`: {}", describe(&e)))),
        Err(_) => Err(fail(format!(
            "handshake as `{shown}` did not finish within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// rustls reports certificate problems as an `io::Error` wrapping `rustls::Error`.
fn describe(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!("the backend's certificate was refused: {c:?}")
        }
        Some(other) => other.to_string(),
        None => e.to_string(),
    }
}

/// `dangerousAcceptAnyServerCertificateValidator: true`: any certificate, any name. The
/// handshake signature is still checked, so the peer holds the key of what it presented.
#[derive(Debug)]
struct AcceptAnyServerCertificate;

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
