//! The relay after the 101: raw bytes both ways, a frame-header tracker per direction,
//! and our own Close frames injected at frame boundaries when a side dies, the gateway
//! drains, or a route's idle timeout fires.
//!
//! Memory: an idle relayed connection owns no read buffer. The relay waits for
//! readiness, reads into a per-worker-thread buffer and writes straight on without an
//! await in between; only bytes the destination cannot take yet are copied into a
//! per-direction backlog, which is freed once flushed.

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::time::Duration;

use bytes::Bytes;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::drain::DrainSignal;
use super::frame::{close_frame, FrameTracker};
use crate::telemetry::RouteMetrics;

const READ_BUF: usize = 64 * 1024;
/// Flush local byte counts to the shared metrics at least this often (in bytes), so a
/// long-lived connection shows up before it ends without touching shared counters per read.
const METRICS_FLUSH_BYTES: u64 = 256 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_BUF].into_boxed_slice());
}

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
        (self.tracker.close_seen() || self.injected.is_some()) && !self.has_backlog()
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
            self.tracker.advance_all(chunk);
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
    fn forward(&mut self, dst: &TcpStream, bytes: &[u8]) {
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
    fn flush(&mut self, dst: &TcpStream) {
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
    fn shut_if_done(&mut self, dst: &TcpStream) {
        if self.src_done && !self.has_backlog() && !self.dst_shut && !self.dst_dead {
            let _ = SockRef::from(dst).shutdown(Shutdown::Write);
            self.dst_shut = true;
        }
    }

    fn flush_metrics(
        &mut self,
        bytes: &prometheus_client::metrics::counter::Counter,
        messages: &prometheus_client::metrics::counter::Counter,
    ) {
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
        match src.try_read(&mut buf[..]) {
            Ok(0) => half.src_done = true,
            Ok(n) => {
                let fwd = half.accept(&buf[..n]);
                half.forward(dst, fwd);
                half.inject_if_ready();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => half.src_done = true,
        }
    });
    if half.src_done && !half.tracker.close_seen() && half.injected.is_none() {
        // The source vanished without a Close: tell the other side properly.
        half.close_wanted = Some(died_code);
        half.inject_if_ready();
    }
    half.flush(dst);
    half.shut_if_done(dst);
}

/// Relays until both sides have closed (or the linger time after the first close ran out).
/// `client_early` / `upstream_early` are bytes each side sent right behind its handshake.
pub async fn relay(
    client: TcpStream,
    client_early: Bytes,
    upstream: TcpStream,
    upstream_early: Bytes,
    config: RelayConfig,
    mut drain: DrainSignal,
    metrics: &RouteMetrics,
) -> RelayStats {
    // `up` carries client → upstream (masked frames), `down` upstream → client.
    let mut up = Half::new(true);
    let mut down = Half::new(false);
    let client_died = (close_code::GOING_AWAY, "client went away");
    let upstream_died = (close_code::INTERNAL_ERROR, "backend connection lost");

    for (half, early, dst) in [
        (&mut up, &client_early, &upstream),
        (&mut down, &upstream_early, &client),
    ] {
        if !early.is_empty() {
            let fwd = half.accept(early);
            half.forward(dst, fwd);
        }
    }

    let mut draining = drain.is_draining();
    if draining {
        down.close_wanted = Some((close_code::GOING_AWAY, "gateway shutting down"));
        down.inject_if_ready();
    }
    let idle = config.idle;
    let mut last_activity = Instant::now();
    let mut idle_deadline = idle.map(|d| last_activity + d);
    let mut linger_deadline: Option<Instant> = None;
    let far_future = Instant::now() + Duration::from_secs(86400 * 365);

    let end = loop {
        if up.finished() && down.finished() {
            break RelayEnd::Closed;
        }
        if up.closed_and_flushed() && down.closed_and_flushed() {
            // Both Close frames went through: the close handshake is complete, and as the
            // server side towards the client we close the TCP connection now (RFC 6455
            // §7.1.1) instead of waiting for the peers' FINs.
            break RelayEnd::Closed;
        }
        if linger_deadline.is_none()
            && (up.src_done || down.src_done || (up.discard && down.discard))
        {
            linger_deadline = Some(Instant::now() + config.linger);
        }
        let (up_bytes, down_bytes) = (up.bytes, down.bytes);
        tokio::select! {
            biased;
            _ = drain.wait(), if !draining => {
                draining = true;
                down.close_wanted = Some((close_code::GOING_AWAY, "gateway shutting down"));
                down.inject_if_ready();
                down.flush(&client);
            }
            r = client.readable(), if up.wants_read() => {
                if r.is_err() { up.src_done = true; }
                read_and_forward(&client, &upstream, &mut up, client_died);
            }
            r = upstream.readable(), if down.wants_read() => {
                if r.is_err() { down.src_done = true; }
                read_and_forward(&upstream, &client, &mut down, upstream_died);
            }
            r = upstream.writable(), if up.has_backlog() => {
                if r.is_err() { up.dst_dead = true; }
                up.flush(&upstream);
                up.shut_if_done(&upstream);
            }
            r = client.writable(), if down.has_backlog() => {
                if r.is_err() { down.dst_dead = true; }
                down.flush(&client);
                down.shut_if_done(&client);
            }
            _ = tokio::time::sleep_until(idle_deadline.unwrap_or(far_future)), if idle_deadline.is_some() => {
                let idle = idle.unwrap_or_default();
                if last_activity + idle <= Instant::now() {
                    tracing::info!(idle_ms = idle.as_millis() as u64, "closing idle WebSocket connection (route timeouts.idle)");
                    for (half, dst) in [(&mut up, &upstream), (&mut down, &client)] {
                        half.close_wanted = Some((close_code::GOING_AWAY, "idle timeout"));
                        half.inject_if_ready();
                        half.flush(dst);
                    }
                    idle_deadline = None;
                } else {
                    idle_deadline = Some(last_activity + idle);
                }
            }
            _ = tokio::time::sleep_until(linger_deadline.unwrap_or(far_future)), if linger_deadline.is_some() => {
                break RelayEnd::LingerExpired;
            }
        }
        if idle.is_some() && (up.bytes != up_bytes || down.bytes != down_bytes) {
            last_activity = Instant::now();
        }
        if up.bytes - up.bytes_flushed > METRICS_FLUSH_BYTES {
            up.flush_metrics(&metrics.bytes_up, &metrics.messages_up);
        }
        if down.bytes - down.bytes_flushed > METRICS_FLUSH_BYTES {
            down.flush_metrics(&metrics.bytes_down, &metrics.messages_down);
        }
    };
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
