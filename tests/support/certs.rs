//! Certificates generated per test (rcgen): a CA, leaves for host names (valid, expired,
//! self-signed), plus TLS peers: a client that reports which certificate the gateway
//! presented, and a TLS echo backend (TLS in front of the real echo server).

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use wsgate::model::{crypto_provider, CaBundle, ServerCertificate};

use super::{within, Echo};

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// As the model holds it (what a route's `tls` or the default certificate resolves to).
    pub fn certificate(&self, source: &str) -> ServerCertificate {
        ServerCertificate::from_pem(source, self.cert_pem.as_bytes(), self.key_pem.as_bytes())
            .expect("generated certificate parses")
    }

    /// Writes `cert.pem`-style files into `dir` and returns their paths.
    pub fn write(
        &self,
        dir: &std::path::Path,
        name: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            pem: cert.pem(),
        }
    }

    /// A leaf for `names` (DNS names; `*.x` wildcards allowed), valid now.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.sign(leaf_params(names))
    }

    /// A leaf for `names` that expired in 2021.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        let mut params = leaf_params(names);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
        self.sign(params)
    }

    pub fn bundle(&self) -> CaBundle {
        CaBundle::from_pem("test CA", self.pem.as_bytes()).unwrap()
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    params
}

/// A self-signed leaf for `names` (no CA vouches for it).
pub fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let cert = leaf_params(names).self_signed(&key).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A client verifier that accepts anything, so a test can look at what was presented.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &crypto_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &crypto_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS to `addr` with `sni`; returns the stream and the leaf the server presented, or the
/// handshake error.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
) -> Result<(ClientTls, CertificateDer<'static>), std::io::Error> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = within("tcp connect", TcpStream::connect(addr)).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = within(
        "tls handshake",
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok((tls, leaf))
}

pub type Wss = tokio_tungstenite::WebSocketStream<ClientTls>;

/// A WebSocket over TLS to the gateway, with SNI and `Host` = `host`; also returns the
/// presented leaf.
pub async fn wss_connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> (Wss, CertificateDer<'static>) {
    let (tls, leaf) = tls_connect(addr, host)
        .await
        .unwrap_or_else(|e| panic!("TLS to {addr} as {host}: {e}"));
    let url = format!("wss://{host}{path}");
    let (ws, _) = within("wss handshake", tokio_tungstenite::client_async(url, tls))
        .await
        .unwrap_or_else(|e| panic!("wss handshake as {host}: {e}"));
    (ws, leaf)
}

/// A TLS echo backend: terminates TLS with `leaf` and relays to a plain echo server.
pub struct TlsEcho {
    pub addr: SocketAddr,
    _echo: Echo,
    task: tokio::task::JoinHandle<()>,
}

impl TlsEcho {
    pub async fn start(name: &str, leaf: &Leaf) -> TlsEcho {
        let echo = Echo::start(name).await;
        let inner = echo.addr;
        let cert = leaf.certificate(name);
        let config = ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                cert.certified_key().cert.clone(),
                rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(inner).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsEcho {
            addr,
            _echo: echo,
            task,
        }
    }
}

impl Drop for TlsEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

use rustls::pki_types::pem::PemObject;
