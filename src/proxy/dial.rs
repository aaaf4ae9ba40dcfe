//! Opening a TCP connection to one of a route's endpoints: the balancer's choice first,
//! then the next ones when a connect fails, before any byte went upstream.
//!
//! A caller with its first bytes ready (the WebSocket upgrade request) hands them over as a
//! `Greeting`: when the connection is already up as `connect` returns — always on loopback,
//! usually towards a pod on the same node — they go out at once, with no wait for the
//! writable event and no `SO_ERROR` query; otherwise the dial waits as usual and leaves
//! them unsent.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::TcpStream;

use super::error::Error;
use crate::balance::{Backend, PickContext};
use crate::table::CompiledRoute;

/// The first bytes for a backend, built for its `host:port` once the balancer chose it.
pub type Greeting<'g> = &'g (dyn Fn(&str) -> Vec<u8> + Sync);

pub struct Dialed<'t> {
    pub stream: TcpStream,
    pub backend: &'t Backend,
    /// `host:port` of the backend.
    pub endpoint: Arc<str>,
    /// `Set-Cookie` for the response when the route is cookie-sticky.
    pub set_cookie: Option<http::HeaderValue>,
    /// The greeting's bytes not written yet (all of them when none could go with the
    /// connect; empty without a greeting).
    pub unsent: Vec<u8>,
}

pub async fn dial<'t>(
    route: &'t CompiledRoute,
    pick: &PickContext<'_>,
    greeting: Option<Greeting<'_>>,
) -> Result<Dialed<'t>, Error> {
    let timeout = route.route.timeouts.connect;
    let mut last: Option<Error> = None;
    for backend in route.balancer.pick(pick) {
        let ep = &backend.endpoint;
        let endpoint = Arc::clone(&backend.authority);
        let first = greeting.map(|g| g(&endpoint)).unwrap_or_default();
        let started = Instant::now();
        let attempt = async {
            match ep.addr {
                Some(addr) => connect_sending(addr, &first).await,
                None => TcpStream::connect((ep.host.as_str(), ep.port))
                    .await
                    .map(|s| (s, 0)),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((stream, sent))) => {
                route
                    .metrics
                    .connect_seconds()
                    .observe(started.elapsed().as_secs_f64());
                let _ = stream.set_nodelay(true);
                let mut unsent = first;
                unsent.drain(..sent);
                return Ok(Dialed {
                    stream,
                    backend,
                    endpoint,
                    set_cookie: route.balancer.set_cookie(backend, pick),
                    unsent,
                });
            }
            Ok(Err(source)) => {
                tracing::warn!(route = %route.route.id, endpoint = %endpoint, error = %source, "connect to backend failed");
                last = Some(Error::ConnectFailed {
                    route: route.route.id.0.clone(),
                    last: endpoint.to_string(),
                    source,
                });
            }
            Err(_) => {
                tracing::warn!(route = %route.route.id, endpoint = %endpoint, timeout_ms = timeout.as_millis() as u64, "connect to backend timed out");
                last = Some(Error::ConnectTimeout {
                    route: route.route.id.0.clone(),
                    last: endpoint.to_string(),
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::NoEndpoint {
        route: route.route.id.0.clone(),
    }))
}

/// Connects to `addr`, writing as much of `first` as the socket takes when the connection is
/// up by the time `connect` returns. Returns the stream and how many bytes went out. A
/// refused or reset connection fails here, as a connect error (so the dial tries the next
/// endpoint), not later as a broken upgrade.
async fn connect_sending(addr: SocketAddr, first: &[u8]) -> io::Result<(TcpStream, usize)> {
    if first.is_empty() {
        return TcpStream::connect(addr).await.map(|s| (s, 0));
    }
    let socket = nonblocking_tcp_socket(addr)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std_stream = std::net::TcpStream::from(socket);
    // Still connecting: EAGAIN (the write waits for the connection below).
    let sent = match (&std_stream).write(first) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    let stream = TcpStream::from_std(std_stream)?;
    if sent == 0 {
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok((stream, sent))
}

/// A non-blocking TCP socket for `addr`: one system call where the flag can go with
/// `socket(2)`. (No-delay is set by `dial` once connected; the first segment is not delayed.)
#[cfg(target_os = "linux")]
fn nonblocking_tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let kind = Type::from(libc::SOCK_STREAM | libc::SOCK_NONBLOCK);
    Socket::new(Domain::for_address(addr), kind, Some(Protocol::TCP))
}

#[cfg(not(target_os = "linux"))]
fn nonblocking_tcp_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Poll;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// The next `len` bytes from `peer`, within the deadline.
    async fn received(peer: &mut tokio::net::TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        tokio::time::timeout(DEADLINE, peer.read_exact(&mut got))
            .await
            .expect("bytes within the deadline")
            .unwrap();
        got
    }

    /// A listener that accepts: the greeting goes out with the connect.
    #[tokio::test]
    async fn greeting_goes_out_with_the_connect_when_the_connection_is_up() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stream, sent) = connect_sending(addr, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(sent, 18);
        let (mut peer, _) = listener.accept().await.unwrap();
        assert_eq!(received(&mut peer, 18).await, b"GET / HTTP/1.1\r\n\r\n");
        drop(stream);
    }

    /// A connection still being set up when `connect` returns (here: the listener's accept
    /// queue is full, so the SYN waits for a retransmission): nothing is sent early, the
    /// dial waits until the connection is up, and the caller's bytes then arrive intact.
    #[tokio::test]
    async fn greeting_waits_while_the_connection_is_still_being_set_up() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket
            .bind(&SockAddr::from(
                "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            ))
            .unwrap();
        socket.listen(0).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Fill the accept queue with connections nobody accepts yet.
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let filler = nonblocking_tcp_socket(addr).unwrap();
            let _ = filler.connect(&SockAddr::from(addr));
            fillers.push(filler);
        }
        // One poll runs the dial up to its wait: socket, connect (its SYN meets the full
        // queue), the early write (EAGAIN). Then drain the queue so a retransmitted SYN gets
        // through.
        let mut dial = Box::pin(connect_sending(addr, b"hello"));
        let first_poll = std::future::poll_fn(|cx| Poll::Ready(dial.as_mut().poll(cx))).await;
        assert!(
            first_poll.is_pending(),
            "connected through a full accept queue"
        );
        // Accept everything queued (the fillers' connections come through too).
        let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        let acceptor = tokio::spawn(async move {
            loop {
                let (peer, from) = listener.accept().await.unwrap();
                if accepted_tx.send((peer, from)).is_err() {
                    return;
                }
            }
        });
        let (mut stream, sent) = tokio::time::timeout(DEADLINE, dial)
            .await
            .expect("connected once the queue drained")
            .unwrap();
        assert_eq!(sent, 0);
        stream.write_all(b"hello").await.unwrap();
        let ours = stream.local_addr().unwrap();
        let mut peer = loop {
            let (peer, from) = tokio::time::timeout(DEADLINE, accepted.recv())
                .await
                .expect("the dial's connection was accepted")
                .unwrap();
            if from == ours {
                break peer;
            }
        };
        assert_eq!(received(&mut peer, 5).await, b"hello");
        // Nothing but the caller's one write arrives.
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, peer.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        acceptor.abort();
        drop(fillers);
    }

    /// Nothing listening: a connect error (so the dial moves to the next endpoint), whether
    /// the refusal shows at `connect` or at the early write.
    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let err = connect_sending(addr, b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }
}
