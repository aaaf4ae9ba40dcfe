//! TLS material in the model: a route's server certificate (termination) and the trust
//! settings for `wss`/`https` backends (origination). Sources read the bytes (files,
//! Secrets); parsing and checking happen here, so both sources report the same problems.
//! Key material never appears in `Debug` output or errors: certificates compare and print
//! by a digest.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use sha1::{Digest, Sha1};

/// Why PEM input is not a usable certificate, key or CA bundle. Never carries the contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("{source_name}: no PEM `CERTIFICATE` block found")]
    NoCertificate { source_name: String },
    #[error("{source_name}: the certificate PEM does not parse: {reason}")]
    BadCertificatePem { source_name: String, reason: String },
    #[error("{source_name}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found")]
    NoKey { source_name: String },
    #[error("{source_name}: the private key is not usable: {reason}")]
    BadKey { source_name: String, reason: String },
    #[error("{source_name}: the private key does not belong to the first certificate")]
    KeyMismatch { source_name: String },
    #[error("{source_name}: CA certificate {index} is not a valid X.509 certificate: {reason}")]
    BadCa {
        source_name: String,
        index: usize,
        reason: String,
    },
}

/// The crypto provider wsgate uses everywhere (ring: kube already links it).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A certificate chain with its private key, checked to belong together.
#[derive(Clone)]
pub struct ServerCertificate {
    /// Where it came from (`secret apps/chat-tls`, `file certs/chat.pem`), for logs.
    source: Arc<str>,
    key: Arc<CertifiedKey>,
    digest: [u8; 20],
}

impl ServerCertificate {
    /// Parses a PEM chain (leaf first) and a PEM private key and checks that they match.
    pub fn from_pem(
        source: impl Into<String>,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, CertificateError> {
        let source: String = source.into();
        let chain = parse_certs(&source, cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => CertificateError::NoKey {
                source_name: source.clone(),
            },
            other => CertificateError::BadKey {
                source_name: source.clone(),
                reason: pem_reason(&other),
            },
        })?;
        let mut hasher = Sha1::new();
        for c in &chain {
            hasher.update(c.as_ref());
        }
        hasher.update(key.secret_der());
        let digest = hasher.finalize().into();
        let certified =
            CertifiedKey::from_der(chain, key, &crypto_provider()).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => CertificateError::KeyMismatch {
                    source_name: source.clone(),
                },
                other => CertificateError::BadKey {
                    source_name: source.clone(),
                    reason: other.to_string(),
                },
            })?;
        Ok(ServerCertificate {
            source: source.into(),
            key: Arc::new(certified),
            digest,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// What rustls serves in a handshake.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.key.cert[0]
    }
}

impl PartialEq for ServerCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.source == other.source
    }
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("source", &self.source)
            .field("sha1", &hex(&self.digest[..6]))
            .finish()
    }
}

/// Extra trust anchors for backends (`backendTls.caSecretName` / `caFile`).
#[derive(Clone)]
pub struct CaBundle {
    source: Arc<str>,
    roots: Arc<RootCertStore>,
    digest: [u8; 20],
}

impl CaBundle {
    /// Every `CERTIFICATE` block of `pem`; at least one, each a valid X.509 certificate.
    pub fn from_pem(source: impl Into<String>, pem: &[u8]) -> Result<Self, CertificateError> {
        let source: String = source.into();
        let certs = parse_certs(&source, pem)?;
        let mut roots = RootCertStore::empty();
        let mut hasher = Sha1::new();
        for (index, cert) in certs.into_iter().enumerate() {
            hasher.update(cert.as_ref());
            roots.add(cert).map_err(|e| CertificateError::BadCa {
                source_name: source.clone(),
                index,
                reason: e.to_string(),
            })?;
        }
        Ok(CaBundle {
            source: source.into(),
            roots: Arc::new(roots),
            digest: hasher.finalize().into(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn roots(&self) -> &RootCertStore {
        &self.roots
    }
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.source == other.source
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("source", &self.source)
            .field("certificates", &self.roots.len())
            .finish()
    }
}

/// How wsgate talks TLS to a `wss` route's backends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendTls {
    /// SNI and the name the backend's certificate must carry; `None` = the endpoint's host.
    pub server_name: Option<String>,
    /// Trusted in addition to the platform roots.
    pub ca: Option<CaBundle>,
}

fn parse_certs(source: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateError::BadCertificatePem {
            source_name: source.to_string(),
            reason: pem_reason(&e),
        })?;
    if certs.is_empty() {
        return Err(CertificateError::NoCertificate {
            source_name: source.to_string(),
        });
    }
    Ok(certs)
}

/// What is wrong with PEM input, without quoting any of it (some pki-types errors carry
/// the offending line, which may belong to a key).
fn pem_reason(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        Error::Base64Decode(_) => "a PEM section is not valid base64".into(),
        Error::NoItemsFound => "no PEM section found".into(),
        _ => "the PEM text is malformed".into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
