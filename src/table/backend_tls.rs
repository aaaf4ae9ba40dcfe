//! TLS towards `wss`/`https` backends, configured in `compile`: the rustls client
//! configuration of each `wss` route (platform roots plus the route's CA, or the dangerous
//! accept-anything verifier the route asked for), so a dial only does the handshake.
//!
//! The platform roots are read from disk once, at start-up and off the async runtime, by
//! the app, which hands them to the `Publisher` as `BackendRoots`; compiling never reads
//! a file. Routes without a CA of their own share one configuration (and its session
//! cache); a route with a CA gets its own.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::model::{crypto_provider, CaBundle, Endpoint, Route};

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The trust anchors every `wss` backend is verified against (with its route's CA), and
/// the client configurations shared by the routes that add nothing to them. Cheap to
/// clone; built once per process.
#[derive(Clone)]
pub struct BackendRoots(Arc<SharedConfigs>);

struct SharedConfigs {
    roots: Arc<RootCertStore>,
    verified: OnceLock<Result<Arc<ClientConfig>, rustls::Error>>,
    accept_any: OnceLock<Result<Arc<ClientConfig>, rustls::Error>>,
}

impl BackendRoots {
    /// `roots` as loaded by the caller (the app reads the platform's store at start-up).
    pub fn new(roots: RootCertStore) -> Self {
        BackendRoots(Arc::new(SharedConfigs {
            roots: Arc::new(roots),
            verified: OnceLock::new(),
            accept_any: OnceLock::new(),
        }))
    }

    /// No platform roots: `wss` backends are trusted only through their route's CA
    /// (`backendTls`). For tests and the demo, which never reach public backends.
    pub fn none() -> Self {
        Self::new(RootCertStore::empty())
    }

    fn config_for(&self, route: &Route) -> Result<Arc<ClientConfig>, rustls::Error> {
        let shared = &self.0;
        match (route.insecure_skip_verify, &route.backend_tls.ca) {
            (true, _) => shared
                .accept_any
                .get_or_init(|| client_config(Verify::AcceptAny))
                .clone(),
            (false, None) => shared
                .verified
                .get_or_init(|| client_config(Verify::Roots(Arc::clone(&shared.roots))))
                .clone(),
            (false, Some(ca)) => client_config(Verify::Roots(with_ca(&shared.roots, ca))),
        }
    }
}

impl fmt::Debug for BackendRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendRoots")
            .field("certificates", &self.0.roots.len())
            .finish()
    }
}

fn with_ca(roots: &RootCertStore, ca: &CaBundle) -> Arc<RootCertStore> {
    let mut roots = roots.clone();
    roots.extend(ca.roots().roots.iter().cloned());
    Arc::new(roots)
}

enum Verify {
    Roots(Arc<RootCertStore>),
    AcceptAny,
}

fn client_config(verify: Verify) -> Result<Arc<ClientConfig>, rustls::Error> {
    let builder =
        ClientConfig::builder_with_provider(crypto_provider()).with_protocol_versions(VERSIONS)?;
    let mut config = match verify {
        Verify::AcceptAny => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCertificate))
            .with_no_client_auth(),
        Verify::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Why a `wss` backend cannot be dialled with TLS before any byte is sent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("no TLS client configuration: {source}")]
    Config {
        #[source]
        source: rustls::Error,
    },
    #[error("`{name}` is not a valid TLS server name")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
}

/// TLS towards one `wss` route's backends, built in `compile` and shared by every dial of
/// the route for as long as it does not change.
#[derive(Debug)]
pub struct UpstreamTls {
    config: Result<Arc<ClientConfig>, rustls::Error>,
    /// `backendTls.serverName`; `None`: each endpoint's host.
    server_name: Option<String>,
}

impl UpstreamTls {
    pub fn new(route: &Route, roots: &BackendRoots) -> Self {
        UpstreamTls {
            config: roots.config_for(route),
            server_name: route.backend_tls.server_name.clone(),
        }
    }

    /// The rustls configuration every handshake of this route uses.
    pub fn config(&self) -> Result<Arc<ClientConfig>, UpstreamTlsError> {
        self.config
            .clone()
            .map_err(|source| UpstreamTlsError::Config { source })
    }

    /// The name sent as SNI and checked against the certificate.
    pub fn server_name(
        &self,
        endpoint: &Endpoint,
    ) -> Result<ServerName<'static>, UpstreamTlsError> {
        let name = self
            .server_name
            .as_deref()
            .unwrap_or_else(|| endpoint.host.trim_start_matches('[').trim_end_matches(']'));
        ServerName::try_from(name.to_string()).map_err(|source| UpstreamTlsError::ServerName {
            name: name.to_string(),
            source,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Scheme;
    use crate::table::tests::route;

    fn ca() -> CaBundle {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed CA");
        CaBundle::from_pem("test ca", cert.pem().as_bytes()).expect("CA bundle")
    }

    fn wss(id: &str) -> Route {
        let mut r = route(id, 0, "/a", "/");
        r.scheme = Scheme::Wss;
        r
    }

    /// Routes that add nothing to the roots share one client configuration (one per
    /// verification mode); a route with its own CA gets its own.
    #[test]
    fn routes_without_a_ca_share_one_client_config() {
        let roots = BackendRoots::none();
        let config = |r: &Route| UpstreamTls::new(r, &roots).config().expect("config");
        let (a, b) = (wss("a"), wss("b"));
        assert!(Arc::ptr_eq(&config(&a), &config(&b)));
        let mut insecure = wss("insecure");
        insecure.insecure_skip_verify = true;
        assert!(!Arc::ptr_eq(&config(&a), &config(&insecure)));
        assert!(Arc::ptr_eq(&config(&insecure), &config(&insecure.clone())));
        let mut with_ca = wss("with-ca");
        with_ca.backend_tls.ca = Some(ca());
        assert!(!Arc::ptr_eq(&config(&a), &config(&with_ca)));
        assert_eq!(config(&a).alpn_protocols, vec![ALPN_HTTP11.to_vec()]);
    }

    /// The server name is `backendTls.serverName`, else the endpoint's host without IPv6
    /// brackets; a host that is no TLS name is a typed error naming it.
    #[test]
    fn server_name_comes_from_backend_tls_or_the_endpoint() {
        let roots = BackendRoots::none();
        let endpoint = Endpoint::new("[::1]", 443);
        let tls = UpstreamTls::new(&wss("a"), &roots);
        assert_eq!(tls.server_name(&endpoint).expect("ip").to_str(), "::1");
        let mut named = wss("named");
        named.backend_tls.server_name = Some("chat.internal".into());
        let tls = UpstreamTls::new(&named, &roots);
        assert_eq!(
            tls.server_name(&endpoint).expect("name").to_str(),
            "chat.internal"
        );
        let tls = UpstreamTls::new(&wss("a"), &roots);
        let e = tls
            .server_name(&Endpoint::new("bad name", 443))
            .unwrap_err();
        assert!(matches!(&e, UpstreamTlsError::ServerName { name, .. } if name == "bad name"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
