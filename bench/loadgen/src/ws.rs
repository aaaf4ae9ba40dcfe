//! A minimal WebSocket client over fastwebsockets: upgrade by hand, send pre-masked frames, read
//! whole messages, answer pings and closes.
//!
//! Frames are masked once, ahead of time, with a fixed key, so the generator spends no CPU on
//! masking or allocation per message: its core is shared with the echo backend, and every cycle
//! it saves goes to the target. (A fixed key is fine on loopback: masking protects caches on
//! real networks, not benchmarks.) Control frames are handled here rather than by fastwebsockets,
//! because with auto-masking off its automatic pong and close replies would go out unmasked.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::{tls, Common};

/// The masking key of every client frame.
const MASK: [u8; 4] = [0x5a, 0xc3, 0x96, 0x2d];
/// RFC 6455's sample key and its accept value: any well-formed key is valid, and a fixed one
/// lets the answer be checked without hashing.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Largest handshake answer accepted.
const MAX_RESPONSE_HEAD: usize = 8192;
/// Close code 1000 (normal closure).
const CLOSE_NORMAL: [u8; 2] = [0x03, 0xe8];
/// Frames read while waiting for a Close reply before giving up on it.
const MAX_FRAMES_BEFORE_CLOSE: usize = 100_000;

/// Where to connect and what to ask for.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    host: String,
    path: String,
    /// Set for `wss://`: the TLS client (pinned certificate, the bench's one offer).
    tls: Option<TlsConnector>,
}

impl Target {
    /// The target of a scenario's `--url`, with TLS set up from `--cert` for `wss://`.
    pub fn new(common: &Common) -> anyhow::Result<Target> {
        let (mut target, secure) = Target::parse(&common.url)?;
        match (secure, &common.cert) {
            (true, Some(cert)) => {
                let config = tls::client_config(cert, !common.no_resume)?;
                target.tls = Some(TlsConnector::from(config));
            }
            (true, None) => bail!(
                "--url {:?}: wss:// needs --cert (the server's certificate, pinned)",
                common.url
            ),
            (false, _) => {}
        }
        Ok(target)
    }

    /// Parses `ws://IP:PORT/path` or `wss://...` (or `localhost` for the IP); refuses
    /// non-loopback hosts. Returns whether the URL asks for TLS.
    pub fn parse(url: &str) -> anyhow::Result<(Target, bool)> {
        let (rest, secure) = if let Some(rest) = url.strip_prefix("ws://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("wss://") {
            (rest, true)
        } else {
            bail!("--url {url:?}: only ws:// and wss:// URLs are supported");
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, "/"),
        };
        let resolved = authority.replacen("localhost", "127.0.0.1", 1);
        let addr: SocketAddr = resolved.parse().with_context(|| {
            format!(
                "--url {url:?}: the host must be a loopback IP with a port, like 127.0.0.1:9001"
            )
        })?;
        if !is_loopback(addr.ip()) {
            bail!("--url {url:?}: only loopback targets are allowed (127.0.0.0/8 or ::1)");
        }
        Ok((
            Target {
                addr,
                host: authority.to_owned(),
                path: path.to_owned(),
                tls: None,
            },
            secure,
        ))
    }
}

/// A client connection's byte stream: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
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
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// A message payload masked with [`MASK`], ready to send any number of times.
pub struct Masked(Vec<u8>);

impl Masked {
    pub fn new(plain: &[u8]) -> Masked {
        let mut data = plain.to_vec();
        apply_mask(&mut data);
        Masked(data)
    }

    /// `size` bytes of printable filler (valid for text and binary alike).
    pub fn filler(size: usize) -> Masked {
        let plain: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        Masked::new(&plain)
    }
}

fn apply_mask(data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= MASK[i % 4];
    }
}

/// One open WebSocket client connection.
pub struct Conn {
    ws: WebSocket<Stream>,
}

impl Conn {
    /// Connects, upgrades, and returns the open connection; every step within `deadline`.
    pub async fn open(target: &Target, deadline: Duration) -> anyhow::Result<Conn> {
        timeout(deadline, Self::open_inner(target))
            .await
            .map_err(|_| {
                anyhow!(
                    "connect + upgrade to {} took over {deadline:?}",
                    target.addr
                )
            })?
    }

    async fn open_inner(target: &Target) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connect to {}", target.addr))?;
        tcp.set_nodelay(true)?;
        let mut stream = match &target.tls {
            None => Stream::Plain(tcp),
            Some(connector) => {
                // No SNI for an IP address (RFC 6066): every proxy serves its default certificate.
                let name = ServerName::IpAddress(target.addr.ip().into());
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .with_context(|| format!("TLS handshake with {}", target.addr))?;
                tls::record(tls.get_ref().1);
                Stream::Tls(Box::new(tls))
            }
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.path, target.host
        );
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await?;

        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("{} closed the connection during the upgrade", target.addr);
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some(pos) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if head.len() > MAX_RESPONSE_HEAD {
                bail!("upgrade answer from {} has no end of headers", target.addr);
            }
        };
        let text = String::from_utf8_lossy(&head[..end]);
        let status_line = text.lines().next().unwrap_or_default();
        if !status_line.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused by {}: {status_line:?}", target.addr);
        }
        if !text.contains(ACCEPT) {
            bail!(
                "upgrade answer from {} lacks the expected Sec-WebSocket-Accept",
                target.addr
            );
        }
        if end != head.len() {
            // The echo backend speaks only when spoken to; bytes here would be a framing bug.
            bail!("{} sent frames before any message", target.addr);
        }

        let mut ws = WebSocket::after_handshake(stream, Role::Client);
        ws.set_auto_apply_mask(false);
        ws.set_auto_pong(false);
        ws.set_auto_close(false);
        Ok(Conn { ws })
    }

    /// Sends one binary message.
    pub async fn send(&mut self, payload: &Masked) -> anyhow::Result<()> {
        let frame = Frame::new(
            true,
            OpCode::Binary,
            Some(MASK),
            Payload::Borrowed(&payload.0),
        );
        self.ws.write_frame(frame).await?;
        // A TLS stream may keep the record until flushed; on plain TCP this is a no-op.
        self.ws.flush().await?;
        Ok(())
    }

    /// Reads until one whole data message has arrived; returns its size. Answers pings; a
    /// Close or end of stream is an error.
    pub async fn recv(&mut self) -> anyhow::Result<usize> {
        let mut size = 0;
        loop {
            let frame = self.ws.read_frame().await?;
            match frame.opcode {
                OpCode::Binary | OpCode::Text | OpCode::Continuation => {
                    size += frame.payload.len();
                    if frame.fin {
                        return Ok(size);
                    }
                }
                OpCode::Ping => {
                    let mut data = frame.payload.to_vec();
                    apply_mask(&mut data);
                    let pong = Frame::new(true, OpCode::Pong, Some(MASK), Payload::Owned(data));
                    self.ws.write_frame(pong).await?;
                    self.ws.flush().await?;
                }
                OpCode::Pong => {}
                OpCode::Close => {
                    let mut reply = CLOSE_NORMAL.to_vec();
                    apply_mask(&mut reply);
                    let close = Frame::new(true, OpCode::Close, Some(MASK), Payload::Owned(reply));
                    if self.ws.write_frame(close).await.is_ok() {
                        let _ = self.ws.flush().await;
                    }
                    bail!("the target closed the connection");
                }
            }
        }
    }

    /// Sends Close 1000, waits for the peer's Close, then for the peer to close the TCP
    /// connection (all within `deadline`).
    ///
    /// Waiting for the server's FIN (RFC 6455 §7.1.1: the server closes TCP first) leaves the
    /// TIME_WAIT state on the server's side. If the client closed first, every cycle would park
    /// an ephemeral port in TIME_WAIT for 60 s, and the handshake scenario would exhaust the
    /// loopback port range within seconds and measure the kernel's port search instead.
    pub async fn close(mut self, deadline: Duration) -> anyhow::Result<()> {
        timeout(deadline, async {
            let mut payload = CLOSE_NORMAL;
            apply_mask(&mut payload);
            let close = Frame::new(true, OpCode::Close, Some(MASK), Payload::Borrowed(&payload));
            self.ws.write_frame(close).await?;
            self.ws.flush().await?;
            let mut replied = false;
            for _ in 0..MAX_FRAMES_BEFORE_CLOSE {
                match self.ws.read_frame().await {
                    Ok(frame) if frame.opcode == OpCode::Close => {
                        replied = true;
                        break;
                    }
                    Ok(_) => {}
                    // The peer closed TCP without a Close frame: done either way.
                    Err(_) => return Ok(()),
                }
            }
            if !replied {
                bail!("no Close reply within {MAX_FRAMES_BEFORE_CLOSE} frames");
            }
            let mut stream = self.ws.into_inner();
            let mut scratch = [0u8; 512];
            for _ in 0..MAX_FRAMES_BEFORE_CLOSE {
                match stream.read(&mut scratch).await {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                }
            }
            bail!("the peer kept sending after its Close")
        })
        .await
        .map_err(|_| anyhow!("close handshake and TCP close not done within {deadline:?}"))?
    }
}

/// Opens `count` connections, at most `parallel` at a time; returns them and the failures.
pub async fn open_many(
    target: &Target,
    count: usize,
    parallel: usize,
    deadline: Duration,
) -> (Vec<Conn>, Vec<anyhow::Error>) {
    let permits = std::sync::Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = JoinSet::new();
    for _ in 0..count {
        let target = target.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            Conn::open(&target, deadline).await
        });
    }
    let mut conns = Vec::with_capacity(count);
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(conn)) => conns.push(conn),
            Ok(Err(error)) => errors.push(error),
            Err(error) => errors.push(anyhow!("connect task failed: {error}")),
        }
    }
    (conns, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback URLs parse into address, Host and path.
    #[test]
    fn target_parse_loopback_url_gives_addr_host_and_path() {
        let (target, secure) = Target::parse("ws://127.0.0.1:9001/chat?x=1").expect("valid");
        assert_eq!(target.addr, "127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(target.host, "127.0.0.1:9001");
        assert_eq!(target.path, "/chat?x=1");
        assert!(!secure);
        assert_eq!(
            Target::parse("ws://localhost:80").expect("valid").0.path,
            "/"
        );
        let (target, secure) = Target::parse("wss://127.0.0.1:8443/x").expect("valid");
        assert_eq!(target.addr, "127.0.0.1:8443".parse().expect("addr"));
        assert!(secure);
    }

    /// Anything but a loopback address is refused: this tool only loads local servers.
    #[test]
    fn target_parse_non_loopback_is_refused() {
        assert!(Target::parse("ws://10.0.0.1:80/").is_err());
        assert!(Target::parse("ws://example.com:80/").is_err());
        assert!(Target::parse("wss://10.0.0.1:443/").is_err());
        assert!(Target::parse("http://127.0.0.1:80/").is_err());
    }

    /// Masking twice with the same key restores the payload.
    #[test]
    fn mask_applied_twice_is_identity() {
        let masked = Masked::new(b"hello world");
        let mut data = masked.0.clone();
        apply_mask(&mut data);
        assert_eq!(data, b"hello world");
    }
}
