//! TLS both ways. Termination: one rustls `ServerConfig` whose certificate resolver reads
//! the *current* route table on every handshake (exact SNI, wildcard, default), so a new
//! table rotates certificates for new handshakes while live connections keep theirs.
//! Origination: the handshake with `wss`/`https` backends, with the configuration
//! `compile` built for the route (`table::UpstreamTls`: platform roots plus the route's
//! CA, or the accept-anything verifier the route asked for) and the backend's host (or
//! `backendTls.serverName`) as SNI.
//!
//! Only TLS 1.2 and 1.3, ALPN `http/1.1`, the ring provider (kube links it already).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Error;
use crate::model::{crypto_provider, Endpoint};
use crate::table::{CompiledRoute, Publisher};

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A client or backend connection, plain or TLS. hyper serves and dials over this one type,
/// so an upgraded connection downcasts to `TokioIo<Stream>` whichever listener took it.
pub enum Stream {
    Tcp(TcpStream),
    /// A client on the TLS listener.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A `wss`/`https` backend.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Server(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Client(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Server(s) => s.is_write_vectored(),
            Stream::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

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
    let fail = |reason: String| {
        tracing::warn!(route = %route.route.id, endpoint = %endpoint.authority(), reason = %reason, "TLS to backend failed");
        Error::UpstreamTls {
            route: route.route.id.0.clone(),
            endpoint: endpoint.authority(),
            reason,
        }
    };
    let config = tls.config().map_err(|e| fail(e.to_string()))?;
    let name = tls.server_name(endpoint).map_err(|e| fail(e.to_string()))?;
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
