//! `loadgen tls-echo`: the direct wss baseline's backend, a WebSocket echo server behind TLS.
//!
//! The proxies are measured client --wss--> proxy --ws--> `wsgate echo`; "direct" for wss needs a
//! backend that terminates TLS itself and is none of the compared proxies. This is rustls (the
//! same offer as the client: TLS 1.3, AES-128-GCM, X25519) and fastwebsockets, echoing each
//! frame as it arrives. It is a reference point for what TLS costs the client side, not a
//! competitor: its own CPU is reported as the echo backend's.
//!
//! Loopback only, like the rest of this tool; every connection's handshake is bounded in time
//! and size, and the server exits after `--lifetime` even if nobody stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::Args;
use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::report::Report;
use crate::{parse_duration, tls};

/// Largest request head accepted.
const MAX_REQUEST_HEAD: usize = 8192;
/// TLS handshake plus upgrade request, per connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 6455's GUID appended to the client's key for Sec-WebSocket-Accept.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Args, Debug)]
pub struct TlsEchoArgs {
    /// Address to listen on (loopback only), e.g. 127.0.0.1:18006.
    #[arg(long)]
    listen: SocketAddr,
    /// PEM certificate chain to serve.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of --cert.
    #[arg(long)]
    key: PathBuf,
    /// The server exits after this long, at most 1h (bench/run.sh stops it earlier by PID; a
    /// full run with every scenario takes well under an hour).
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    lifetime: Duration,
}

pub async fn run(args: TlsEchoArgs) -> anyhow::Result<Report> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {}: only loopback addresses are allowed",
            args.listen
        );
    }
    let acceptor = TlsAcceptor::from(tls::server_config(&args.cert, &args.key)?);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    eprintln!("tls-echo: listening on wss://{}", args.listen);
    // `serve` never ends by itself: the lifetime bounds it.
    let _ = timeout(args.lifetime, serve(listener, acceptor)).await;
    Ok(Report {
        json: serde_json::json!({"tls_echo": "lifetime over", "listen": args.listen.to_string()}),
        produced_numbers: true,
    })
}

/// Accepts connections and serves each on its own task, until dropped.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or similar: the run notices failed connections; keep going.
            Err(error) => {
                eprintln!("tls-echo: accept: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_one(acceptor, tcp).await {
                eprintln!("tls-echo: {error:#}");
            }
        });
    }
}

async fn serve_one(acceptor: TlsAcceptor, tcp: TcpStream) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut stream = timeout(HANDSHAKE_TIMEOUT, async {
        let mut stream = acceptor.accept(tcp).await.context("TLS handshake")?;
        upgrade(&mut stream).await?;
        anyhow::Ok(stream)
    })
    .await
    .map_err(|_| anyhow!("TLS handshake + upgrade took over {HANDSHAKE_TIMEOUT:?}"))??;
    let echoed = echo(&mut stream).await;
    // close_notify, then FIN: the server closes first, as RFC 6455 §7.1.1 asks.
    let _ = stream.shutdown().await;
    echoed
}

/// Reads the upgrade request and answers 101 (or 400 and an error).
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("client closed during the upgrade request");
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(pos) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if head.len() > MAX_REQUEST_HEAD {
            bail!("request head over {MAX_REQUEST_HEAD} bytes");
        }
    };
    // The load generator sends nothing before the 101; bytes here could not be handed on.
    let pipelined = end != head.len();
    let text = String::from_utf8_lossy(&head[..end]);
    let key = websocket_key(&text).filter(|_| !pipelined);
    let Some(key) = key else {
        stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await?;
        stream.flush().await?;
        bail!("not a WebSocket upgrade request (or frames sent before the 101)");
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_value(key)
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    Ok(())
}

/// The Sec-WebSocket-Key of a `GET` with `Upgrade: websocket`, if the head is one.
fn websocket_key(head: &str) -> Option<&str> {
    let mut lines = head.split("\r\n");
    if !lines.next()?.starts_with("GET ") {
        return None;
    }
    let (mut key, mut upgrade) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        }
    }
    key.filter(|_| upgrade)
}

/// base64(SHA-1(key + GUID)), RFC 6455 §4.2.2.
fn accept_value(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{WS_GUID}").as_bytes(),
    );
    base64(digest.as_ref())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Echoes every data frame as it arrives until the client's Close, which is answered.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> anyhow::Result<()> {
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    // Control frames are answered here, so each reply is flushed through TLS at once.
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Binary | OpCode::Text | OpCode::Continuation => {
                ws.write_frame(Frame::new(frame.fin, frame.opcode, None, frame.payload))
                    .await?;
            }
            OpCode::Ping => ws.write_frame(Frame::pong(frame.payload)).await?,
            OpCode::Pong => continue,
            OpCode::Close => {
                ws.write_frame(Frame::new(true, OpCode::Close, None, frame.payload))
                    .await?;
                ws.flush().await?;
                return Ok(());
            }
        }
        ws.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{Conn, Masked, Target};
    use crate::Common;

    /// A certificate and key from `openssl` in a fresh directory, or None (the test says why).
    fn openssl_cert(dir: &std::path::Path, name: &str) -> Option<(PathBuf, PathBuf)> {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        let status = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=loadgen-test",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => Some((cert, key)),
            other => {
                eprintln!("SKIPPED: openssl could not make a test certificate ({other:?})");
                None
            }
        }
    }

    fn common(url: String, cert: PathBuf) -> Common {
        Common {
            url,
            target: "test".to_owned(),
            op_timeout: Duration::from_secs(5),
            cert: Some(cert),
            no_resume: false,
        }
    }

    /// Over real TLS on loopback: the pinned certificate is accepted, an echo comes back, the
    /// close handshake completes, the second connection resumes, and every handshake is on the
    /// pinned parameters; a different certificate is refused.
    #[tokio::test]
    async fn wss_echo_with_pinned_cert_and_refusal_of_another() {
        let dir = std::env::temp_dir().join(format!("loadgen-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (Some((cert, key)), Some((other_cert, _))) =
            (openssl_cert(&dir, "server"), openssl_cert(&dir, "other"))
        else {
            return;
        };
        let acceptor = TlsAcceptor::from(tls::server_config(&cert, &key).expect("server config"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("wss://{}/echo", listener.local_addr().expect("addr"));
        let server = tokio::spawn(serve(listener, acceptor));

        let target = Target::new(&common(url.clone(), cert)).expect("target");
        for _ in 0..2 {
            let mut conn = Conn::open(&target, Duration::from_secs(5))
                .await
                .expect("open");
            conn.send(&Masked::filler(100)).await.expect("send");
            assert_eq!(conn.recv().await.expect("echo"), 100);
            conn.close(Duration::from_secs(5)).await.expect("close");
        }
        let summary = tls::summary();
        assert_eq!(summary["key_exchange"], "X25519", "{summary}");
        assert_eq!(
            summary["cipher_suite"], "TLS13_AES_128_GCM_SHA256",
            "{summary}"
        );
        assert_eq!(summary["version"], "TLSv1_3", "{summary}");
        assert!(summary["resumed"].as_u64() >= Some(1), "{summary}");

        let wrong = Target::new(&common(url, other_cert)).expect("target");
        let refused = Conn::open(&wrong, Duration::from_secs(5)).await;
        let error = format!(
            "{:#}",
            refused.err().expect("another certificate is refused")
        );
        assert!(error.contains("invalid peer certificate"), "{error}");

        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// RFC 6455's sample key gives its sample accept value.
    #[test]
    fn accept_value_of_rfc_sample_key() {
        assert_eq!(
            accept_value("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    /// base64 pads partial groups.
    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    /// Only a GET with Upgrade: websocket and a key is an upgrade.
    #[test]
    fn websocket_key_needs_get_upgrade_and_key() {
        let ok =
            "GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nSec-WebSocket-Key: abc\r\n\r\n";
        assert_eq!(websocket_key(ok), Some("abc"));
        assert_eq!(websocket_key(&ok.replace("GET", "POST")), None);
        assert_eq!(
            websocket_key(&ok.replace("Upgrade: WebSocket\r\n", "")),
            None
        );
        assert_eq!(
            websocket_key(&ok.replace("Sec-WebSocket-Key: abc\r\n", "")),
            None
        );
    }
}
