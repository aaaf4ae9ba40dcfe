//! A relay thread's loop: the relays it owns, their readiness, timers and turns.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use tokio::sync::oneshot;

use super::super::{
    add_counts, log_timeout, pass_on_read, write_owed, Counts, Relay, Side, Sink, Timeout, READ_BUF,
};
use super::endpoint::Endpoint;
use super::{Command, WAKE};
use crate::proxy::drain::CloseReason;
use crate::telemetry::RouteMetrics;

/// Readiness the thread knows of, from edge-triggered events; cleared when a call finds
/// the socket drained (a short read) or full (a write that left a backlog).
#[derive(Clone, Copy)]
pub(super) struct Ready(u8);

impl Ready {
    const CLIENT_READ: u8 = 1;
    const CLIENT_WRITE: u8 = 2;
    const UPSTREAM_READ: u8 = 4;
    const UPSTREAM_WRITE: u8 = 8;
    /// A fresh registration: anything may have arrived while the sockets moved.
    pub(super) const ALL: Ready = Ready(15);

    /// The (read, write) bits of `side`.
    fn bits(side: Side) -> (u8, u8) {
        match side {
            Side::Client => (Self::CLIENT_READ, Self::CLIENT_WRITE),
            Side::Backend => (Self::UPSTREAM_READ, Self::UPSTREAM_WRITE),
        }
    }

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// The route's counters, flushed from the thread as bytes pass.
pub(super) struct Counters(RouteMetrics);

impl Counters {
    pub(super) fn of(m: &RouteMetrics) -> Self {
        Counters(m.clone())
    }

    fn add(&self, counts: Counts) {
        add_counts(counts, &self.0);
    }
}

/// Passes one relay may make per turn (each reads or writes up to 64 KiB per direction).
pub(super) const STEP_BUDGET: usize = 32;

/// What one turn of a relay did.
#[derive(Default)]
struct Step {
    moved: bool,
    /// The budget ran out with bytes still moving: the relay needs another turn.
    unfinished: bool,
}

/// One relay on a relay thread.
pub(super) struct Conn {
    pub(super) key: u64,
    pub(super) client: Endpoint,
    pub(super) upstream: Endpoint,
    pub(super) relay: Relay,
    pub(super) ready: Ready,
    /// The deadline this relay has in the thread's timer heap, if any.
    pub(super) armed: Option<Instant>,
    pub(super) counters: Counters,
    pub(super) done: Option<oneshot::Sender<Relay>>,
    /// In `Loop::again`, waiting for another turn.
    pub(super) again: bool,
    /// Either side is TLS (so a side may owe a flush or rustls' own records; see `owed`).
    pub(super) tls: bool,
    /// The connection's span, entered for what the thread logs about it.
    pub(super) span: tracing::Span,
}

impl Conn {
    /// Moves bytes until nothing can move, or until it has made `budget` passes: a relay
    /// whose sender keeps its socket full must not keep the thread from the others.
    fn step(&mut self, buf: &mut [u8], budget: usize) -> Step {
        let mut step = Step::default();
        for _ in 0..budget {
            if self.relay.is_done() {
                return step;
            }
            let moved = self.read_when_ready(Side::Client, buf)
                | self.read_when_ready(Side::Backend, buf)
                | self.flush_when_ready(Side::Backend)
                | self.flush_when_ready(Side::Client);
            if !moved {
                return step;
            }
            step.moved = true;
        }
        step.unfinished = true;
        step
    }

    /// One read from `from` if it is readable and the machine wants it, passed on to the
    /// other side at once. The check is inlined into `step`, the read is not: most steps
    /// find one side not readable, and a call that returns at once still paid for the
    /// read's stack frame (callgrind: ~30 instructions per side per step).
    #[inline(always)]
    fn read_when_ready(&mut self, from: Side, buf: &mut [u8]) -> bool {
        let (readable, _) = Ready::bits(from);
        if !self.ready.has(readable) || !self.relay.wants_read(from) {
            return false;
        }
        self.read_and_pass_on(from, buf);
        true
    }

    #[inline(never)]
    fn read_and_pass_on(&mut self, from: Side, buf: &mut [u8]) {
        let to = from.other();
        let (readable, _) = Ready::bits(from);
        let (_, writable) = Ready::bits(to);
        let (src, dst) = match from {
            Side::Client => (&mut self.client, &mut self.upstream),
            Side::Backend => (&mut self.upstream, &mut self.client),
        };
        let relay = &mut self.relay;
        let more = src.read_with(buf, |read| pass_on_read(relay, from, read, dst));
        self.ready.set(readable, more);
        if self.owed(to) {
            self.ready.set(writable, false);
        }
    }

    /// Whether `to` waits for writability: bytes in the machine's backlog; for a TLS side
    /// also a flush, a half-close, or records rustls queued itself. (A plain socket takes a
    /// flush or a half-close at once, so its check stays the one load of the hot path.)
    #[inline(always)]
    fn owed(&self, to: Side) -> bool {
        self.relay.has_backlog(to) || (self.tls && self.owed_tls(to))
    }

    #[inline(never)]
    fn owed_tls(&self, to: Side) -> bool {
        let dst = match to {
            Side::Client => &self.client,
            Side::Backend => &self.upstream,
        };
        dst.is_tls() && (self.relay.owes_output(to) || dst.tls_pending())
    }

    /// Gives `to` what it is owed (the backlog, a flush of TLS records, a half-close) if it
    /// is writable; also records rustls queued on its own (a KeyUpdate's answer). The
    /// checks are inlined into `step` (most passes find nothing owed), the work is not.
    #[inline(always)]
    fn flush_when_ready(&mut self, to: Side) -> bool {
        let (_, writable) = Ready::bits(to);
        if !self.owed(to) || !self.ready.has(writable) {
            return false;
        }
        self.flush(to);
        true
    }

    #[inline(never)]
    fn flush(&mut self, to: Side) {
        let (_, writable) = Ready::bits(to);
        let dst = match to {
            Side::Client => &mut self.client,
            Side::Backend => &mut self.upstream,
        };
        if self.relay.owes_output(to) {
            write_owed(&mut self.relay, to, dst);
        } else if dst.try_flush().is_err() {
            self.relay.handle_write_failed(to);
        }
        let still = self.owed(to);
        self.ready.set(writable, !still);
    }

    /// The gateway's close for this relay (`Command::CloseAt`): wsgate's own drain at
    /// once when due, anything else through the machine's deadline.
    fn close_at(&mut self, at: Instant, reason: CloseReason, now: Instant) {
        if reason == CloseReason::Shutdown && at <= now {
            self.relay.handle_drain();
            // The Close frame sits in the backlog; let the next step try to write it.
            self.ready.set(Ready::CLIENT_WRITE, true);
        } else {
            self.relay.handle_close_at(at, reason);
        }
    }
}

/// Relay keys are sequential: a multiply spreads them over the map's buckets without
/// SipHash's cost on every event.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The current time, read at most once per wake-up and only when a relay needs it.
struct Clock(Option<Instant>);

impl Clock {
    fn now(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// The sweep of waiting counts (see [`Relay::counts_swept`]): a ticker thread sets `due`
/// and wakes the loop every [`SWEEP_EVERY`]; the loop sets `stopped` when it ends, and the
/// ticker then ends too.
#[derive(Default)]
pub(super) struct Tick {
    pub(super) due: AtomicBool,
    pub(super) stopped: AtomicBool,
}

/// How often a relay thread takes the counts that passed their deadline: they show up at
/// most this much after [`COUNTS_DUE_AFTER`](super::super::machine::COUNTS_DUE_AFTER).
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Loop {
    poll: Poll,
    tick: Arc<Tick>,
    inbox: mpsc::Receiver<Command>,
    conns: HashMap<u64, Box<Conn>, BuildHasherDefault<KeyHasher>>,
    /// Each relay's next deadline (entries whose relay since armed another are stale).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Relays that used up their turn with bytes still moving; served after the events of
    /// the next wake-up, which then does not wait.
    again: Vec<u64>,
    step_budget: usize,
    /// Every sender is gone: exit once the last relay ends.
    orphaned: bool,
    buf: Box<[u8]>,
}

impl Loop {
    pub(super) fn new(
        poll: Poll,
        inbox: mpsc::Receiver<Command>,
        step_budget: usize,
        tick: Arc<Tick>,
    ) -> Self {
        Loop {
            poll,
            tick,
            inbox,
            conns: HashMap::default(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            step_budget,
            orphaned: false,
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
        }
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !(self.orphaned && self.conns.is_empty()) {
            let timeout = if self.again.is_empty() {
                self.timers
                    .peek()
                    .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "relay thread cannot wait for its sockets");
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            let mut clock = Clock(None);
            for event in events.iter() {
                if event.token() == WAKE {
                    if self.tick.due.swap(false, Ordering::AcqRel) {
                        self.sweep_counts(&mut clock);
                    }
                    self.take_commands(&mut clock);
                    continue;
                }
                let key = (event.token().0 >> 1) as u64;
                let Some(conn) = self.conns.get_mut(&key) else {
                    // Registered by the task before the thread adopted it; adoption
                    // assumes every readiness, so this event is not lost.
                    continue;
                };
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                let writable = event.is_writable() || event.is_write_closed() || event.is_error();
                let (r, w) = if event.token().0 & 1 == Side::Client as usize {
                    (Ready::CLIENT_READ, Ready::CLIENT_WRITE)
                } else {
                    (Ready::UPSTREAM_READ, Ready::UPSTREAM_WRITE)
                };
                if readable {
                    conn.ready.set(r, true);
                }
                if writable {
                    conn.ready.set(w, true);
                }
                self.settle(key, &mut clock);
            }
            if !self.timers.is_empty() {
                self.fire_timers(&mut clock);
            }
            for key in std::mem::take(&mut self.again) {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.again = false;
                    self.settle(key, &mut clock);
                }
            }
        }
    }

    /// Flushes the counts that passed their deadline: once per [`SWEEP_EVERY`], one clock
    /// read and a look at every relay, instead of a timer per busy relay.
    fn sweep_counts(&mut self, clock: &mut Clock) {
        let now = clock.now();
        for conn in self.conns.values_mut() {
            if conn.relay.counts_due_by(now) {
                conn.counters.add(conn.relay.take_counts());
            }
        }
    }

    fn take_commands(&mut self, clock: &mut Clock) {
        loop {
            match self.inbox.try_recv() {
                Ok(Command::Adopt(mut conn)) => {
                    conn.relay.counts_swept();
                    let key = conn.key;
                    self.conns.insert(key, conn);
                    self.settle(key, clock);
                }
                Ok(Command::CloseAt(key, at, reason)) => {
                    let now = clock.now();
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.close_at(at, reason, now);
                        self.settle(key, clock);
                    }
                }
                Ok(Command::Abort(key)) => {
                    // Dropping the sockets closes them and takes them out of the poller.
                    self.conns.remove(&key);
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.orphaned = true;
                    return;
                }
            }
        }
    }

    /// Steps one relay and deals with what the step changed: the end, another turn,
    /// activity, metrics, the relay's deadline.
    fn settle(&mut self, key: u64, clock: &mut Clock) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let step = conn.step(&mut self.buf, self.step_budget);
        if conn.relay.is_done() {
            self.end(key);
            return;
        }
        if step.unfinished && !conn.again {
            conn.again = true;
            self.again.push(key);
        }
        if step.moved {
            if conn.relay.tracks_activity() {
                conn.relay.note_activity(clock.now());
            }
            if conn.relay.counts_due() {
                conn.counters.add(conn.relay.take_counts());
            }
        }
        // A deadline that moved later (an idle one, after activity) stays armed at the
        // earlier time; when that fires, the relay is armed again. Only a relay with an idle
        // limit, a token expiry, or winding down has one.
        if !conn.relay.wants_timer() {
            return;
        }
        if let Some(at) = conn.relay.poll_deadline(|| clock.now()) {
            if conn.armed.is_none_or(|armed| at < armed) {
                conn.armed = Some(at);
                self.timers.push(Reverse((at, key)));
            }
        }
    }

    fn end(&mut self, key: u64) {
        if let Some(conn) = self.conns.remove(&key) {
            let Conn {
                mut relay,
                done,
                counters,
                mut client,
                mut upstream,
                ..
            } = *conn;
            client.finish();
            upstream.finish();
            counters.add(relay.take_counts());
            if let Some(done) = done {
                let _ = done.send(relay);
            }
        }
    }

    fn fire_timers(&mut self, clock: &mut Clock) {
        let now = clock.now();
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if conn.armed != Some(at) {
                continue;
            }
            conn.armed = None;
            match conn.relay.handle_timeout(now) {
                Timeout::LingerExpired => {
                    self.end(key);
                    continue;
                }
                timeout @ (Timeout::Idle(_)
                | Timeout::TokenExpired
                | Timeout::Scheduled(_)
                | Timeout::KeepalivePing
                | Timeout::KeepaliveUnanswered(_)) => {
                    let _entered = conn.span.enter();
                    log_timeout(&timeout);
                    // The Close (or Ping) frames sit in the backlogs; let the step try to
                    // write them.
                    conn.ready
                        .set(Ready::CLIENT_WRITE | Ready::UPSTREAM_WRITE, true);
                }
                Timeout::Nothing => {}
            }
            // Counts past their deadline (COUNTS_DUE_AFTER) go out even with no byte moving.
            if conn.relay.counts_due() {
                conn.counters.add(conn.relay.take_counts());
            }
            self.settle(key, clock);
        }
    }
}
