//! A relay thread's loop: the relays it owns, their readiness, timers and turns.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioTcp;
use mio::{Events, Poll};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use super::super::{
    relay_done, winding_down, Half, RelayEnd, CLIENT_DIED, READ_BUF, UPSTREAM_DIED,
};
use super::{Command, Finished, Side, WAKE};
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
pub(super) struct Counters {
    bytes_up: Counter,
    messages_up: Counter,
    bytes_down: Counter,
    messages_down: Counter,
}

impl Counters {
    pub(super) fn of(m: &RouteMetrics) -> Self {
        Counters {
            bytes_up: m.bytes_up.clone(),
            messages_up: m.messages_up.clone(),
            bytes_down: m.bytes_down.clone(),
            messages_down: m.messages_down.clone(),
        }
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
    pub(super) client: MioTcp,
    pub(super) upstream: MioTcp,
    /// client → upstream, masked frames.
    pub(super) up: Half,
    /// upstream → client.
    pub(super) down: Half,
    pub(super) ready: Ready,
    pub(super) idle: Option<Duration>,
    pub(super) last_activity: Instant,
    pub(super) linger: Duration,
    pub(super) linger_at: Option<Instant>,
    pub(super) counters: Counters,
    pub(super) done: Option<oneshot::Sender<Finished>>,
    /// In `Loop::again`, waiting for another turn.
    pub(super) again: bool,
}

impl Conn {
    /// Moves bytes until nothing can move, or until it has made `budget` passes: a relay
    /// whose sender keeps its socket full must not keep the thread from the others.
    fn step(&mut self, buf: &mut [u8], budget: usize) -> Step {
        let mut step = Step::default();
        for _ in 0..budget {
            if relay_done(&self.up, &self.down) {
                return step;
            }
            let mut moved = false;
            if self.ready.has(Ready::CLIENT_READ) && self.up.wants_read() {
                let more =
                    read_and_forward(&self.client, &self.upstream, &mut self.up, CLIENT_DIED, buf);
                self.ready.set(Ready::CLIENT_READ, more);
                if self.up.has_backlog() {
                    self.ready.set(Ready::UPSTREAM_WRITE, false);
                }
                moved = true;
            }
            if self.ready.has(Ready::UPSTREAM_READ) && self.down.wants_read() {
                let more = read_and_forward(
                    &self.upstream,
                    &self.client,
                    &mut self.down,
                    UPSTREAM_DIED,
                    buf,
                );
                self.ready.set(Ready::UPSTREAM_READ, more);
                if self.down.has_backlog() {
                    self.ready.set(Ready::CLIENT_WRITE, false);
                }
                moved = true;
            }
            if self.up.has_backlog() && self.ready.has(Ready::UPSTREAM_WRITE) {
                self.up.flush(&self.upstream);
                self.up.shut_if_done(&self.upstream);
                self.ready
                    .set(Ready::UPSTREAM_WRITE, !self.up.has_backlog());
                moved = true;
            }
            if self.down.has_backlog() && self.ready.has(Ready::CLIENT_WRITE) {
                self.down.flush(&self.client);
                self.down.shut_if_done(&self.client);
                self.ready
                    .set(Ready::CLIENT_WRITE, !self.down.has_backlog());
                moved = true;
            }
            if !moved {
                return step;
            }
            step.moved = true;
        }
        step.unfinished = true;
        step
    }

    fn flush_metrics_if_due(&mut self) {
        let c = &self.counters;
        self.up.flush_metrics_if_due(&c.bytes_up, &c.messages_up);
        self.down
            .flush_metrics_if_due(&c.bytes_down, &c.messages_down);
    }

    fn want_close(&mut self, towards_client_only: bool, reason: &'static str) {
        self.down.close_going_away(reason);
        if !towards_client_only {
            self.up.close_going_away(reason);
        }
        // The Close frames sit in the backlogs; let the next step try to write them.
        self.ready
            .set(Ready::CLIENT_WRITE | Ready::UPSTREAM_WRITE, true);
    }
}

/// One read from `src` into the thread's buffer, passed on to `dst` at once. Returns
/// whether `src` may hold more (the read filled the buffer, or was interrupted).
fn read_and_forward(
    src: &MioTcp,
    dst: &MioTcp,
    half: &mut Half,
    died_code: (u16, &'static str),
    buf: &mut [u8],
) -> bool {
    let read = (&*src).read(buf);
    let more = match &read {
        Ok(n) => *n == buf.len(),
        Err(e) => e.kind() == io::ErrorKind::Interrupted,
    };
    half.pass_on_read(read.map(|n| &buf[..n]), dst, died_code);
    more
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Idle,
    Linger,
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

pub(super) struct Loop {
    poll: Poll,
    inbox: mpsc::Receiver<Command>,
    conns: HashMap<u64, Box<Conn>, BuildHasherDefault<KeyHasher>>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKind)>>,
    /// Relays that used up their turn with bytes still moving; served after the events of
    /// the next wake-up, which then does not wait.
    again: Vec<u64>,
    step_budget: usize,
    draining: bool,
    /// Every sender is gone: exit once the last relay ends.
    orphaned: bool,
    buf: Box<[u8]>,
}

impl Loop {
    pub(super) fn new(poll: Poll, inbox: mpsc::Receiver<Command>, step_budget: usize) -> Self {
        Loop {
            poll,
            inbox,
            conns: HashMap::default(),
            timers: BinaryHeap::new(),
            again: Vec::new(),
            step_budget,
            draining: false,
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
                    .map(|Reverse((at, _, _))| at.saturating_duration_since(Instant::now()))
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

    fn take_commands(&mut self, clock: &mut Clock) {
        loop {
            match self.inbox.try_recv() {
                Ok(Command::Adopt(mut conn)) => {
                    let key = conn.key;
                    if let Some(idle) = conn.idle {
                        self.timers.push(Reverse((
                            conn.last_activity + idle,
                            key,
                            TimerKind::Idle,
                        )));
                    }
                    if self.draining {
                        conn.want_close(true, "gateway shutting down");
                    }
                    self.conns.insert(key, conn);
                    self.settle(key, clock);
                }
                Ok(Command::Drain) => {
                    if self.draining {
                        continue;
                    }
                    self.draining = true;
                    let keys: Vec<u64> = self.conns.keys().copied().collect();
                    for key in keys {
                        if let Some(conn) = self.conns.get_mut(&key) {
                            conn.want_close(true, "gateway shutting down");
                        }
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

    /// Steps one relay and deals with what the step changed: the end, the linger timer,
    /// idle bookkeeping, metrics.
    fn settle(&mut self, key: u64, clock: &mut Clock) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let step = conn.step(&mut self.buf, self.step_budget);
        if relay_done(&conn.up, &conn.down) {
            self.end(key, RelayEnd::Closed);
            return;
        }
        if step.unfinished && !conn.again {
            conn.again = true;
            self.again.push(key);
        }
        if step.moved {
            if conn.idle.is_some() {
                conn.last_activity = clock.now();
            }
            conn.flush_metrics_if_due();
        }
        if conn.linger_at.is_none() && winding_down(&conn.up, &conn.down) {
            let at = clock.now() + conn.linger;
            conn.linger_at = Some(at);
            self.timers.push(Reverse((at, key, TimerKind::Linger)));
        }
    }

    fn end(&mut self, key: u64, end: RelayEnd) {
        if let Some(conn) = self.conns.remove(&key) {
            let Conn { up, down, done, .. } = *conn;
            if let Some(done) = done {
                let _ = done.send(Finished { up, down, end });
            }
        }
    }

    fn fire_timers(&mut self, clock: &mut Clock) {
        let now = clock.now();
        while let Some(&Reverse((at, key, kind))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            match kind {
                TimerKind::Linger => {
                    if conn.linger_at.is_some_and(|l| l <= now) {
                        self.end(key, RelayEnd::LingerExpired);
                    }
                }
                TimerKind::Idle => {
                    let Some(idle) = conn.idle else { continue };
                    let due = conn.last_activity + idle;
                    if due <= now {
                        tracing::info!(
                            idle_ms = idle.as_millis() as u64,
                            "closing idle WebSocket connection (route timeouts.idle)"
                        );
                        conn.idle = None;
                        conn.want_close(false, "idle timeout");
                        self.settle(key, clock);
                    } else {
                        self.timers.push(Reverse((due, key, TimerKind::Idle)));
                    }
                }
            }
        }
    }
}
