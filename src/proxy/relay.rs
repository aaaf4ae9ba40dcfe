//! The relay after the 101: raw bytes both ways through the relay machine
//! (`relay/machine.rs`), which tracks frames, enforces the protocol rules and places our
//! own Close frames at frame boundaries. This file holds its tokio driver; relay threads
//! (`relay/offload`) are the other.
//!
//! Memory: an idle relayed connection owns no read buffer. The relay waits for
//! readiness, reads into a per-worker-thread buffer and writes straight on without an
//! await in between; only bytes the destination cannot take yet are copied into the
//! machine's backlog, which is freed once flushed.
//!
//! Two transports: plain TCP on both sides (readiness + `try_read`/`try_write`, the fast
//! path) and any `AsyncRead + AsyncWrite` pair (TLS on either side), driven from one
//! hand-written `poll` that borrows the same per-thread buffer only inside that call.
//! rustls keeps its own record buffers per TLS connection. A relay that gets busy moves to
//! a relay thread (`offload`) with its machine, a TLS side with its rustls session.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::drain::{CloseReason, DrainSignal};
use super::stream::Stream;
use crate::telemetry::RouteMetrics;

mod machine;
mod offload;

pub use super::frame::close_code;
pub use machine::{
    ClosedBy, Counts, Forward, GatewayClose, Keepalive, MessageRate, Output, Relay, RelayConfig,
    RelayEnd, RelayStats, Side, Timeout,
};
pub use offload::{Offload, OffloadOptions};

const READ_BUF: usize = 64 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_BUF].into_boxed_slice());
}

/// Where a readiness-driven driver writes without waiting: a tokio socket (the plain-TCP
/// relay on the runtime), or one side of a relay on a relay thread (`offload/endpoint.rs`:
/// a socket, or rustls' records then the socket). `WouldBlock` means "nothing more now";
/// the driver waits for writability.
trait Sink {
    /// Writes what it can of `bytes` now, at least one byte or `WouldBlock`.
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// Pushes out what the sink holds itself (TLS records): `Ok(false)` while some wait.
    fn try_flush(&mut self) -> io::Result<bool> {
        Ok(true)
    }
    /// Shuts the write half (after a close_notify, for TLS): `Ok(false)` while it waits
    /// for writability first.
    fn try_shutdown(&mut self) -> io::Result<bool>;
}

impl Sink for &TcpStream {
    #[inline]
    fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, bytes)
    }

    fn try_shutdown(&mut self) -> io::Result<bool> {
        SockRef::from(*self)
            .shutdown(Shutdown::Write)
            .map(|()| true)
    }
}

// ---- I/O for readiness-driven drivers (the tokio TCP relay and relay threads) -------------

/// Passes on what one read from `from` brought: the machine decides what goes on, it is
/// written to `dst` at once, and what `dst` does not take waits in the machine's backlog.
/// Then `dst` gets what else it is owed (our Close frames, a flush, a half-close).
/// Interrupted or would-block reads bring nothing.
#[inline]
fn pass_on_read<W: Sink>(relay: &mut Relay, from: Side, read: io::Result<&[u8]>, dst: &mut W) {
    match read {
        Ok([]) => relay.handle_eof(from),
        Ok(bytes) => {
            let fwd = relay.handle_read(from, bytes);
            let to = fwd.to();
            let sent = if relay.has_backlog(to) {
                0
            } else {
                let (sent, failed) = write_now(dst, relay.parts(&fwd));
                if failed {
                    relay.handle_write_failed(to);
                }
                sent
            };
            relay.handle_forwarded(fwd, sent);
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) => {}
        Err(_) => relay.handle_eof(from),
    }
    write_owed(relay, from.other(), dst);
}

/// Writes `parts` in order as far as `dst` takes them now. Returns how many bytes went,
/// and whether the write failed.
#[inline]
fn write_now<W: Sink>(dst: &mut W, parts: [&[u8]; 2]) -> (usize, bool) {
    let mut sent = 0;
    for part in parts {
        let mut off = 0;
        while off < part.len() {
            match dst.try_write(&part[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return (sent + off, false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return (sent + off, true),
            }
        }
        sent += off;
    }
    (sent, false)
}

/// Gives `to` what the machine owes it and `dst` takes now: the backlog, a flush of what
/// `dst` holds (TLS records), then a half-close once its source ended.
#[inline]
fn write_owed<W: Sink>(relay: &mut Relay, to: Side, dst: &mut W) {
    if relay.owes_output(to) {
        write_owed_slow(relay, to, dst);
    }
}

fn write_owed_slow<W: Sink>(relay: &mut Relay, to: Side, dst: &mut W) {
    loop {
        match relay.poll_output(to) {
            Some(Output::Write(bytes)) => match dst.try_write(bytes) {
                Ok(n) => relay.handle_sent(to, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => relay.handle_write_failed(to),
            },
            Some(Output::Flush) => match dst.try_flush() {
                Ok(true) => relay.handle_flushed(to),
                Ok(false) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => relay.handle_write_failed(to),
            },
            Some(Output::Shutdown) => match dst.try_shutdown() {
                Ok(false) => return,
                // A half-close that fails leaves nothing else to do on that side.
                Ok(true) | Err(_) => relay.handle_shutdown(to),
            },
            None => return,
        }
    }
}

/// Adds counts to the route's counters and the message sizes to the process-wide
/// histograms (client → backend, then back). Nothing relayed adds nothing, so a route
/// whose connections never moved a byte has no traffic series (they appear on first use).
fn add_counts(c: Counts, metrics: &RouteMetrics) {
    for (counted, histogram) in [c.sizes_up, c.sizes_down]
        .into_iter()
        .zip(metrics.message_sizes())
    {
        if let Some(counted) = counted {
            histogram.add(&counted.buckets, counted.sum);
        }
    }
    if c.bytes_up == 0 && c.bytes_down == 0 {
        return;
    }
    let r = metrics.relayed();
    r.bytes_up.inc_by(c.bytes_up);
    r.messages_up.inc_by(c.messages_up);
    r.bytes_down.inc_by(c.bytes_down);
    r.messages_down.inc_by(c.messages_down);
}

// ---- the tokio driver ----------------------------------------------------------------------

/// Reads once from `src` into the worker's buffer and passes it on. No await inside, so
/// the thread-local buffer is never held across a suspension.
fn read_and_forward(relay: &mut Relay, from: Side, src: &TcpStream, dst: &TcpStream) {
    READ_BUFFER.with(|buf| {
        let mut buf = buf.borrow_mut();
        let read = src.try_read(&mut buf[..]);
        if matches!(read, Ok(n) if n > 0 && n < buf.len()) {
            // A short read drained the socket: forget the readiness now instead of paying
            // a read that returns EAGAIN on the next step. Safe with tokio's readiness
            // ticks: data that arrives meanwhile raises a new event.
            let _ = src.try_io(Interest::READABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
        }
        pass_on_read(relay, from, read.map(|n| &buf[..n]), &mut { dst });
    });
}

/// The two connections of a relay and how bytes move between them.
trait Transport {
    /// Moves whatever can move until nothing can, then: `Ready` if anything changed,
    /// `Pending` if not — either way with a waker registered for everything it waits on
    /// (`run` relies on that to sleep after a step that moved bytes).
    fn poll_step(&mut self, cx: &mut Context<'_>, relay: &mut Relay) -> Poll<()>;

    /// The client's and the backend's connection, to move to a relay thread.
    fn into_streams(self) -> (Stream, Stream);
}

/// Plain TCP both ways: readiness, then `try_read`/`try_write` on the sockets themselves.
struct Tcp {
    client: TcpStream,
    upstream: TcpStream,
}

impl Transport for Tcp {
    fn poll_step(&mut self, cx: &mut Context<'_>, relay: &mut Relay) -> Poll<()> {
        let (client, upstream) = (&self.client, &self.upstream);
        // Moves until nothing can move, so one wake-up is one step however many sockets
        // became ready; each check registers its waker when not ready. Bounded: a read or
        // flush clears the readiness it used unless it moved a full buffer, and tokio's
        // cooperative budget ends the loop (Pending plus a wake-up) after enough moves.
        // A socket that answered Pending keeps our waker until it becomes ready, so it is
        // not asked again within the step (bench/instructions.sh: 3.5 -> 3.0 readiness polls
        // per step).
        let mut moved = false;
        let (mut client_waits, mut upstream_waits) = (false, false);
        while !relay.is_done()
            && (read_when_ready(cx, relay, Side::Client, client, upstream, &mut client_waits)
                || read_when_ready(
                    cx,
                    relay,
                    Side::Backend,
                    upstream,
                    client,
                    &mut upstream_waits,
                )
                || flush_when_ready(cx, relay, Side::Backend, upstream)
                || flush_when_ready(cx, relay, Side::Client, client))
        {
            moved = true;
        }
        if moved {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn into_streams(self) -> (Stream, Stream) {
        (Stream::Tcp(self.client), Stream::Tcp(self.upstream))
    }
}

/// If the machine wants to read `from` and `src` is readable: one read, passed on to
/// `dst`. Skipped while `waits` (`src` answered Pending earlier in this step); sets it on
/// Pending.
#[inline]
fn read_when_ready(
    cx: &mut Context<'_>,
    relay: &mut Relay,
    from: Side,
    src: &TcpStream,
    dst: &TcpStream,
    waits: &mut bool,
) -> bool {
    if *waits || !relay.wants_read(from) {
        return false;
    }
    let Poll::Ready(r) = src.poll_read_ready(cx) else {
        *waits = true;
        return false;
    };
    if r.is_err() {
        relay.handle_eof(from);
    }
    read_and_forward(relay, from, src, dst);
    true
}

/// If bytes wait for `to` and `dst` is writable: write them, then pass a half-close on.
#[inline]
fn flush_when_ready(cx: &mut Context<'_>, relay: &mut Relay, to: Side, dst: &TcpStream) -> bool {
    if !relay.has_backlog(to) {
        return false;
    }
    let Poll::Ready(r) = dst.poll_write_ready(cx) else {
        return false;
    };
    if r.is_err() {
        relay.handle_write_failed(to);
    }
    write_owed(relay, to, &mut { dst });
    true
}

/// Any byte streams (TLS on either side).
struct Io {
    client: Stream,
    upstream: Stream,
}

impl Transport for Io {
    fn poll_step(&mut self, cx: &mut Context<'_>, relay: &mut Relay) -> Poll<()> {
        // As for plain TCP: pump until a pass moves nothing, so every waker is registered.
        // Bounded by tokio's cooperative budget, which the sockets under the TLS streams use.
        let mut moved = false;
        while !relay.is_done() {
            let a = pump(
                cx,
                relay,
                Side::Client,
                &mut self.client,
                &mut self.upstream,
            );
            let b = pump(
                cx,
                relay,
                Side::Backend,
                &mut self.upstream,
                &mut self.client,
            );
            if !(a || b) {
                break;
            }
            moved = true;
        }
        if moved {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn into_streams(self) -> (Stream, Stream) {
        (self.client, self.upstream)
    }
}

impl Io {
    /// The relay ended: a TLS side that did not get its half-close (a relay ends once both
    /// Closes passed) still gets close_notify, so that a peer reading on sees a clean end
    /// rather than a truncation. One try, no wait: the streams close right after.
    fn finish(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for stream in [&mut self.client, &mut self.upstream] {
            if !matches!(stream, Stream::Tcp(_)) {
                let _ = Pin::new(stream).poll_shutdown(&mut cx);
            }
        }
    }
}

/// One direction of a poll-driven relay: give `dst` what it is owed, read once from `src`
/// into the worker's buffer and pass it on, then `dst` again. The buffer is borrowed only
/// inside this call, never across a suspension. Returns whether anything changed.
fn pump<S, D>(cx: &mut Context<'_>, relay: &mut Relay, from: Side, src: &mut S, dst: &mut D) -> bool
where
    S: AsyncRead + Unpin,
    D: AsyncWrite + Unpin,
{
    let to = from.other();
    let mut progress = poll_owed(cx, relay, to, dst);
    if relay.wants_read(from) {
        progress |= READ_BUFFER.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut read = ReadBuf::new(&mut buf[..]);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Pending => false,
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    relay.handle_eof(from);
                    true
                }
                Poll::Ready(Ok(())) => {
                    let fwd = relay.handle_read(from, read.filled());
                    let sent = if relay.has_backlog(to) {
                        0
                    } else {
                        let (sent, failed) = poll_write_now(cx, dst, relay.parts(&fwd));
                        if failed {
                            relay.handle_write_failed(to);
                        }
                        sent
                    };
                    relay.handle_forwarded(fwd, sent);
                    true
                }
                Poll::Ready(Err(_)) => {
                    relay.handle_eof(from);
                    true
                }
            }
        });
        progress |= poll_owed(cx, relay, to, dst);
    }
    progress
}

/// `write_now` for a poll-driven `dst`.
fn poll_write_now<D: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    dst: &mut D,
    parts: [&[u8]; 2],
) -> (usize, bool) {
    let mut sent = 0;
    for part in parts {
        let mut off = 0;
        while off < part.len() {
            match Pin::new(&mut *dst).poll_write(cx, &part[off..]) {
                Poll::Ready(Ok(n)) if n > 0 => off += n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(_) => return (sent + off, true),
                Poll::Pending => return (sent + off, false),
            }
        }
        sent += off;
    }
    (sent, false)
}

/// `write_owed` for a poll-driven `dst`: the backlog, a flush of buffered TLS records, a
/// half-close (close_notify + FIN for TLS). Returns whether anything changed.
fn poll_owed<D: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    relay: &mut Relay,
    to: Side,
    dst: &mut D,
) -> bool {
    let mut progress = false;
    loop {
        let done = match relay.poll_output(to) {
            None => return progress,
            Some(Output::Write(bytes)) => match Pin::new(&mut *dst).poll_write(cx, bytes) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    relay.handle_sent(to, n);
                    true
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => true,
                Poll::Ready(_) => {
                    relay.handle_write_failed(to);
                    true
                }
                Poll::Pending => false,
            },
            Some(Output::Flush) => match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    relay.handle_flushed(to);
                    true
                }
                Poll::Ready(Err(_)) => {
                    relay.handle_write_failed(to);
                    true
                }
                Poll::Pending => false,
            },
            Some(Output::Shutdown) => match Pin::new(&mut *dst).poll_shutdown(cx) {
                Poll::Ready(_) => {
                    relay.handle_shutdown(to);
                    true
                }
                Poll::Pending => false,
            },
        };
        if !done {
            return progress;
        }
        progress = true;
    }
}

/// Relays two upgraded connections until the machine is done: the plain-TCP fast path
/// when neither side is TLS, the general one when either is; either moves to a relay
/// thread of `offload` once busy.
/// `client_early` / `upstream_early` are bytes each side sent right behind its handshake.
///
/// A plain function that sets the relay up and returns an `async move` block, not an
/// `async fn`: an async fn keeps each argument twice in its future (as captured and as a
/// local), and this future is most of what an idle relayed connection costs
/// (print-type-size: 472 of its 1,464 bytes were such copies).
#[allow(clippy::too_many_arguments)]
pub fn relay_streams<'a>(
    client: Stream,
    client_early: Bytes,
    upstream: Stream,
    upstream_early: Bytes,
    config: RelayConfig,
    mut drain: DrainSignal,
    metrics: &'a RouteMetrics,
    offload: Option<&'a Offload>,
) -> impl std::future::Future<Output = RelayStats> + 'a {
    let buffered = !matches!((&client, &upstream), (Stream::Tcp(_), Stream::Tcp(_)));
    let mut relay = Relay::new(config, buffered, std::time::Instant::now());
    for (from, early) in [
        (Side::Client, &client_early),
        (Side::Backend, &upstream_early),
    ] {
        if !early.is_empty() {
            // Written with the first step, behind nothing.
            let fwd = relay.handle_read(from, early);
            relay.handle_forwarded(fwd, 0);
        }
    }
    // hyper's read buffer may sit behind these bytes; a long-lived connection must not
    // keep it.
    drop((client_early, upstream_early));
    if drain.is_draining() {
        start_drain(&mut relay, &drain);
    }
    let mut streams = match (client, upstream) {
        (Stream::Tcp(client), Stream::Tcp(upstream)) => Streams::Tcp(Tcp { client, upstream }),
        (client, upstream) => Streams::Io(Io { client, upstream }),
    };
    async move {
        // Each arm awaits `run` directly, and what a moved relay awaits is boxed: fewer
        // future layers keep every relay's task small.
        let exit = match &mut streams {
            Streams::Tcp(tcp) => run(tcp, &mut relay, &mut drain, metrics, offload).await,
            Streams::Io(io) => {
                let exit = run(io, &mut relay, &mut drain, metrics, offload).await;
                if let Exit::Ended = exit {
                    io.finish();
                }
                exit
            }
        };
        if let Exit::Move(pool, thread) = exit {
            // Counts so far go out here: the thread sweeps the next.
            add_counts(relay.take_counts(), metrics);
            let (client, upstream) = streams.into_streams();
            let moved = on_thread(
                pool, thread, client, upstream, &mut relay, &mut drain, metrics,
            );
            Box::pin(moved).await;
        }
        add_counts(relay.take_counts(), metrics);
        relay.stats()
    }
}

/// A relay's two connections: both plain TCP (the fast path), or any streams.
enum Streams {
    Tcp(Tcp),
    Io(Io),
}

impl Streams {
    fn into_streams(self) -> (Stream, Stream) {
        match self {
            Streams::Tcp(tcp) => tcp.into_streams(),
            Streams::Io(io) => io.into_streams(),
        }
    }
}

/// A relay on a relay thread until it ends; on tokio if the thread cannot take it.
async fn on_thread(
    pool: &Offload,
    thread: &offload::RelayThread,
    client: Stream,
    upstream: Stream,
    relay: &mut Relay,
    drain: &mut DrainSignal,
    metrics: &RouteMetrics,
) {
    // The machine travels by value; a blank one holds its place meanwhile.
    let blank = Relay::new(RelayConfig::default(), false, std::time::Instant::now());
    let moving = std::mem::replace(relay, blank);
    let span = tracing::Span::current();
    match thread
        .relay(pool, client, upstream, moving, span, drain, metrics)
        .await
    {
        Ok(finished) => *relay = finished,
        Err(back) => {
            let offload::NotMoved {
                client,
                upstream,
                relay: back_relay,
                error,
            } = *back;
            *relay = back_relay;
            tracing::warn!(%error, "cannot move a busy relay to a relay thread; it stays on the async runtime");
            // Rare (the relay thread's poller refused the sockets): the general transport
            // serves either kind of stream, and a second move is not tried.
            let mut io = Io { client, upstream };
            run(&mut io, relay, drain, metrics, None).await;
            io.finish();
        }
    }
}

/// How a relay left the async runtime's loop.
enum Exit<'o> {
    Ended,
    /// Busy enough to move to this relay thread of these.
    Move(&'o Offload, &'o offload::RelayThread),
}

async fn run<'o, T: Transport>(
    transport: &mut T,
    relay: &mut Relay,
    drain: &mut DrainSignal,
    metrics: &RouteMetrics,
    mut offload: Option<&'o Offload>,
) -> Exit<'o> {
    // A timer exists only when needed (a route with `timeouts.idle`, a relay winding
    // down), so an idle relayed connection without one owns none.
    let mut timer: Option<(std::time::Instant, Pin<Box<Sleep>>)> = None;
    loop {
        if relay.is_done() {
            return Exit::Ended;
        }
        arm(&mut timer, relay.poll_deadline(std::time::Instant::now));
        let mut move_due = false;
        let draining = relay.is_draining();
        // Injected Close frames land in a backlog; the next step writes them.
        tokio::select! {
            biased;
            signal = poll_fn(|cx| poll_signal(cx, drain, draining)) => match signal {
                Signal::Drain => start_drain(relay, drain),
                Signal::Close(at, reason) => relay.handle_close_at(at, reason),
            },
            _ = poll_fn(|cx| {
                if transport.poll_step(cx, relay).is_pending() {
                    return Poll::Pending;
                }
                if relay.tracks_activity() {
                    relay.note_activity(std::time::Instant::now());
                }
                if relay.counts_due() {
                    add_counts(relay.take_counts(), metrics);
                }
                // A step stops only once nothing can move, with a waker registered for
                // everything it waits on. Unless the relay is winding down (what the loop
                // around this reacts to), sleep right here: going round the loop would poll
                // every socket again only to learn that (bench/instructions.sh: 1,491 -> 1,256
                // instructions per 64 B message).
                if relay.is_done() || relay.winding_down() {
                    return Poll::Ready(());
                }
                // A draining relay stays put: its Close frames are already on their way.
                if !relay.is_draining() && offload.is_some_and(|o| o.due(relay.messages())) {
                    move_due = true;
                    return Poll::Ready(());
                }
                // Counts began to wait in this step: go round the loop once to arm their
                // deadline (COUNTS_DUE_AFTER), so a connection that goes quiet now still
                // has them flushed.
                if relay.wants_counts_timer() {
                    return Poll::Ready(());
                }
                Poll::Pending
            }) => {}
            _ = fire(&mut timer) => {
                log_timeout(&relay.handle_timeout(std::time::Instant::now()));
                if relay.counts_due() {
                    add_counts(relay.take_counts(), metrics);
                }
            }
        }
        if move_due {
            match offload.and_then(|pool| Some((pool, pool.thread()?))) {
                Some((pool, thread)) => return Exit::Move(pool, thread),
                None => offload = None,
            }
        }
    }
}

/// What the gateway asks of one relay: the drain started, or a close on a schedule.
pub(super) enum Signal {
    Drain,
    Close(std::time::Instant, CloseReason),
}

/// Ready when the drain starts (unless the relay is `draining` already) or a close is
/// asked of this connection. Pending costs two atomic loads.
pub(super) fn poll_signal(
    cx: &mut Context<'_>,
    drain: &mut DrainSignal,
    draining: bool,
) -> Poll<Signal> {
    if !draining && drain.poll_drain(cx).is_ready() {
        return Poll::Ready(Signal::Drain);
    }
    drain
        .poll_close_request(cx)
        .map(|(at, reason)| Signal::Close(at, reason))
}

/// wsgate shuts down: the client gets Close 1001 at this connection's own moment inside
/// its route's drain budget (at once without jitter).
fn start_drain(relay: &mut Relay, drain: &DrainSignal) {
    if drain.shutdown_offset().is_zero() {
        relay.handle_drain();
    } else {
        relay.handle_close_at(drain.shutdown_at(), CloseReason::Shutdown);
    }
}

/// The log line of a timeout that closes a connection (both drivers).
pub(super) fn log_timeout(timeout: &Timeout) {
    match timeout {
        Timeout::Idle(idle) => tracing::info!(
            idle_ms = idle.as_millis() as u64,
            "closing idle WebSocket connection (route timeouts.idle)"
        ),
        Timeout::TokenExpired => tracing::info!(
            "closing WebSocket connection: the client's token expired (closeOnTokenExpiry)"
        ),
        Timeout::Scheduled(reason) => tracing::debug!(
            reason = reason.label(),
            "closing WebSocket connection on the gateway's schedule"
        ),
        Timeout::KeepaliveUnanswered(side) => tracing::info!(
            side = ?side,
            "closing WebSocket connection: a side did not answer wsgate's keep-alive ping (route keepalive.pongTimeout)"
        ),
        Timeout::KeepalivePing | Timeout::LingerExpired | Timeout::Nothing => {}
    }
}

/// Keeps `timer` set to the machine's deadline (none: no timer).
fn arm(
    timer: &mut Option<(std::time::Instant, Pin<Box<Sleep>>)>,
    deadline: Option<std::time::Instant>,
) {
    match (deadline, timer.as_mut()) {
        (None, _) => *timer = None,
        (Some(at), Some((armed, sleep))) => {
            // An idle deadline moves with every byte; the timer follows it only when it
            // fired (or the deadline came nearer), instead of being reset on every step.
            if at < *armed || (at != *armed && sleep.is_elapsed()) {
                *armed = at;
                sleep.as_mut().reset(tokio::time::Instant::from_std(at));
            }
        }
        (Some(at), None) => {
            *timer = Some((
                at,
                Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at))),
            ))
        }
    }
}

/// Completes when the timer is set and due; never when it is not set.
async fn fire(timer: &mut Option<(std::time::Instant, Pin<Box<Sleep>>)>) {
    match timer {
        Some((_, t)) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod size_budget {
    /// The relay future is most of what an idle relayed connection costs wsgate; it must
    /// stay small (the goal is under 4 KiB per idle connection in all).
    #[tokio::test]
    async fn relay_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = l.accept().await.unwrap();
        let all = crate::telemetry::Metrics::new();
        let metrics = all.route("x");
        let drain = crate::proxy::Drain::new();
        let offload = super::Offload::new(Default::default(), all.offload());
        let fut = super::relay_streams(
            super::Stream::Tcp(a),
            bytes::Bytes::new(),
            super::Stream::Tcp(b),
            bytes::Bytes::new(),
            Default::default(),
            drain.signal(),
            &metrics,
            offload.as_deref(),
        );
        let size = std::mem::size_of_val(&fut);
        // 1,400 before issue 21; its drains (a boxed scheduled close), keep-alive (a boxed
        // state, two tracker flags) and telemetry (who closed, the counts' deadline to the
        // second, two size-tally pointers, the short messages' inline size counts) brought
        // it to 1,448, issue 22's TLS relays on relay threads to 1,464. Then `relay_streams`
        // became a function returning an `async move` block instead of an async fn, which
        // had kept every argument twice (captured and as a local; rustc's -Zprint-type-sizes
        // showed 472 bytes of such copies and an 80-byte match temporary): 872.
        assert!(size <= 872, "relay future grew to {size} bytes");
    }
}
