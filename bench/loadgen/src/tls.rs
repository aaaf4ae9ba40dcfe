//! TLS for `wss://` targets and for the direct baseline's TLS echo backend (issue 22).
//!
//! Every target gets the same offer: TLS 1.3 only, TLS_AES_128_GCM_SHA256 only, X25519 first
//! (P-256 as a fallback, so a peer without X25519 would show up as a hello retry and a different
//! group in the JSON line, not as a failure). rustls' own default order with the ring provider
//! would put a different group first, one that OpenSSL-based peers compute more slowly, and the
//! comparison would then be between key exchanges, not between proxies.
//!
//! The server's certificate is accepted by pinning: the end-entity certificate must be byte for
//! byte the one in `--cert`, and the handshake signature is verified with its key as usual. A
//! self-signed benchmark certificate has no chain to check, but a wrong server still fails.
//!
//! Which group, suite and handshake kind every connection negotiated is tallied process-wide
//! and printed in the JSON line (`tls`), so a run states what it measured.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, HandshakeKind,
    ServerConfig, SignatureScheme,
};
use serde_json::{json, Value};

/// The one cipher suite and the key exchange order every target is offered.
// rustls 0.23.48 deprecates ring's provider for lacking post-quantum groups; none is offered here
// on purpose (X25519 is pinned for every target), and ring is the provider wsgate itself uses.
#[allow(deprecated)]
fn bench_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![provider::kx_group::X25519, provider::kx_group::SECP256R1],
        ..provider::default_provider()
    }
}

/// Client side of a `wss://` target.
pub fn client_config(pinned_cert: &Path, resumption: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let cert = CertificateDer::from_pem_file(pinned_cert)
        .map_err(|error| anyhow!("--cert {}: {error}", pinned_cert.display()))?;
    let provider = Arc::new(bench_provider());
    let verifier = PinnedCert {
        cert,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the bench provider")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.resumption = if resumption {
        // rustls' default: TLS 1.3 tickets kept in memory, a few per server.
        rustls::client::Resumption::in_memory_sessions(256)
    } else {
        rustls::client::Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// Server side of `loadgen tls-echo` (the direct baseline): the same settings, stateless
/// session tickets as nginx and HAProxy issue them by default.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow!("--cert {}: {error}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "--cert {}: no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| anyhow!("--key {}: {error}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(bench_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the bench provider")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key")?;
    config.ticketer = provider::Ticketer::new().context("session ticketer")?;
    Ok(Arc::new(config))
}

/// Accepts exactly one end-entity certificate; signatures are checked as by any verifier.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What the handshakes of this process negotiated.
#[derive(Default)]
struct Tally {
    full: u64,
    resumed: u64,
    hello_retry: u64,
    versions: BTreeMap<String, u64>,
    groups: BTreeMap<String, u64>,
    suites: BTreeMap<String, u64>,
}

static TALLY: Mutex<Option<Tally>> = Mutex::new(None);

/// Counts one completed handshake (once per connection, next to a TLS handshake's cost).
pub fn record(state: &CommonState) {
    let mut guard = TALLY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let tally = guard.get_or_insert_with(Tally::default);
    match state.handshake_kind() {
        Some(HandshakeKind::Resumed) => tally.resumed += 1,
        Some(HandshakeKind::FullWithHelloRetryRequest) => {
            tally.full += 1;
            tally.hello_retry += 1;
        }
        _ => tally.full += 1,
    }
    let name = |text: Option<String>| text.unwrap_or_else(|| "none".to_owned());
    *tally
        .versions
        .entry(name(state.protocol_version().map(|v| format!("{v:?}"))))
        .or_default() += 1;
    *tally
        .groups
        .entry(name(
            state
                .negotiated_key_exchange_group()
                .map(|group| format!("{:?}", group.name())),
        ))
        .or_default() += 1;
    *tally
        .suites
        .entry(name(
            state
                .negotiated_cipher_suite()
                .map(|suite| format!("{:?}", suite.suite())),
        ))
        .or_default() += 1;
}

/// The tally as JSON, or null when this process made no TLS connection.
pub fn summary() -> Value {
    let guard = TALLY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(tally) = guard.as_ref() else {
        return Value::Null;
    };
    // The one value every handshake agreed on, or "mixed" (the counts say which).
    let only = |map: &BTreeMap<String, u64>| match map.len() {
        1 => json!(map.keys().next()),
        _ => json!("mixed"),
    };
    json!({
        "handshakes": tally.full + tally.resumed,
        "full": tally.full,
        "resumed": tally.resumed,
        "hello_retry": tally.hello_retry,
        "version": only(&tally.versions),
        "key_exchange": only(&tally.groups),
        "cipher_suite": only(&tally.suites),
        "versions": tally.versions,
        "key_exchanges": tally.groups,
        "cipher_suites": tally.suites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offer pins X25519 first and AES-128-GCM alone, whatever rustls' defaults are.
    #[test]
    fn bench_provider_offers_x25519_first_and_aes128_only() {
        let provider = bench_provider();
        assert_eq!(
            provider.kx_groups[0].name(),
            rustls::NamedGroup::X25519,
            "X25519 first"
        );
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites, vec![rustls::CipherSuite::TLS13_AES_128_GCM_SHA256]);
    }
}
