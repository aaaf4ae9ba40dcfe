//! Raw WebSocket peers for protocol-rule tests: each side writes exact frame bytes and parses
//! what it receives itself, so a peer can break any rule of RFC 6455 and see every byte the
//! gateway passes on (no WebSocket library on either side).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const FIN: u8 = 0x80;
pub const RSV1: u8 = 0x40;
pub const RSV2: u8 = 0x20;
pub const RSV3: u8 = 0x10;
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The mask key every raw client frame uses (any key will do; a fixed one keeps failures
/// reproducible).
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// How long one read may wait. Shorter than the suite's DEADLINE: a test expecting a Close
/// that never comes fails in seconds, not tens of seconds, and there are many such tests.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);

/// One frame's bytes: `first` is FIN | RSV bits | opcode; masked with [`MASK`] when `masked`.
pub fn frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A Close payload: the code, then the reason bytes (which need not be UTF-8).
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A frame as received, payload unmasked.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    pub fn is_close(&self) -> bool {
        self.opcode() == CLOSE
    }

    /// The status code of a Close frame with one.
    pub fn close_code(&self) -> Option<u16> {
        (self.is_close() && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame(fin={} rsv={:03b} opcode={:#x} masked={} len={} code={:?} payload={:?})",
            self.first >> 7,
            (self.first >> 4) & 0b111,
            self.opcode(),
            self.masked,
            self.payload.len(),
            self.close_code(),
            String::from_utf8_lossy(&self.payload[..self.payload.len().min(40)]),
        )
    }
}

/// Parses one whole frame from the front of `buf`: the frame and how many bytes it took.
pub fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let body = buf.get(at..at + len)?;
    let payload = match mask {
        Some(m) => body.iter().enumerate().map(|(i, b)| b ^ m[i % 4]).collect(),
        None => body.to_vec(),
    };
    Some((
        Frame {
            first: buf[0],
            masked,
            payload,
        },
        at + len,
    ))
}

/// Every frame in `bytes` (which must hold whole frames only).
pub fn parse_all(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (f, used) = parse(bytes).expect("whole frames");
        frames.push(f);
        bytes = &bytes[used..];
    }
    frames
}

/// One side of a relayed WebSocket, as raw TCP.
pub struct RawPeer {
    pub name: &'static str,
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawPeer {
    /// Writes `bytes`; a peer that already closed is not an error here (what it received
    /// is what the test checks).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(READ_DEADLINE, self.stream.write_all(bytes)).await;
    }

    /// Ends this side's writing (TCP FIN), as a server does after the Close handshake.
    pub async fn shut_down_writing(&mut self) {
        let _ = tokio::time::timeout(READ_DEADLINE, self.stream.shutdown()).await;
    }

    /// The next whole frame, reading as often as it takes; `None` once the connection ended
    /// (EOF or reset) between frames. Panics if it ends inside a frame (part of a frame was
    /// passed on) or nothing arrives within [`READ_DEADLINE`].
    pub async fn next_frame(&mut self) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + READ_DEADLINE;
        loop {
            if let Some((f, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            let mut chunk = [0u8; 8192];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => panic!(
                    "{}: nothing (more) arrived within {READ_DEADLINE:?}; holding {} bytes of a frame",
                    self.name,
                    self.buf.len()
                ),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(
                        self.buf.is_empty(),
                        "{}: the connection ended inside a frame ({} bytes of it arrived: {:02x?})",
                        self.name,
                        self.buf.len(),
                        &self.buf[..self.buf.len().min(32)]
                    );
                    return None;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Frames until the connection ends (each read bounded by [`READ_DEADLINE`]).
    pub async fn frames_until_end(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.next_frame().await {
            frames.push(f);
        }
        frames
    }
}

/// A client and a backend joined through the gateway, both raw.
pub struct Link {
    pub client: RawPeer,
    pub backend: RawPeer,
    /// The request head the backend received.
    pub backend_request: String,
}

/// Reads until a whole HTTP head arrived; returns it and keeps what came behind it.
async fn read_head(stream: &mut TcpStream, who: &str) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        match tokio::time::timeout(READ_DEADLINE, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!(
                "{who}: no whole HTTP head ({other:?}); got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Opens a WebSocket through the gateway at `gateway` to the backend accepting on
/// `backends`: the client offers `offer` in `Sec-WebSocket-Extensions`, the backend's 101
/// answers `accept` there (each header left out when `None`).
pub async fn open_link(
    gateway: SocketAddr,
    backends: &TcpListener,
    offer: Option<&str>,
    accept: Option<&str>,
) -> Link {
    let mut client = tokio::time::timeout(READ_DEADLINE, TcpStream::connect(gateway))
        .await
        .expect("connect within the deadline")
        .expect("connect to the gateway");
    client.set_nodelay(true).unwrap();
    let offer_line = offer
        .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /rules HTTP/1.1\r\nHost: {gateway}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer_line}\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();

    let (mut backend, _) = tokio::time::timeout(READ_DEADLINE, backends.accept())
        .await
        .expect("the gateway dials the backend within the deadline")
        .unwrap();
    backend.set_nodelay(true).unwrap();
    let (backend_request, backend_rest) = read_head(&mut backend, "backend").await;
    let key = header(&backend_request, "sec-websocket-key").expect("a Sec-WebSocket-Key");
    let accept_key = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept_line = accept
        .map(|a| format!("Sec-WebSocket-Extensions: {a}\r\n"))
        .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n{accept_line}\r\n"
    );
    backend.write_all(answer.as_bytes()).await.unwrap();

    let (client_answer, client_rest) = read_head(&mut client, "client").await;
    assert!(
        client_answer.starts_with("HTTP/1.1 101"),
        "the client must get 101, got {client_answer:?}"
    );
    if let Some(a) = accept {
        assert_eq!(
            header(&client_answer, "sec-websocket-extensions"),
            Some(a),
            "the backend's extension answer reaches the client"
        );
    }
    Link {
        client: RawPeer {
            name: "client",
            stream: client,
            buf: client_rest,
        },
        backend: RawPeer {
            name: "backend",
            stream: backend,
            buf: backend_rest,
        },
        backend_request,
    }
}

// Keep-alive checks (relay_checks.rs): one raw side, the other a WebSocket library.

/// A raw client through the gateway at `gateway`, past its 101, for `path`.
pub async fn open_raw_client(gateway: SocketAddr, path: &str) -> RawPeer {
    let mut client = tokio::time::timeout(READ_DEADLINE, TcpStream::connect(gateway))
        .await
        .expect("connect within the deadline")
        .expect("connect to the gateway");
    client.set_nodelay(true).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {gateway}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let (answer, rest) = read_head(&mut client, "client").await;
    assert!(answer.starts_with("HTTP/1.1 101"), "got {answer:?}");
    RawPeer {
        name: "client",
        stream: client,
        buf: rest,
    }
}

/// A raw backend: takes the gateway's next connection on `backends` and answers its
/// upgrade with a 101.
pub async fn accept_raw_backend(backends: &TcpListener) -> RawPeer {
    let (mut backend, _) = tokio::time::timeout(READ_DEADLINE, backends.accept())
        .await
        .expect("the gateway dials the backend within the deadline")
        .unwrap();
    backend.set_nodelay(true).unwrap();
    let (request, rest) = read_head(&mut backend, "backend").await;
    let key = header(&request, "sec-websocket-key").expect("a Sec-WebSocket-Key");
    let accept_key = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    backend.write_all(answer.as_bytes()).await.unwrap();
    RawPeer {
        name: "backend",
        stream: backend,
        buf: rest,
    }
}
