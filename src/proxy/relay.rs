//! The relay after the 101: raw bytes both ways, a frame-header tracker per direction,
//! and our own Close frames injected at frame boundaries when a side dies, the gateway
//! drains, or a route's idle timeout fires.
//!
//! Memory: an idle relayed connection owns no read buffer. The relay waits for
//! readiness, reads into a per-worker-thread buffer and writes straight on without an
//! await in between; only bytes the destination cannot take yet are copied into a
//! per-direction backlog, which is freed once flushed.
//!
//! Two transports share the frame tracking, Close injection, idle and linger logic
//! (`Half` and `run`): plain TCP on both sides (readiness + `try_read`/`try_write`, the
//! fast path) and any `AsyncRead + AsyncWrite` pair (TLS on either side), driven from one
//! hand-written `poll` that borrows the same per-thread buffer only inside that call.
//! rustls keeps its own record buffers per TLS connection. A plain-TCP relay that gets
//! busy moves to a relay thread (`offload`), which runs the same `Half` logic from its own
//! epoll loop.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::drain::DrainSignal;
use super::frame::{close_frame, FrameTracker};
use super::tls::Stream;
use crate::telemetry::RouteMetrics;

const READ_BUF: usize = 64 * 1024;
/// Flush local byte counts to the shared metrics at least this often (in bytes), so a
/// long-lived connection shows up before it ends without touching shared counters per read.
const METRICS_FLUSH_BYTES: u64 = 256 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_BUF].into_boxed_slice());
}

/// A socket written without waiting: tokio's (readiness tracked by tokio) or mio's (by a
/// relay thread's own loop).
trait TryWrite: std::os::fd::AsFd {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize>;
}

impl TryWrite for TcpStream {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, bytes)
    }
}

impl TryWrite for mio::net::TcpStream {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &*self, bytes)
    }
}

mod offload;

pub use offload::{Offload, OffloadOptions};

/// Close codes wsgate sends on its own behalf.
pub mod close_code {
    /// The gateway is shutting down, or the connection was idle too long.
    pub const GOING_AWAY: u16 = 1001;
    /// The backend connection ended without a Close frame.
    pub const INTERNAL_ERROR: u16 = 1011;
}

#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// Close both sides (1001) after this long with no bytes either way. None = never.
    pub idle: Option<Duration>,
    /// How long to wait for the other side once one side has closed.
    pub linger: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            idle: None,
            linger: Duration::from_secs(10),
        }
    }
}

/// Why a relay ended, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed (with or without a Close handshake).
    Closed,
    /// One side closed and the other did not follow within the linger time.
    LingerExpired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStats {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub messages_up: u64,
    pub messages_down: u64,
    /// A Close frame was injected towards the client (drain, idle, backend died).
    pub injected_to_client: Option<u16>,
    /// A Close frame was injected towards the backend (client died, idle).
    pub injected_to_upstream: Option<u16>,
    pub end: RelayEnd,
}

/// One direction: bytes read from `src`, written to `dst`.
struct Half {
    tracker: FrameTracker,
    /// Bytes read but not yet accepted by `dst`.
    backlog: Vec<u8>,
    backlog_off: usize,
    /// `src` reached EOF or failed.
    src_done: bool,
    /// `dst` failed; further bytes are dropped.
    dst_dead: bool,
    /// Write half of `dst` shut down.
    dst_shut: bool,
    /// A Close frame of ours went to `dst`: later bytes from `src` are dropped (no data may
    /// follow a Close).
    discard: bool,
    /// Inject a Close with this code at the next frame boundary.
    close_wanted: Option<(u16, &'static str)>,
    injected: Option<u16>,
    /// Frames towards a backend must be masked.
    masked: bool,
    /// Bytes went into a buffering `dst` (TLS) since its last successful flush.
    unflushed: bool,
    bytes: u64,
    bytes_flushed: u64,
    messages_flushed: u64,
}

impl Half {
    fn new(masked: bool) -> Self {
        Half {
            tracker: FrameTracker::new(),
            backlog: Vec::new(),
            backlog_off: 0,
            src_done: false,
            dst_dead: false,
            dst_shut: false,
            discard: false,
            close_wanted: None,
            injected: None,
            masked,
            unflushed: false,
            bytes: 0,
            bytes_flushed: 0,
            messages_flushed: 0,
        }
    }

    fn has_backlog(&self) -> bool {
        self.backlog_off < self.backlog.len()
    }

    fn wants_read(&self) -> bool {
        !self.src_done && !self.has_backlog()
    }

    /// A Close frame (the peer's or ours) went this way and nothing is left to write.
    fn closed_and_flushed(&self) -> bool {
        (self.tracker.close_seen() || self.injected.is_some())
            && !self.has_backlog()
            && !self.unflushed
    }

    fn finished(&self) -> bool {
        self.src_done && (self.dst_shut || self.dst_dead)
    }

    /// Takes freshly read bytes: tracks frames, forwards what may go on, injects a
    /// wanted Close at the first boundary. Returns the slice ranges to forward.
    fn accept<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        if self.discard || self.dst_dead {
            return &[];
        }
        self.bytes += chunk.len() as u64;
        if self.close_wanted.is_none() {
            self.tracker.track(chunk);
            return chunk;
        }
        if self.tracker.at_boundary() {
            return &[];
        }
        // Forward only up to the end of the current frame, so the tracker stops exactly
        // at the boundary where our Close goes; the rest is dropped with the Close.
        let mut off = 0;
        while off < chunk.len() {
            let (n, end) = self.tracker.advance(&chunk[off..]);
            off += n;
            if end.is_some() || n == 0 {
                return &chunk[..off];
            }
        }
        chunk
    }

    /// If a Close is wanted and the stream is at a boundary, queue it and stop forwarding.
    fn inject_if_ready(&mut self) {
        let Some((code, reason)) = self.close_wanted else {
            return;
        };
        if self.discard || self.dst_dead || self.dst_shut {
            self.close_wanted = None;
            return;
        }
        if self.tracker.close_seen() {
            // The peer already sent its own Close this way; ours would be a second one.
            self.close_wanted = None;
            return;
        }
        if !self.tracker.at_boundary() {
            return;
        }
        let mut frame = Vec::with_capacity(8 + reason.len());
        close_frame(code, reason, self.masked.then(mask_key), &mut frame);
        self.compact_backlog();
        self.backlog.extend_from_slice(&frame);
        self.injected = Some(code);
        self.close_wanted = None;
        self.discard = true;
    }

    fn compact_backlog(&mut self) {
        if self.backlog_off > 0 {
            self.backlog.drain(..self.backlog_off);
            self.backlog_off = 0;
        }
    }

    /// Writes as much as `dst` takes now, keeping the rest in the backlog.
    fn forward<W: TryWrite>(&mut self, dst: &W, bytes: &[u8]) {
        if bytes.is_empty() || self.dst_dead {
            return;
        }
        let mut off = 0;
        if !self.has_backlog() {
            while off < bytes.len() {
                match dst.try_write(&bytes[off..]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.dst_dead = true;
                        return;
                    }
                }
            }
        }
        if off < bytes.len() {
            self.compact_backlog();
            self.backlog.extend_from_slice(&bytes[off..]);
        }
    }

    /// Flushes the backlog; frees it once empty so an idle connection holds no buffer.
    fn flush<W: TryWrite>(&mut self, dst: &W) {
        while self.has_backlog() {
            match dst.try_write(&self.backlog[self.backlog_off..]) {
                Ok(n) => self.backlog_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.dst_dead = true;
                    break;
                }
            }
        }
        self.backlog = Vec::new();
        self.backlog_off = 0;
    }

    /// After `src` ended and the backlog is out, pass the half-close on.
    fn shut_if_done<W: TryWrite>(&mut self, dst: &W) {
        if self.src_done && !self.has_backlog() && !self.dst_shut && !self.dst_dead {
            let _ = SockRef::from(dst).shutdown(Shutdown::Write);
            self.dst_shut = true;
        }
    }

    /// Keeps bytes for the next write (early bytes behind a handshake).
    fn queue(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() && !self.dst_dead {
            self.compact_backlog();
            self.backlog.extend_from_slice(bytes);
        }
    }

    /// `forward` for a poll-driven `dst`: writes what it takes now, keeps the rest.
    fn poll_forward<D: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut D,
        bytes: &[u8],
    ) {
        if bytes.is_empty() || self.dst_dead {
            return;
        }
        let mut off = 0;
        if !self.has_backlog() {
            while off < bytes.len() {
                match Pin::new(&mut *dst).poll_write(cx, &bytes[off..]) {
                    Poll::Ready(Ok(0)) => {
                        self.dst_dead = true;
                        return;
                    }
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(Err(_)) => {
                        self.dst_dead = true;
                        return;
                    }
                    Poll::Pending => break,
                }
            }
        }
        self.queue(&bytes[off..]);
    }

    /// `flush` for a poll-driven `dst`. Returns whether anything changed.
    fn poll_backlog<D: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, dst: &mut D) -> bool {
        let mut progress = false;
        while self.has_backlog() && !self.dst_dead {
            match Pin::new(&mut *dst).poll_write(cx, &self.backlog[self.backlog_off..]) {
                Poll::Ready(Ok(0)) => self.dst_dead = true,
                Poll::Ready(Ok(n)) => {
                    self.backlog_off += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(_)) => self.dst_dead = true,
                Poll::Pending => return progress,
            }
            progress = true;
        }
        self.backlog = Vec::new();
        self.backlog_off = 0;
        progress
    }

    /// Pushes buffered TLS records out, then passes a finished `src` on as a half-close
    /// (close_notify + FIN for TLS). Returns whether anything changed.
    fn poll_finish<D: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, dst: &mut D) -> bool {
        let mut progress = false;
        if self.unflushed && !self.dst_dead {
            match Pin::new(&mut *dst).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    progress = true;
                }
                Poll::Ready(Err(_)) => {
                    self.unflushed = false;
                    self.dst_dead = true;
                    progress = true;
                }
                Poll::Pending => {}
            }
        }
        if self.src_done
            && !self.has_backlog()
            && !self.unflushed
            && !self.dst_shut
            && !self.dst_dead
            && Pin::new(&mut *dst).poll_shutdown(cx).is_ready()
        {
            self.dst_shut = true;
            progress = true;
        }
        progress
    }

    /// When `src` vanished without a Close, queue ours (1001/1011) for the other side.
    fn close_if_src_died(&mut self, died_code: (u16, &'static str)) {
        if self.src_done && !self.tracker.close_seen() && self.injected.is_none() {
            self.close_wanted = Some(died_code);
            self.inject_if_ready();
        }
    }

    /// Closes this direction with our 1001 at its next frame boundary (drain, idle timeout).
    fn close_going_away(&mut self, reason: &'static str) {
        self.close_wanted = Some((close_code::GOING_AWAY, reason));
        self.inject_if_ready();
    }

    /// Flushes the counts once `METRICS_FLUSH_BYTES` passed since the last flush.
    fn flush_metrics_if_due(&mut self, bytes: &Counter, messages: &Counter) {
        if self.bytes - self.bytes_flushed > METRICS_FLUSH_BYTES {
            self.flush_metrics(bytes, messages);
        }
    }

    /// Passes on what one read from the source brought: forwards the bytes (a Close of
    /// ours goes in at the next frame boundary), answers a source that ended or died, then
    /// flushes and passes a half-close on. Interrupted or would-block reads bring nothing.
    fn pass_on_read<W: TryWrite>(
        &mut self,
        read: io::Result<&[u8]>,
        dst: &W,
        died_code: (u16, &'static str),
    ) {
        match read {
            Ok([]) => self.src_done = true,
            Ok(bytes) => {
                let fwd = self.accept(bytes);
                self.forward(dst, fwd);
                self.inject_if_ready();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.src_done = true,
        }
        // The source vanished without a Close: tell the other side properly.
        self.close_if_src_died(died_code);
        self.flush(dst);
        self.shut_if_done(dst);
    }

    fn flush_metrics(&mut self, bytes: &Counter, messages: &Counter) {
        bytes.inc_by(self.bytes - self.bytes_flushed);
        self.bytes_flushed = self.bytes;
        let m = self.tracker.messages();
        messages.inc_by(m - self.messages_flushed);
        self.messages_flushed = m;
    }
}

/// Reads once from `src` into the worker's buffer and forwards it. No await inside, so the
/// thread-local buffer is never held across a suspension.
fn read_and_forward(
    src: &TcpStream,
    dst: &TcpStream,
    half: &mut Half,
    died_code: (u16, &'static str),
) {
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
        half.pass_on_read(read.map(|n| &buf[..n]), dst, died_code);
    });
}

/// One direction of a poll-driven relay: flush the backlog, read once into the worker's
/// buffer and forward, flush TLS records, pass a half-close on. The buffer is borrowed only
/// inside this call, never across a suspension. Returns whether anything changed.
fn pump<S, D>(
    cx: &mut Context<'_>,
    src: &mut S,
    dst: &mut D,
    half: &mut Half,
    died_code: (u16, &'static str),
) -> bool
where
    S: AsyncRead + Unpin,
    D: AsyncWrite + Unpin,
{
    let mut progress = half.has_backlog() && half.poll_backlog(cx, dst);
    if half.wants_read() {
        progress |= READ_BUFFER.with(|buf| {
            let mut buf = buf.borrow_mut();
            let mut read = ReadBuf::new(&mut buf[..]);
            match Pin::new(&mut *src).poll_read(cx, &mut read) {
                Poll::Pending => false,
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    half.src_done = true;
                    true
                }
                Poll::Ready(Ok(())) => {
                    let fwd = half.accept(read.filled());
                    half.poll_forward(cx, dst, fwd);
                    half.inject_if_ready();
                    true
                }
                Poll::Ready(Err(_)) => {
                    half.src_done = true;
                    true
                }
            }
        });
        half.close_if_src_died(died_code);
        if half.has_backlog() {
            half.poll_backlog(cx, dst);
        }
    }
    progress |= half.poll_finish(cx, dst);
    progress
}

/// Both directions ended: each source closed and the close passed on, or both Close frames
/// went through — then the close handshake is complete, and as the server side towards the
/// client we close the TCP connection now (RFC 6455 §7.1.1) instead of waiting for FINs.
fn relay_done(up: &Half, down: &Half) -> bool {
    (up.finished() && down.finished()) || (up.closed_and_flushed() && down.closed_and_flushed())
}

/// The two connections of a relay and how bytes move between them.
trait Transport {
    /// Moves whatever can move until nothing can, then: `Ready` if anything changed,
    /// `Pending` if not — either way with a waker registered for everything it waits on
    /// (`run` relies on that to sleep after a step that moved bytes).
    fn poll_step(&mut self, cx: &mut Context<'_>, up: &mut Half, down: &mut Half) -> Poll<()>;
}

const CLIENT_DIED: (u16, &str) = (close_code::GOING_AWAY, "client went away");
const UPSTREAM_DIED: (u16, &str) = (close_code::INTERNAL_ERROR, "backend connection lost");

/// Plain TCP both ways: readiness, then `try_read`/`try_write` on the sockets themselves.
struct Tcp {
    client: TcpStream,
    upstream: TcpStream,
}

impl Transport for Tcp {
    fn poll_step(&mut self, cx: &mut Context<'_>, up: &mut Half, down: &mut Half) -> Poll<()> {
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
        while !relay_done(up, down)
            && (read_when_ready(cx, client, upstream, up, CLIENT_DIED, &mut client_waits)
                || read_when_ready(
                    cx,
                    upstream,
                    client,
                    down,
                    UPSTREAM_DIED,
                    &mut upstream_waits,
                )
                || flush_when_ready(cx, upstream, up)
                || flush_when_ready(cx, client, down))
        {
            moved = true;
        }
        if moved {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// If `half` wants to read and `src` is readable: one read, forwarded to `dst`. Skipped
/// while `waits` (`src` answered Pending earlier in this step); sets it on Pending.
#[inline]
fn read_when_ready(
    cx: &mut Context<'_>,
    src: &TcpStream,
    dst: &TcpStream,
    half: &mut Half,
    died_code: (u16, &'static str),
    waits: &mut bool,
) -> bool {
    if *waits || !half.wants_read() {
        return false;
    }
    let Poll::Ready(r) = src.poll_read_ready(cx) else {
        *waits = true;
        return false;
    };
    if r.is_err() {
        half.src_done = true;
    }
    read_and_forward(src, dst, half, died_code);
    true
}

/// If `half` has a backlog and `dst` is writable: flush it, then pass a half-close on.
#[inline]
fn flush_when_ready(cx: &mut Context<'_>, dst: &TcpStream, half: &mut Half) -> bool {
    if !half.has_backlog() {
        return false;
    }
    let Poll::Ready(r) = dst.poll_write_ready(cx) else {
        return false;
    };
    if r.is_err() {
        half.dst_dead = true;
    }
    half.flush(dst);
    half.shut_if_done(dst);
    true
}

/// Any byte streams (TLS on either side).
struct Io<C, U> {
    client: C,
    upstream: U,
}

impl<C, U> Transport for Io<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_step(&mut self, cx: &mut Context<'_>, up: &mut Half, down: &mut Half) -> Poll<()> {
        // As for plain TCP: pump until a pass moves nothing, so every waker is registered.
        // Bounded by tokio's cooperative budget, which the sockets under the TLS streams use.
        let mut moved = false;
        while !relay_done(up, down) {
            let a = pump(cx, &mut self.client, &mut self.upstream, up, CLIENT_DIED);
            let b = pump(
                cx,
                &mut self.upstream,
                &mut self.client,
                down,
                UPSTREAM_DIED,
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
}

/// Relays two upgraded connections until both sides have closed (or the linger time after
/// the first close ran out): the plain-TCP fast path when neither side is TLS, moved to a
/// relay thread of `offload` once busy. `client_early` / `upstream_early` are bytes each
/// side sent right behind its handshake.
#[allow(clippy::too_many_arguments)]
pub async fn relay_streams(
    client: Stream,
    client_early: Bytes,
    upstream: Stream,
    upstream_early: Bytes,
    config: RelayConfig,
    mut drain: DrainSignal,
    metrics: &RouteMetrics,
    offload: Option<&Offload>,
) -> RelayStats {
    let mut state = RelayState::new(client_early, upstream_early, &drain);
    // Each arm awaits `run` directly: one fewer future layer keeps the per-connection
    // task small.
    let end = match (client, upstream) {
        (Stream::Tcp(client), Stream::Tcp(upstream)) => {
            let mut tcp = Tcp { client, upstream };
            let mut offload = offload;
            loop {
                let (pool, thread) =
                    match run(&mut tcp, &mut state, config, &mut drain, metrics, offload).await {
                        Exit::Ended(end) => break end,
                        Exit::Move(pool, thread) => (pool, thread),
                    };
                let Tcp { client, upstream } = tcp;
                let RelayState { up, down, .. } = state;
                // Boxed: the moved relay's future would otherwise widen every relay's task.
                let moved = Box::pin(thread.relay(
                    pool,
                    client,
                    upstream,
                    up,
                    down,
                    config,
                    state.last_activity.into_std(),
                    &mut drain,
                    metrics,
                ))
                .await;
                match moved {
                    Ok(finished) => {
                        state.up = finished.up;
                        state.down = finished.down;
                        break finished.end;
                    }
                    Err(back) => {
                        let back = *back;
                        tracing::warn!(error = %back.error, "cannot move a busy relay to a relay thread; it stays on the async runtime");
                        tcp = Tcp {
                            client: back.client,
                            upstream: back.upstream,
                        };
                        state.up = back.up;
                        state.down = back.down;
                        offload = None;
                    }
                }
            }
        }
        (client, upstream) => {
            let mut transport = Io { client, upstream };
            match run(
                &mut transport,
                &mut state,
                config,
                &mut drain,
                metrics,
                None,
            )
            .await
            {
                Exit::Ended(end) => end,
                Exit::Move(..) => unreachable!("run was given no relay threads"),
            }
        }
    };
    state.finish(end, metrics)
}

/// A relay's state on its way, which moves with it to a relay thread.
struct RelayState {
    /// client → upstream (masked frames).
    up: Half,
    /// upstream → client.
    down: Half,
    draining: bool,
    last_activity: Instant,
}

impl RelayState {
    fn new(client_early: Bytes, upstream_early: Bytes, drain: &DrainSignal) -> Self {
        let mut up = Half::new(true);
        let mut down = Half::new(false);
        for (half, early) in [(&mut up, &client_early), (&mut down, &upstream_early)] {
            if !early.is_empty() {
                let fwd = half.accept(early);
                half.queue(fwd);
            }
        }
        // hyper's read buffer may sit behind these bytes; a long-lived connection must not
        // keep it (they go out of scope here).
        let draining = drain.is_draining();
        if draining {
            down.close_going_away("gateway shutting down");
        }
        RelayState {
            up,
            down,
            draining,
            last_activity: Instant::now(),
        }
    }

    fn finish(mut self, end: RelayEnd, metrics: &RouteMetrics) -> RelayStats {
        let (up, down) = (&mut self.up, &mut self.down);
        up.flush_metrics(&metrics.bytes_up, &metrics.messages_up);
        down.flush_metrics(&metrics.bytes_down, &metrics.messages_down);
        RelayStats {
            bytes_up: up.bytes,
            bytes_down: down.bytes,
            messages_up: up.tracker.messages(),
            messages_down: down.tracker.messages(),
            injected_to_client: down.injected,
            injected_to_upstream: up.injected,
            end,
        }
    }
}

/// How a relay left the async runtime's loop.
enum Exit<'o> {
    Ended(RelayEnd),
    /// Busy enough to move to this relay thread of these.
    Move(&'o Offload, &'o offload::RelayThread),
}

async fn run<'o, T: Transport>(
    transport: &mut T,
    state: &mut RelayState,
    config: RelayConfig,
    drain: &mut DrainSignal,
    metrics: &RouteMetrics,
    mut offload: Option<&'o Offload>,
) -> Exit<'o> {
    let idle = config.idle;
    // Timers exist only when needed (a route with `timeouts.idle`, a connection closing),
    // so an idle relayed connection without them owns none.
    let mut idle_timer: Option<Pin<Box<Sleep>>> =
        idle.map(|d| Box::pin(tokio::time::sleep_until(state.last_activity + d)));
    let mut linger_timer: Option<Pin<Box<Sleep>>> = None;

    loop {
        if relay_done(&state.up, &state.down) {
            return Exit::Ended(RelayEnd::Closed);
        }
        if linger_timer.is_none() && winding_down(&state.up, &state.down) {
            linger_timer = Some(Box::pin(tokio::time::sleep(config.linger)));
        }
        let mut move_due = false;
        // Injected Close frames land in a backlog; the next step writes them.
        tokio::select! {
            biased;
            _ = poll_fn(|cx| drain.poll_drain(cx)), if !state.draining => {
                state.draining = true;
                state.down.close_going_away("gateway shutting down");
            }
            _ = poll_fn(|cx| {
                let RelayState { up, down, last_activity, draining } = &mut *state;
                let before = (up.bytes, down.bytes);
                if transport.poll_step(cx, up, down).is_pending() {
                    return Poll::Pending;
                }
                if idle.is_some() && (up.bytes, down.bytes) != before {
                    *last_activity = Instant::now();
                }
                up.flush_metrics_if_due(&metrics.bytes_up, &metrics.messages_up);
                down.flush_metrics_if_due(&metrics.bytes_down, &metrics.messages_down);
                // A step stops only once nothing can move, with a waker registered for
                // everything it waits on. Unless the relay is winding down (what the loop
                // around this reacts to), sleep right here: going round the loop would poll
                // every socket again only to learn that (bench/instructions.sh: 1,491 -> 1,256
                // instructions per 64 B message).
                if relay_done(up, down) || winding_down(up, down) {
                    return Poll::Ready(());
                }
                // A draining relay stays put: its Close frames are already on their way.
                if !*draining
                    && offload.is_some_and(|o| o.due(up.tracker.messages() + down.tracker.messages()))
                {
                    move_due = true;
                    return Poll::Ready(());
                }
                Poll::Pending
            }) => {}
            _ = fire(&mut idle_timer) => {
                let idle = idle.unwrap_or_default();
                if state.last_activity + idle <= Instant::now() {
                    tracing::info!(idle_ms = idle.as_millis() as u64, "closing idle WebSocket connection (route timeouts.idle)");
                    state.up.close_going_away("idle timeout");
                    state.down.close_going_away("idle timeout");
                    idle_timer = None;
                } else if let Some(t) = idle_timer.as_mut() {
                    t.as_mut().reset(state.last_activity + idle);
                }
            }
            _ = fire(&mut linger_timer) => return Exit::Ended(RelayEnd::LingerExpired),
        }
        if move_due {
            match offload.and_then(|pool| Some((pool, pool.thread()?))) {
                Some((pool, thread)) => return Exit::Move(pool, thread),
                None => offload = None,
            }
        }
    }
}

/// A side has closed (or both got our Close): from here the other side has the linger time
/// to follow.
fn winding_down(up: &Half, down: &Half) -> bool {
    up.src_done || down.src_done || (up.discard && down.discard)
}

/// Completes when the timer is set and due; never when it is not set.
async fn fire(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A fresh masking key for frames we send to a backend. RFC 6455 wants keys a third
/// party cannot predict; a per-thread xorshift seeded from the process's random hasher
/// keys is enough for the few Close frames a proxy writes.
fn mask_key() -> [u8; 4] {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9E37_79B9_7F4A_7C15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x as u32).to_le_bytes()
    })
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
        assert!(size <= 1400, "relay future grew to {size} bytes");
    }
}
