//! Relay threads: a busy relay leaves the async runtime for a thread that runs one
//! edge-triggered epoll loop (mio) over the sockets of many connections. A TLS side goes
//! along with its rustls session, driven there by hand (`offload/endpoint.rs`).
//!
//! Why: per small message, tokio's per-event machinery (waking the relay's task,
//! scheduling and polling it, the readiness bookkeeping of its two sockets) made wsgate's
//! CPU per 64 B message ~6 % higher than a loop that owns its sockets outright
//! (bench/RESULTS.md, "Run X"). Moving a connection costs ~12 µs once (its sockets leave
//! tokio's epoll set for the thread's, and the thread and the task each wake the other
//! once), so only relays that proved busy move: after `after_messages` messages. Quiet
//! and short-lived connections stay on tokio, where an idle relay costs least memory.
//!
//! The relay's state moves with it: the same relay machine as on tokio (frame tracking
//! and the protocol rules, Close injection at a frame boundary, a backlog only while a
//! reader is slow, half-close, idle timeout, linger and drain), driven here by the thread's
//! loop. The connection's task stays alive on tokio, waiting for the thread to hand the
//! machine back, so drain accounting and the relay's log line are unchanged; the
//! connection's tracing span goes along, so what the thread logs names the connection.

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

use mio::net::TcpStream as MioTcp;
use mio::unix::SourceFd;
use mio::{Interest, Poll, Registry, Token, Waker};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::{poll_signal, Relay, Side, Signal};
use crate::proxy::drain::{CloseReason, DrainSignal};
use crate::proxy::stream::Stream;
use crate::telemetry::{OffloadMetrics, RouteMetrics};

mod endpoint;
mod event_loop;

use endpoint::Endpoint;
use event_loop::{Conn, Counters, Loop, Ready, Tick, STEP_BUDGET, SWEEP_EVERY};

/// How relays move to relay threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffloadOptions {
    /// Relay threads, started on first use. 0: every relay stays on the async runtime.
    pub threads: usize,
    /// A relay moves once this many WebSocket messages (both ways) passed.
    pub after_messages: u64,
}

/// A move costs ~12 µs, what 35–40 small messages save at 0.29–0.36 µs each (RESULTS
/// "Run X"); 128 keeps one-shot and request-like connections on tokio and moves a busy one
/// within its first second.
const DEFAULT_AFTER_MESSAGES: u64 = 128;

impl Default for OffloadOptions {
    fn default() -> Self {
        OffloadOptions {
            threads: 1,
            after_messages: DEFAULT_AFTER_MESSAGES,
        }
    }
}

/// The relay threads of one gateway.
pub struct Offload {
    threads: Box<[OnceLock<Option<RelayThread>>]>,
    next_thread: AtomicUsize,
    next_key: AtomicU64,
    after_messages: u64,
    /// `STEP_BUDGET`; lower in tests, to make every relay need more than one turn.
    step_budget: usize,
    moved: Counter,
    on_threads: Gauge,
}

impl Offload {
    /// `None` when `options.threads` is 0.
    pub fn new(options: OffloadOptions, metrics: OffloadMetrics) -> Option<Arc<Offload>> {
        (options.threads > 0).then(|| {
            Arc::new(Offload {
                threads: (0..options.threads).map(|_| OnceLock::new()).collect(),
                next_thread: AtomicUsize::new(0),
                next_key: AtomicU64::new(1),
                after_messages: options.after_messages,
                step_budget: STEP_BUDGET,
                moved: metrics.moved,
                on_threads: metrics.on_threads,
            })
        })
    }

    /// Whether a relay that has passed `messages` messages should move now.
    pub(super) fn due(&self, messages: u64) -> bool {
        messages >= self.after_messages
    }

    /// The next thread round-robin, started if it is not yet. `None` if it could not be
    /// started (logged once): the relay then stays where it is.
    pub(super) fn thread(&self) -> Option<&RelayThread> {
        let i = self.next_thread.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        self.threads[i]
            .get_or_init(|| match RelayThread::start(i, self.step_budget) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a relay thread; busy relays stay on the async runtime");
                    None
                }
            })
            .as_ref()
    }
}

/// The connections could not join the relay thread: they go back to the caller, still
/// registered with tokio, and the relay goes on there.
pub(super) struct NotMoved {
    pub client: Stream,
    pub upstream: Stream,
    pub relay: Relay,
    pub error: io::Error,
}

pub(super) struct RelayThread {
    commands: mpsc::Sender<Command>,
    /// Shared with the thread: were it closed with this handle, a wake-up still pending in
    /// the poller would vanish with it, and the thread would never see the last commands.
    waker: Arc<Waker>,
    registry: Registry,
}

enum Command {
    Adopt(Box<Conn>),
    /// Close this relay's client at this moment, for this reason (wsgate's drain: at the
    /// connection's own moment in its budget; a gentle drain of its endpoint; a rebalance).
    CloseAt(u64, std::time::Instant, CloseReason),
    /// The connection's task is gone (the runtime is shutting down): close its sockets.
    Abort(u64),
}

const WAKE: Token = Token(usize::MAX);

impl RelayThread {
    fn start(index: usize, step_budget: usize) -> io::Result<RelayThread> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let (commands, inbox) = mpsc::channel();
        let kept = Arc::clone(&waker);
        let tick = Arc::new(Tick::default());
        let loop_tick = Arc::clone(&tick);
        std::thread::Builder::new()
            .name(format!("wsgate-relay-{index}"))
            .spawn(move || {
                Loop::new(poll, inbox, step_budget, Arc::clone(&loop_tick)).run();
                loop_tick.stopped.store(true, Ordering::Release);
                drop(kept);
            })?;
        // The ticker of the loop's sweep of waiting counts: a thread of its own, so that
        // the loop needs no timer while its relays are busy.
        let ticker_waker = Arc::clone(&waker);
        std::thread::Builder::new()
            .name(format!("wsgate-relay-{index}-tick"))
            .spawn(move || {
                while !tick.stopped.load(Ordering::Acquire) {
                    std::thread::sleep(SWEEP_EVERY);
                    if !tick.due.swap(true, Ordering::AcqRel) {
                        let _ = ticker_waker.wake();
                    }
                }
            })?;
        Ok(RelayThread {
            commands,
            waker,
            registry,
        })
    }

    fn send(&self, command: Command) {
        // The thread only exits once every sender is gone, so a send cannot fail while
        // `self` exists; a wake-up that fails (eventfd full) still leaves one pending.
        let _ = self.commands.send(command);
        let _ = self.waker.wake();
    }

    /// Relays `client` ⇄ `upstream` on this thread until both sides are done, answering
    /// the drain on the way. Returns the relay's final state, or the sockets back if they
    /// could not move.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay(
        &self,
        offload: &Offload,
        client: Stream,
        upstream: Stream,
        relay: Relay,
        span: tracing::Span,
        drain: &mut DrainSignal,
        metrics: &RouteMetrics,
    ) -> Result<Relay, Box<NotMoved>> {
        let key = offload.next_key.fetch_add(1, Ordering::Relaxed);
        let (client, upstream) = match self.register(key, client, upstream) {
            Ok(pair) => pair,
            Err(Unregistered::Back(client, upstream, error)) => {
                return Err(Box::new(NotMoved {
                    client,
                    upstream,
                    relay,
                    error,
                }))
            }
            Err(Unregistered::Lost(e)) => return Ok(lost(e, relay)),
        };
        let (done, mut finished) = oneshot::channel();
        let tls = client.is_tls() || upstream.is_tls();
        let adopt = Command::Adopt(Box::new(Conn {
            key,
            tls,
            client,
            upstream,
            relay,
            ready: Ready::ALL,
            armed: None,
            counters: Counters::of(metrics),
            span,
            done: Some(done),
            again: false,
        }));
        if let Err(mpsc::SendError(Command::Adopt(conn))) = self.commands.send(adopt) {
            // The thread is gone (only a panic ends it while this handle exists): a plain
            // relay goes back to tokio instead of being lost with it.
            let Conn {
                client,
                upstream,
                relay,
                ..
            } = *conn;
            return match self.back_to_tokio(client, upstream) {
                Ok((client, upstream)) => Err(Box::new(NotMoved {
                    client,
                    upstream,
                    relay,
                    error: io::Error::other("the relay thread has stopped"),
                })),
                Err(e) => Ok(lost(e, relay)),
            };
        }
        let _ = self.waker.wake();
        offload.moved.inc();
        offload.on_threads.inc();
        let mut abort = AbortOnDrop {
            offload,
            thread: self,
            key,
            armed: true,
        };
        // The task hears the drain and the closes asked of this connection, and passes them
        // on to the thread; the relay there is not draining yet (a draining relay does not
        // move).
        let mut draining = false;
        loop {
            tokio::select! {
                biased;
                r = &mut finished => return Ok(abort.finish(r)),
                signal = poll_fn(|cx| poll_signal(cx, drain, draining)) => match signal {
                    Signal::Drain => {
                        draining = true;
                        let at = if drain.shutdown_offset().is_zero() {
                            std::time::Instant::now()
                        } else {
                            drain.shutdown_at()
                        };
                        self.send(Command::CloseAt(key, at, CloseReason::Shutdown));
                    }
                    Signal::Close(at, reason) => self.send(Command::CloseAt(key, at, reason)),
                },
            }
        }
    }

    /// Registers both sockets with this thread's poller, then takes them (and a TLS side's
    /// session) out of tokio. If the poller refuses them, they stay with tokio untouched.
    fn register(
        &self,
        key: u64,
        client: Stream,
        upstream: Stream,
    ) -> Result<(Endpoint, Endpoint), Unregistered> {
        use std::os::fd::AsRawFd;
        let both = Interest::READABLE | Interest::WRITABLE;
        let client_fd = client.socket().as_raw_fd();
        let upstream_fd = upstream.socket().as_raw_fd();
        // Registered while tokio still has them (a socket may be in two epoll sets), so
        // that a refusal leaves nothing to undo: a TLS session could not go back into
        // tokio-rustls once taken out.
        let registered = self
            .registry
            .register(&mut SourceFd(&client_fd), token(key, Side::Client), both)
            .and_then(|()| {
                self.registry
                    .register(&mut SourceFd(&upstream_fd), token(key, Side::Backend), both)
                    .inspect_err(|_| {
                        let _ = self.registry.deregister(&mut SourceFd(&client_fd));
                    })
            });
        if let Err(error) = registered {
            return Err(Unregistered::Back(client, upstream, error));
        }
        // tokio deregisters with one epoll_ctl each; should that fail, into_std has closed
        // the socket (which leaves this poller with it) and the relay cannot go on anywhere.
        let client = leave_tokio(client).map_err(Unregistered::Lost)?;
        let upstream = leave_tokio(upstream).map_err(Unregistered::Lost)?;
        Ok((client, upstream))
    }

    /// Endpoints taken out of this thread's poller, back on tokio: only plain sockets can
    /// go (tokio-rustls has no way to take a session back).
    fn back_to_tokio(
        &self,
        mut client: Endpoint,
        mut upstream: Endpoint,
    ) -> io::Result<(Stream, Stream)> {
        let _ = self.registry.deregister(&mut client.socket);
        let _ = self.registry.deregister(&mut upstream.socket);
        let (Some(client), Some(upstream)) = (client.into_plain(), upstream.into_plain()) else {
            return Err(io::Error::other(
                "a TLS session cannot go back to the async runtime",
            ));
        };
        Ok((
            Stream::Tcp(TcpStream::from_std(client.into())?),
            Stream::Tcp(TcpStream::from_std(upstream.into())?),
        ))
    }
}

/// A connection out of tokio, ready for a relay thread.
fn leave_tokio(stream: Stream) -> io::Result<Endpoint> {
    Ok(match stream {
        Stream::Tcp(s) => Endpoint::plain(MioTcp::from_std(s.into_std()?)),
        Stream::Server(s) => {
            let (tcp, session) = s.into_inner();
            let socket = MioTcp::from_std(tcp.into_std()?);
            Endpoint::tls(socket, rustls::Connection::Server(session))
        }
        Stream::Client(s) => {
            let (tcp, session) = s.into_inner();
            let socket = MioTcp::from_std(tcp.into_std()?);
            Endpoint::tls(socket, rustls::Connection::Client(session))
        }
    })
}

enum Unregistered {
    /// The connections are still on tokio.
    Back(Stream, Stream, io::Error),
    /// A socket was closed on the way.
    Lost(io::Error),
}

/// A relay whose socket closed while moving between pollers (a failed `epoll_ctl` on a
/// socket tokio or mio had registered): it ends here.
fn lost(error: io::Error, relay: Relay) -> Relay {
    tracing::error!(%error, "a relay's socket could not move between pollers; connection closed");
    relay
}

impl Drop for RelayThread {
    fn drop(&mut self) {
        // The sender drops with `self`; the wake-up lets the thread see it and exit once
        // its last relay ends.
        let _ = self.waker.wake();
    }
}

/// Tells the thread to close a relay whose task was dropped before it ended.
struct AbortOnDrop<'a> {
    offload: &'a Offload,
    thread: &'a RelayThread,
    key: u64,
    armed: bool,
}

impl AbortOnDrop<'_> {
    fn finish(&mut self, r: Result<Relay, oneshot::error::RecvError>) -> Relay {
        self.armed = false;
        self.offload.on_threads.dec();
        r.unwrap_or_else(|_| {
            // Only a panic on the relay thread drops the sender unsent.
            tracing::error!("relay thread failed; connection closed");
            Relay::new(Default::default(), false, std::time::Instant::now())
        })
    }
}

impl Drop for AbortOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.offload.on_threads.dec();
            self.thread.send(Command::Abort(self.key));
        }
    }
}

/// A socket's poller token: the relay's key and the side (the low bit: 0 client, 1
/// backend).
fn token(key: u64, side: Side) -> Token {
    Token(((key as usize) << 1) | side as usize)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::proxy::relay::{close_code, relay_streams, RelayConfig, RelayEnd, RelayStats};
    use crate::proxy::stream::Stream;
    use crate::proxy::Drain;
    use crate::telemetry::Metrics;

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A masked text frame, as a client sends it (payload under 126 bytes).
    fn masked_text(payload: &[u8]) -> Vec<u8> {
        let key = [0x11, 0x22, 0x33, 0x44];
        let mut f = vec![0x81, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    /// The far ends of a relay that has moved to a relay thread.
    struct Moved {
        client: TcpStream,
        upstream: TcpStream,
        relay: JoinHandle<RelayStats>,
        metrics: Arc<Metrics>,
    }

    fn on_threads(metrics: &Metrics) -> Option<u64> {
        metrics.encode().lines().find_map(|l| {
            l.strip_prefix("wsgate_relays_on_threads ")
                .and_then(|v| v.parse().ok())
        })
    }

    async fn wait_on_threads(metrics: &Metrics, n: u64) {
        let deadline = Instant::now() + DEADLINE;
        while on_threads(metrics) != Some(n) {
            assert!(
                Instant::now() < deadline,
                "relays on threads never became {n}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Relays one frame client → upstream, after which the relay moves.
    async fn moved_relay(linger: Duration) -> Moved {
        moved_relay_with_budget(linger, STEP_BUDGET).await
    }

    async fn moved_relay_with_budget(linger: Duration, step_budget: usize) -> Moved {
        let (mut client, client_inner) = pair().await;
        let (upstream_inner, mut upstream) = pair().await;
        let metrics = Arc::new(Metrics::new());
        let mut offload = Offload::new(
            OffloadOptions {
                threads: 1,
                after_messages: 1,
            },
            metrics.offload(),
        )
        .expect("one thread");
        Arc::get_mut(&mut offload)
            .expect("not shared yet")
            .step_budget = step_budget;
        let route = metrics.route("t");
        let config = RelayConfig {
            idle: None,
            linger,
            ..Default::default()
        };
        let relay = tokio::spawn(async move {
            let drain = Drain::new();
            relay_streams(
                Stream::Tcp(client_inner),
                Bytes::new(),
                Stream::Tcp(upstream_inner),
                Bytes::new(),
                config,
                drain.signal(),
                &route,
                Some(&offload),
            )
            .await
        });
        let frame = masked_text(b"hi");
        client.write_all(&frame).await.unwrap();
        let mut got = vec![0u8; frame.len()];
        tokio::time::timeout(DEADLINE, upstream.read_exact(&mut got))
            .await
            .expect("frame relayed")
            .unwrap();
        assert_eq!(got, frame);
        wait_on_threads(&metrics, 1).await;
        Moved {
            client,
            upstream,
            relay,
            metrics,
        }
    }

    /// The client half-closes without a Close frame and the backend never follows: the
    /// backend gets Close 1001, and the relay ends when the linger time runs out.
    #[tokio::test]
    async fn linger_ends_a_moved_relay_whose_other_side_never_closes() {
        let mut m = moved_relay(Duration::from_millis(200)).await;
        m.client.shutdown().await.unwrap();
        let stats = tokio::time::timeout(DEADLINE, m.relay)
            .await
            .expect("relay ended")
            .unwrap();
        assert_eq!(stats.end, RelayEnd::LingerExpired);
        assert_eq!(stats.injected_to_upstream, Some(close_code::GOING_AWAY));
        assert_eq!(stats.messages_up, 1);
        // The Close frame (masked, code 1001), then the FIN passed on.
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, m.upstream.read_to_end(&mut rest))
            .await
            .expect("upstream closed")
            .unwrap();
        assert_eq!(rest[0], 0x88, "a Close frame: {rest:?}");
        let key = [rest[2], rest[3], rest[4], rest[5]];
        let code = u16::from_be_bytes([rest[6] ^ key[0], rest[7] ^ key[1]]);
        assert_eq!(code, close_code::GOING_AWAY);
        assert_eq!(on_threads(&m.metrics), Some(0));
    }

    /// A moved relay whose task is dropped (the runtime shutting down) is closed on its
    /// thread: both far ends see their connection end.
    #[tokio::test]
    async fn dropping_the_task_closes_a_moved_relay() {
        let mut m = moved_relay(Duration::from_secs(10)).await;
        m.relay.abort();
        let _ = m.relay.await;
        let mut buf = [0u8; 16];
        for end in [&mut m.client, &mut m.upstream] {
            let n = tokio::time::timeout(DEADLINE, end.read(&mut buf))
                .await
                .expect("connection closed")
                .unwrap_or(0);
            assert_eq!(n, 0, "no bytes, only the end");
        }
        assert_eq!(on_threads(&m.metrics), Some(0));
    }

    /// A relay with more bytes waiting than one turn moves gets further turns without a
    /// new readiness event: with one pass per turn, a 4 MiB frame each way still arrives
    /// whole, and so does the small frame behind it.
    #[tokio::test]
    async fn a_relay_gets_further_turns_until_its_sockets_are_drained() {
        let mut m = moved_relay_with_budget(Duration::from_secs(10), 1).await;
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        // A binary frame with a 64-bit length, masked as a client's must be (the relay
        // does not unmask: the key only has to be there).
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&payload);
        // The backend's frames are not masked.
        let mut backend_frame = vec![0x82, 127];
        backend_frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        backend_frame.extend_from_slice(&payload);
        let small = masked_text(b"after");
        let (mut client_read, mut client_write) = m.client.split();
        let (mut upstream_read, mut upstream_write) = m.upstream.split();
        let sent = async {
            client_write.write_all(&frame).await.unwrap();
            client_write.write_all(&small).await.unwrap();
            upstream_write.write_all(&backend_frame).await.unwrap();
        };
        let want_up = frame.len() + small.len();
        let received = async {
            let mut up = vec![0u8; want_up];
            let mut down = vec![0u8; backend_frame.len()];
            let (a, b) = tokio::join!(
                upstream_read.read_exact(&mut up),
                client_read.read_exact(&mut down)
            );
            a.unwrap();
            b.unwrap();
            (up, down)
        };
        let ((), (up, down)) =
            tokio::time::timeout(DEADLINE, async { tokio::join!(sent, received) })
                .await
                .expect("every byte relayed");
        assert_eq!(&up[..frame.len()], &frame[..]);
        assert_eq!(&up[frame.len()..], &small[..]);
        assert_eq!(down, backend_frame);
        assert_eq!(on_threads(&m.metrics), Some(1));
    }
}
