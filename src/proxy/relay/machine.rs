//! The relay as a state machine: what happens between a client and a backend after the
//! 101, with no sockets and no async. Time comes in with the driver's events, except for a
//! route with `limits.messagesPerSecond`, whose reads consult the clock given in
//! [`RelayConfig::clock`] (a plain function, so tests give their own). The application (a driver) is responsible
//! for the I/O, and for an event loop with a timer: it hands in what happened — bytes read
//! from a side, a side's end, a write that failed, a timeout, the drain — and carries out
//! what the machine asks — write these bytes to a side, flush it, shut its write half, wake
//! up at this deadline — until the machine says it is done.
//!
//! Two drivers exist: the tokio relay (`relay.rs`, plain TCP and TLS) and the relay thread
//! (`offload/event_loop.rs`); a relay moves from the first to the second with this state.
//!
//! What the machine owns, per direction ([`Flow`]): the frame tracker with the protocol
//! rules (`frame.rs`), the backlog of bytes the destination has not taken yet (which also
//! carries our own Close frames, placed at a frame boundary), and the close handshake.
//! For the connection: the idle and linger deadlines, the drain, and how it ended.
//!
//! The forward path borrows: [`Relay::handle_read`] returns the part of the read that may
//! go on, as a view into the driver's buffer; the driver writes it and reports how much
//! went ([`Relay::handle_forwarded`]); only what the destination did not take is copied
//! into the backlog. No allocation per message, no lock.

use std::time::{Duration, Instant};

use crate::proxy::drain::CloseReason;
use crate::proxy::frame::{
    close_code, close_frame, Extensions, FrameRules, FrameTracker, MessageSizes, Violation,
};

mod keepalive;
pub use keepalive::Keepalive;

/// Flush byte and message counts to the shared metrics at least this often (in bytes), so
/// a long-lived connection shows up before it ends without touching shared counters per
/// read.
const COUNTS_DUE_BYTES: u64 = 256 * 1024;

/// Flush counts at most this long after the first byte they count, so a quiet long-lived
/// connection's last messages show up without waiting for 256 KiB more or its end. The
/// deadline exists only while counts are waiting: an idle connection whose counts went out
/// has no timer for it.
pub const COUNTS_DUE_AFTER: Duration = Duration::from_secs(10);

/// When waiting counts are due, to the second: whole seconds since [`coarse_epoch`],
/// counted from the first read's second (so due 9 to 10 s after it). 4 bytes where an
/// `Instant` takes 16: every relay carries one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CountsDue(u32);

impl CountsDue {
    fn after_read_at(now: Instant) -> CountsDue {
        let second = now.saturating_duration_since(coarse_epoch()).as_secs();
        CountsDue(u32::try_from(second + COUNTS_DUE_AFTER.as_secs()).unwrap_or(u32::MAX))
    }

    fn instant(self) -> Instant {
        coarse_epoch() + Duration::from_secs(u64::from(self.0))
    }
}

/// A fixed instant before any this process reads (an hour before the first use, where
/// the monotonic clock goes back that far), for [`CountsDue`].
fn coarse_epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

/// The two ends of a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client = 0,
    Backend = 1,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// A route's `limits.messagesPerSecond` and `messageBurst`: a token bucket per direction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MessageRate {
    pub per_second: u32,
    /// The bucket's size (`per_second` when the route gives none).
    pub burst: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// Close both sides (1001) after this long with no bytes either way. None = never.
    pub idle: Option<Duration>,
    /// How long to wait for the other side once the relay winds down (a side closed, a
    /// Close frame passed or was sent, a side broke the protocol).
    pub linger: Duration,
    /// What the backend's 101 negotiated (which RSV bits frames may carry).
    pub extensions: Extensions,
    /// `limits.maxMessageBytes`: a bigger message gets its sender Close 1009, the other
    /// side Close 1001.
    pub max_message_bytes: Option<u64>,
    /// `limits.messagesPerSecond`, per direction: beyond it the sender gets Close 1008,
    /// the other side Close 1001.
    pub message_rate: Option<MessageRate>,
    /// When the client's token expires (`closeOnTokenExpiry`): then the client gets Close
    /// 1008 and the backend Close 1001.
    pub close_at: Option<Instant>,
    /// The clock the message rate reads.
    pub clock: fn() -> Instant,
    /// The route's `keepalive`: wsgate pings a quiet side and treats one that does not
    /// answer as gone. None = never (quiet sockets stay open, unpinged).
    pub keepalive: Option<Keepalive>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            idle: None,
            linger: Duration::from_secs(10),
            extensions: Extensions::None,
            max_message_bytes: None,
            message_rate: None,
            close_at: None,
            clock: Instant::now,
            keepalive: None,
        }
    }
}

/// Why a relay ended, for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed (with or without a Close handshake).
    Closed,
    /// The relay wound down and a side did not follow within the linger time.
    LingerExpired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStats {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub messages_up: u64,
    pub messages_down: u64,
    /// A Close frame of ours went towards the client (drain, idle, backend died or broke
    /// the protocol, client broke the protocol).
    pub injected_to_client: Option<u16>,
    /// A Close frame of ours went towards the backend (client died, idle, a side broke the
    /// protocol).
    pub injected_to_upstream: Option<u16>,
    /// The side that broke the protocol, and how.
    pub violation: Option<(Side, Violation)>,
    pub end: RelayEnd,
    /// Keep-alive Pings of wsgate's own sent to the client and to the backend.
    pub pings_to_client: u32,
    pub pings_to_backend: u32,
    /// The side that did not answer a keep-alive Ping in time (treated as gone).
    pub unanswered: Option<Side>,
    /// Who started the end: the first Close seen and its sender, a side that ended without
    /// one, or a Close of wsgate's own (the access log's "who closed").
    pub closed_by: Option<ClosedBy>,
    /// The code of the Close the client sent (1005: none in it), if it sent one.
    pub client_close: Option<u16>,
    /// The code of the Close the backend sent, if it sent one.
    pub backend_close: Option<u16>,
}

/// Who started a relay's end (the first to close, whatever followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    /// `side` sent a Close frame with `code` (1005 when it carried none).
    Peer { side: Side, code: u16 },
    /// `side`'s connection ended (EOF or a read error) without a Close frame.
    Gone(Side),
    /// wsgate closed first, with its own Close (idle, drain, token expiry, a broken rule
    /// or a limit).
    Gateway(GatewayClose),
}

/// A Close frame of wsgate's own that started a relay's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayClose(Close);

impl GatewayClose {
    pub fn code(self) -> u16 {
        self.0.code_and_reason().0
    }

    pub fn reason(self) -> &'static str {
        self.0.code_and_reason().1
    }
}

/// Bytes of one read that go on to the other side now: header bytes held back from
/// earlier reads (rare; [`Relay::parts`] has them), then a prefix of the read. Hand it
/// back with [`Relay::handle_forwarded`] once written.
#[must_use = "hand the forward back to Relay::handle_forwarded"]
pub struct Forward<'a> {
    to: Side,
    held_len: u8,
    body: &'a [u8],
}

impl<'a> Forward<'a> {
    /// Where these bytes go.
    pub fn to(&self) -> Side {
        self.to
    }

    pub fn len(&self) -> usize {
        usize::from(self.held_len) + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a side needs next from the driver (besides reads).
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// Write these bytes (the backlog), then report with [`Relay::handle_sent`].
    Write(&'a [u8]),
    /// Flush a buffering stream (TLS records), then [`Relay::handle_flushed`].
    Flush,
    /// Shut the write half (FIN; close_notify first for TLS), then
    /// [`Relay::handle_shutdown`].
    Shutdown,
}

/// What a timeout did.
#[derive(Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing was due.
    Nothing,
    /// The connection was quiet for this long: both sides get Close 1001.
    Idle(Duration),
    /// The client's token expired: it gets Close 1008, the backend Close 1001.
    TokenExpired,
    /// The linger time ran out: the relay is done.
    LingerExpired,
    /// A close the gateway scheduled ([`Relay::handle_close_at`]) came due: the client
    /// gets Close 1001 (1012 for a rebalance).
    Scheduled(CloseReason),
    /// A side was quiet for the route's `keepalive.pingInterval`: a Ping of ours is on its
    /// way to it (write what the relay owes).
    KeepalivePing,
    /// This side sent nothing within `keepalive.pongTimeout` of our Ping: it is treated as
    /// gone, and the other side gets Close 1001 (client gone) or 1011 (backend gone).
    KeepaliveUnanswered(Side),
}

/// Byte and message counts since the last [`Relay::take_counts`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub bytes_up: u64,
    pub messages_up: u64,
    pub bytes_down: u64,
    pub messages_down: u64,
    /// The sizes of those messages, client → backend (None: no message).
    pub sizes_up: Option<Box<MessageSizes>>,
    pub sizes_down: Option<Box<MessageSizes>>,
}

/// One direction: bytes read from the source side, written to the destination side.
#[derive(Debug)]
struct Flow {
    tracker: FrameTracker,
    /// Bytes for the destination it has not taken yet, from `backlog_off` on.
    backlog: Vec<u8>,
    backlog_off: usize,
    /// The source reached EOF or failed.
    src_done: bool,
    /// The destination failed; further bytes for it are dropped.
    dst_dead: bool,
    /// The destination's write half is shut.
    dst_shut: bool,
    /// A Close frame of ours went to the destination: later bytes from the source are
    /// dropped (no data may follow a Close).
    discard: bool,
    /// Write this Close to the destination at the next frame boundary.
    close_wanted: Option<Close>,
    /// Write this Close to the destination in place of the source's own Close, or when the
    /// source ends: the destination broke the protocol, and what its peer sent before
    /// answering our Close still reaches it, as from an endpoint that fails the connection.
    close_deferred: Option<Close>,
    /// The source's Close was withheld (ours goes instead).
    close_withheld: bool,
    injected: Option<u16>,
    /// Our frames towards the destination must be masked (it is the backend).
    masked: bool,
    /// The destination buffers what it is given (TLS) until flushed.
    buffered: bool,
    unflushed: bool,
    bytes: u64,
    bytes_counted: u64,
    messages_counted: u64,
    /// The message rate's token bucket (boxed: most routes have none, and an idle
    /// connection stays small).
    bucket: Option<Box<Bucket>>,
}

/// Tokens for messages in one direction, refilled at `per_second` up to `burst`.
#[derive(Debug)]
struct Bucket {
    rate: MessageRate,
    tokens: f64,
    /// When `tokens` was last refilled.
    at: Instant,
    /// `tracker.messages()` when tokens were last taken.
    counted: u64,
}

impl Bucket {
    /// Takes a token for each message since the last call, refills to `now`, and says
    /// until which message count messages may start.
    fn allow_until(&mut self, messages: u64, now: Instant) -> u64 {
        let taken = messages - self.counted;
        self.counted = messages;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens - taken as f64 + elapsed * f64::from(self.rate.per_second))
            .min(f64::from(self.rate.burst));
        messages + self.tokens.max(0.0) as u64
    }
}

impl Flow {
    fn new(rules: FrameRules, buffered: bool) -> Self {
        Flow {
            tracker: FrameTracker::new(rules),
            backlog: Vec::new(),
            backlog_off: 0,
            src_done: false,
            dst_dead: false,
            dst_shut: false,
            discard: false,
            close_wanted: None,
            close_deferred: None,
            close_withheld: false,
            injected: None,
            // Frames from a client are masked; so must ours be that go where they go.
            masked: rules.masked,
            buffered,
            unflushed: false,
            bytes: 0,
            bytes_counted: 0,
            messages_counted: 0,
            bucket: None,
        }
    }

    fn has_backlog(&self) -> bool {
        self.backlog_off < self.backlog.len()
    }

    fn wants_read(&self) -> bool {
        !self.src_done && !self.has_backlog()
    }

    /// A Close frame (the source's or ours) went this way and nothing is left to write.
    fn closed_and_flushed(&self) -> bool {
        (self.tracker.close_seen() || self.injected.is_some())
            && self.close_wanted.is_none()
            && self.close_deferred.is_none()
            && !self.has_backlog()
            && !self.unflushed
    }

    fn finished(&self) -> bool {
        self.src_done && (self.dst_shut || self.dst_dead)
    }

    /// Nothing more goes this way but what is already on its way.
    fn stopped(&self) -> bool {
        self.discard || self.tracker.close_seen() || self.tracker.violation().is_some()
    }

    /// Keeps bytes for the next write.
    fn stash(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.dst_dead {
            return;
        }
        if self.backlog_off > 0 {
            self.backlog.drain(..self.backlog_off);
            self.backlog_off = 0;
        }
        self.backlog.extend_from_slice(bytes);
    }

    /// Keeps what the destination did not take of `fwd` (it was slow: the rare path);
    /// `held` are the header bytes the source's tracker released before it.
    #[cold]
    fn stash_unsent(&mut self, held: &[u8], fwd: &Forward<'_>, sent: usize) {
        let body = fwd.body;
        if sent < held.len() {
            self.stash(&held[sent..]);
            self.stash(body);
        } else {
            self.stash(&body[sent - held.len()..]);
        }
    }

    /// Whether the destination is owed anything but what reads forward: a backlog, a
    /// flush, or a half-close. ([`Relay::poll_output`] says which.)
    #[inline]
    fn owes_output(&self) -> bool {
        !self.dst_dead
            && (self.has_backlog() || self.unflushed || (self.src_done && !self.dst_shut))
    }

    /// If a Close is wanted and the stream is at a boundary, queue it and stop forwarding.
    fn inject_if_ready(&mut self) {
        let Some(close) = self.close_wanted else {
            return;
        };
        let (code, reason) = close.code_and_reason();
        let peer_closed = self.tracker.close_seen() && !self.close_withheld;
        if self.discard || self.dst_dead || self.dst_shut || peer_closed {
            // Nothing can follow, or the source's own Close already went this way and
            // ours would be a second one.
            self.close_wanted = None;
            return;
        }
        if !self.tracker.at_boundary() {
            return;
        }
        let mut frame = Vec::with_capacity(8 + reason.len());
        close_frame(code, reason, self.masked.then(mask_key), &mut frame);
        self.stash(&frame);
        self.injected = Some(code);
        self.close_wanted = None;
        self.close_deferred = None;
        self.discard = true;
    }

    /// Wants our Close at the next frame boundary.
    fn close_with(&mut self, close: Close) {
        self.close_wanted = Some(close);
        self.inject_if_ready();
    }
}

/// One relayed connection's protocol state. See the module documentation.
#[derive(Debug)]
pub struct Relay {
    /// client → backend (masked frames).
    up: Flow,
    /// backend → client.
    down: Flow,
    idle: Option<Duration>,
    last_activity: Instant,
    linger: Duration,
    linger_at: Option<Instant>,
    draining: bool,
    /// We asked both sides, or the client, to close (drain, idle timeout).
    closing: bool,
    /// `winding_down`, kept up to date by the events that change it (the per-step checks
    /// read one flag).
    winding: bool,
    /// Set when a timeout ended the relay.
    end: Option<RelayEnd>,
    /// When the client's token expires (`closeOnTokenExpiry`), until it did.
    close_at: Option<Instant>,
    clock: fn() -> Instant,
    violation: Option<(Side, Violation)>,
    /// A close the gateway scheduled (a gentle drain, a rebalance): when, and why. The
    /// earliest request wins. Boxed: few connections ever have one, and every idle relay
    /// carries the field.
    scheduled: Option<Box<(Instant, CloseReason)>>,
    /// The route's keep-alive, when it has one (boxed: most relays have none).
    keepalive: Option<Box<keepalive::State>>,
    /// Who closed first (see [`ClosedBy`]); a new Close of wsgate's own records itself with
    /// [`Relay::closed_by_us`].
    closed_by: Option<ClosedBy>,
    /// When counts waiting since the first read after the last [`Relay::take_counts`] are
    /// due ([`COUNTS_DUE_AFTER`]); None while nothing waits.
    counts_at: Option<CountsDue>,
    /// `counts_at` went out through [`Relay::poll_deadline`] (the driver armed it).
    counts_armed: bool,
    /// `counts_at` passed: [`Relay::counts_due`] says so.
    counts_stale: bool,
    /// The driver takes waiting counts in a periodic sweep of its own (a relay thread, see
    /// [`Relay::counts_swept`]): no deadline for them, so a busy relay needs no timer.
    counts_swept: bool,
}

/// The Close frames wsgate sends on its own behalf (a byte, not a code and a string, in
/// every connection's state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Close {
    ClientDied,
    BackendDied,
    ClientBrokeProtocol,
    BackendBrokeProtocol,
    /// To the side that broke the protocol.
    Violation(Violation),
    Draining,
    Idle,
    /// Towards the other side of a connection closed for a route's message limit.
    PeerOverLimit,
    /// Towards the client whose token expired.
    TokenExpired,
    /// Towards the backend of that client.
    ClientTokenExpired,
    // Scheduled closes (issue 21: gentle drains, rebalancing), towards the client.
    /// Its endpoint left the route.
    EndpointRemoved,
    /// Its endpoint is terminating and the route's drain budget passed.
    EndpointTerminating,
    /// Its endpoint holds more than its share of the route (`rebalance`).
    Rebalance,
    /// Towards the backend: the client did not answer our keep-alive Ping.
    ClientUnanswered,
    /// Towards the client: the backend did not answer our keep-alive Ping.
    BackendUnanswered,
}

impl Close {
    fn code_and_reason(self) -> (u16, &'static str) {
        match self {
            Close::ClientDied => (close_code::GOING_AWAY, "client went away"),
            Close::BackendDied => (close_code::INTERNAL_ERROR, "backend connection lost"),
            Close::ClientBrokeProtocol => (
                close_code::GOING_AWAY,
                "client broke the WebSocket protocol",
            ),
            Close::BackendBrokeProtocol => (close_code::BAD_GATEWAY, "bad gateway"),
            Close::Violation(v) => (v.close_code(), v.reason()),
            Close::Draining => (close_code::GOING_AWAY, "gateway shutting down"),
            Close::Idle => (close_code::GOING_AWAY, "idle timeout"),
            Close::PeerOverLimit => (close_code::GOING_AWAY, "peer over the route's limits"),
            Close::TokenExpired => (close_code::POLICY_VIOLATION, "token expired"),
            Close::ClientTokenExpired => (close_code::GOING_AWAY, "client token expired"),
            Close::EndpointRemoved => (close_code::GOING_AWAY, "endpoint removed"),
            Close::EndpointTerminating => (close_code::GOING_AWAY, "endpoint terminating"),
            Close::Rebalance => (close_code::SERVICE_RESTART, "rebalancing"),
            Close::ClientUnanswered => (
                close_code::GOING_AWAY,
                "client did not answer keep-alive ping",
            ),
            Close::BackendUnanswered => (
                close_code::INTERNAL_ERROR,
                "backend did not answer keep-alive ping",
            ),
        }
    }
}

impl Relay {
    /// A relay starting at `now`. `buffered`: the streams buffer writes until flushed
    /// (TLS), so a relay is done only once they are flushed.
    pub fn new(config: RelayConfig, buffered: bool, now: Instant) -> Self {
        let rules = |masked| FrameRules {
            masked,
            extensions: config.extensions,
        };
        let flow = |masked| {
            let mut flow = Flow::new(rules(masked), buffered);
            if let Some(max) = config.max_message_bytes {
                flow.tracker.limit_message_bytes(max);
            }
            if let Some(rate) = config.message_rate {
                let burst = rate.burst.max(1);
                flow.tracker.allow_messages_until(u64::from(burst));
                flow.bucket = Some(Box::new(Bucket {
                    rate: MessageRate { burst, ..rate },
                    tokens: f64::from(burst),
                    at: now,
                    counted: 0,
                }));
            }
            flow
        };
        Relay {
            up: flow(true),
            down: flow(false),
            idle: config.idle,
            last_activity: now,
            linger: config.linger,
            linger_at: None,
            draining: false,
            closing: false,
            winding: false,
            end: None,
            violation: None,
            close_at: config.close_at,
            clock: config.clock,
            scheduled: None,
            keepalive: config.keepalive.map(|k| keepalive::State::new(k, now)),
            closed_by: None,
            counts_at: None,
            counts_armed: false,
            counts_stale: false,
            counts_swept: false,
        }
    }

    /// The flow whose source is `side`.
    fn flow_from(&mut self, side: Side) -> &mut Flow {
        match side {
            Side::Client => &mut self.up,
            Side::Backend => &mut self.down,
        }
    }

    /// The bytes of `fwd`, in order: header bytes its source's tracker released from
    /// earlier reads, then the read's prefix.
    #[inline]
    pub fn parts<'s>(&'s self, fwd: &Forward<'s>) -> [&'s [u8]; 2] {
        // The flow towards `fwd.to` tracks the frames of `fwd`'s source.
        [
            self.flow_to(fwd.to).tracker.released(fwd.held_len),
            fwd.body,
        ]
    }

    /// The flow whose destination is `side`.
    fn flow_to(&self, side: Side) -> &Flow {
        match side {
            Side::Client => &self.down,
            Side::Backend => &self.up,
        }
    }

    fn flow_to_mut(&mut self, side: Side) -> &mut Flow {
        match side {
            Side::Client => &mut self.down,
            Side::Backend => &mut self.up,
        }
    }

    // ---- events -------------------------------------------------------------------------

    /// Bytes read from `from`. Returns what goes on to the other side now; write it (unless
    /// that side has a backlog: then nothing) and hand it back to
    /// [`Relay::handle_forwarded`]. A frame that breaks the rules is not forwarded, nor
    /// anything after it: the side that sent it gets Close 1002 (1007), the other side
    /// Close 1001 (towards the backend) or 1014 (towards the client).
    #[inline(always)]
    pub fn handle_read<'a>(&mut self, from: Side, bytes: &'a [u8]) -> Forward<'a> {
        let to = from.other();
        let clock = self.clock;
        if self.counts_at.is_none() {
            self.start_counts_clock();
        }
        let flow = self.flow_from(from);
        let mut fwd = Forward {
            to,
            held_len: 0,
            body: &[],
        };
        if flow.discard || flow.dst_dead || flow.src_done {
            return fwd;
        }
        flow.bytes += bytes.len() as u64;
        if let Some(bucket) = &mut flow.bucket {
            // The clock is read (and the bucket refilled) only when this read could hold
            // more messages than are left (each takes at least 2 bytes): otherwise the
            // tokens counted at the last refill cover it, and the messages since are taken
            // at the next one. (bench/edge-cost.sh: a clock read per read cost +26 % per
            // 64 B message.)
            if flow.tracker.messages_left() <= bytes.len() as u64 / 2 {
                let until = bucket.allow_until(flow.tracker.messages(), clock());
                flow.tracker.allow_messages_until(until);
            }
        }
        let tracked_bytes = if flow.close_wanted.is_none() {
            bytes
        } else {
            // Forward only up to the end of the frame under way, so that our Close goes
            // right behind it; the rest is dropped with the Close.
            let n = flow.tracker.payload_remaining().min(bytes.len() as u64) as usize;
            &bytes[..n]
        };
        let tracked = flow.tracker.track(tracked_bytes);
        fwd.held_len = tracked.held_len;
        fwd.body = &bytes[..tracked.forward];
        if flow.tracker.needs_attention() {
            if !flow.tracker.stopped() {
                // Our keep-alive Ping's turn, or a Pong that may answer it (the rare path).
                return self.keepalive_in(from, tracked_bytes, fwd);
            }
            // A Close passed, or a frame broke the rules (the rare path).
            fwd.body = self.stopped_in(from, fwd.body);
        }
        fwd
    }

    /// `from`'s tracker stopped in this read at the end of `body` (what goes on): a Close
    /// passed (whole in `body`, or released from several reads), or a frame broke the rules.
    #[cold]
    fn stopped_in<'a>(&mut self, from: Side, mut body: &'a [u8]) -> &'a [u8] {
        if self.closed_by.is_none() {
            if let Some(code) = self.flow_from(from).tracker.close_code() {
                self.closed_by = Some(ClosedBy::Peer { side: from, code });
            }
        }
        let flow = self.flow_from(from);
        let held_close = flow.tracker.take_held_close();
        if flow.close_deferred.is_some() && flow.tracker.close_seen() {
            // Ours goes instead of the source's Close.
            if held_close.is_empty() {
                body = &body[..body.len() - flow.tracker.close_frame_len()];
            }
            flow.close_withheld = true;
            flow.close_wanted = flow.close_deferred.take();
        } else if !held_close.is_empty() {
            // A Close that came in several reads, now checked: it goes on from here.
            flow.stash(&held_close);
        }
        if let Some(v) = flow.tracker.violation() {
            if self.violation.is_none() {
                self.fail(from, v);
            }
        }
        self.update_winding();
        body
    }

    /// How much of `fwd` the driver wrote (all of it, part, or nothing because that side
    /// had a backlog or failed); the rest is kept for later. Then our Close frames go in
    /// where they are due.
    #[inline(always)]
    pub fn handle_forwarded(&mut self, fwd: Forward<'_>, sent: usize) {
        if sent < fwd.len() {
            let mut held = [0u8; 14];
            let held = {
                let released = self.parts(&fwd)[0];
                held[..released.len()].copy_from_slice(released);
                &held[..released.len()]
            };
            self.flow_to_mut(fwd.to).stash_unsent(held, &fwd, sent);
        }
        let flow = self.flow_to_mut(fwd.to);
        if sent > 0 && flow.buffered {
            flow.unflushed = true;
        }
        self.inject_due();
    }

    /// `from` ended (EOF or a read error). If no Close passed either way, the other side
    /// gets ours (1011 towards the client when the backend vanished, 1001 towards the
    /// backend when the client did); once a side has sent Close, its peer ending the
    /// connection just ends the close handshake.
    pub fn handle_eof(&mut self, from: Side) {
        let close_passed = self.up.tracker.close_seen() || self.down.tracker.close_seen();
        let failed = self.violation.is_some();
        if self.closed_by.is_none() {
            self.closed_by = Some(ClosedBy::Gone(from));
        }
        let flow = self.flow_from(from);
        flow.src_done = true;
        if let Some(close) = flow.close_deferred.take() {
            flow.close_wanted = Some(close);
        } else if !close_passed && !failed && flow.injected.is_none() {
            flow.close_wanted = Some(match from {
                Side::Client => Close::ClientDied,
                Side::Backend => Close::BackendDied,
            });
        }
        self.inject_due();
        self.update_winding();
    }

    /// A write to `to` failed: nothing more goes there.
    pub fn handle_write_failed(&mut self, to: Side) {
        let flow = self.flow_to_mut(to);
        flow.dst_dead = true;
        flow.backlog = Vec::new();
        flow.backlog_off = 0;
        flow.unflushed = false;
    }

    /// `n` bytes of [`Output::Write`] went to `to`.
    pub fn handle_sent(&mut self, to: Side, n: usize) {
        let flow = self.flow_to_mut(to);
        flow.backlog_off += n;
        if !flow.has_backlog() {
            // Freed once flushed, so an idle connection holds no buffer.
            flow.backlog = Vec::new();
            flow.backlog_off = 0;
        }
        if n > 0 && flow.buffered {
            flow.unflushed = true;
        }
    }

    pub fn handle_flushed(&mut self, to: Side) {
        self.flow_to_mut(to).unflushed = false;
    }

    pub fn handle_shutdown(&mut self, to: Side) {
        self.flow_to_mut(to).dst_shut = true;
    }

    /// The gateway drains: the client gets Close 1001 at the next frame boundary.
    pub fn handle_drain(&mut self) {
        if !self.draining {
            self.draining = true;
            self.closing = true;
            self.closed_by_us(Close::Draining);
            self.down.close_with(Close::Draining);
            self.update_winding();
        }
    }

    /// The gateway wants this connection closed at `at` (a gentle drain, a rebalance): the
    /// client then gets Close 1001 (1012 for a rebalance) at the next frame boundary, as
    /// for the drain. An earlier request replaces a later one; a later one never postpones
    /// it. A scheduled shutdown makes the relay draining now (it stays where it runs).
    pub fn handle_close_at(&mut self, at: Instant, reason: CloseReason) {
        if reason == CloseReason::Shutdown {
            if self.draining {
                return;
            }
            self.draining = true;
        }
        match &mut self.scheduled {
            Some(due) if due.0 <= at => {}
            Some(due) => **due = (at, reason),
            None => self.scheduled = Some(Box::new((at, reason))),
        }
    }

    /// Bytes moved at `now` (for the idle deadline and the keep-alive's quiet sides; see
    /// [`Relay::tracks_activity`]).
    pub fn note_activity(&mut self, now: Instant) {
        if self.keepalive.is_some() && !self.note_keepalive_activity(now) {
            // Only our own Pings and their Pongs moved: not traffic for the idle limit.
            return;
        }
        self.last_activity = now;
    }

    /// The first read since counts were last taken: they are due within
    /// [`COUNTS_DUE_AFTER`] (one clock read per flush, not per read).
    #[cold]
    fn start_counts_clock(&mut self) {
        self.counts_at = Some(CountsDue::after_read_at((self.clock)()));
        self.counts_armed = false;
    }

    /// The deadline returned by [`Relay::poll_deadline`] passed (or may have). Counts
    /// waiting past their deadline become due ([`Relay::counts_due`]): the driver flushes
    /// them after this call, whatever it returns.
    pub fn handle_timeout(&mut self, now: Instant) -> Timeout {
        match self.counts_at.map(CountsDue::instant) {
            Some(at) if at <= now => self.counts_stale = true,
            // The deadline that fired was an earlier one (counts were taken since, and the
            // driver kept its first deadline): ask for the new one.
            Some(_) => self.counts_armed = false,
            None => {}
        }
        if self.linger_at.is_some_and(|at| at <= now) {
            self.end = Some(RelayEnd::LingerExpired);
            return Timeout::LingerExpired;
        }
        if self.close_at.is_some_and(|at| at <= now) {
            self.close_at = None;
            self.closing = true;
            self.closed_by_us(Close::TokenExpired);
            self.down.close_with(Close::TokenExpired);
            self.up.close_with(Close::ClientTokenExpired);
            self.update_winding();
            return Timeout::TokenExpired;
        }
        if let Some(&(_, reason)) = self.scheduled.as_deref().filter(|(at, _)| *at <= now) {
            self.scheduled = None;
            if !self.closing {
                self.closing = true;
                let close = match reason {
                    CloseReason::Shutdown => Close::Draining,
                    CloseReason::EndpointRemoved => Close::EndpointRemoved,
                    CloseReason::EndpointTerminating => Close::EndpointTerminating,
                    CloseReason::Rebalance => Close::Rebalance,
                };
                self.closed_by_us(close);
                self.down.close_with(close);
                self.update_winding();
            }
            return Timeout::Scheduled(reason);
        }
        match self.idle {
            Some(idle) if self.last_activity + idle <= now => {
                self.idle = None;
                self.closing = true;
                self.closed_by_us(Close::Idle);
                self.up.close_with(Close::Idle);
                self.down.close_with(Close::Idle);
                self.update_winding();
                Timeout::Idle(idle)
            }
            _ => self.handle_keepalive_timeout(now),
        }
    }

    // ---- what the driver does next ------------------------------------------------------

    /// Whether to read from `from`: not once it ended, nor while the other side has not
    /// taken what came before (backpressure).
    #[inline]
    pub fn wants_read(&self, from: Side) -> bool {
        match from {
            Side::Client => self.up.wants_read(),
            Side::Backend => self.down.wants_read(),
        }
    }

    /// Whether bytes wait for `to`.
    #[inline]
    pub fn has_backlog(&self, to: Side) -> bool {
        self.flow_to(to).has_backlog()
    }

    /// Whether [`Relay::poll_output`] has anything for `to` (one inline check before the
    /// driver's write loop: most reads leave nothing owed).
    #[inline]
    pub fn owes_output(&self, to: Side) -> bool {
        self.flow_to(to).owes_output()
    }

    /// What `to` needs next: the backlog written, a flush, the write half shut, or nothing.
    #[inline]
    pub fn poll_output(&self, to: Side) -> Option<Output<'_>> {
        let flow = self.flow_to(to);
        if flow.dst_dead {
            None
        } else if flow.has_backlog() {
            Some(Output::Write(&flow.backlog[flow.backlog_off..]))
        } else if flow.unflushed {
            Some(Output::Flush)
        } else if flow.src_done && !flow.dst_shut {
            Some(Output::Shutdown)
        } else {
            None
        }
    }

    /// Whether the relay has a deadline now or may get one without an event from the driver
    /// (an idle limit, a token expiry, a scheduled close, winding down): a driver that keeps no timer for
    /// every connection asks [`Relay::poll_deadline`] only then.
    #[inline]
    pub fn wants_timer(&self) -> bool {
        self.idle.is_some()
            || self.close_at.is_some()
            || self.winding
            || self.scheduled.is_some()
            || self.keepalive.is_some()
            || self.wants_counts_timer()
    }

    /// Counts started waiting and their deadline has not gone out through
    /// [`Relay::poll_deadline`] yet: a driver that sleeps between steps without asking for
    /// the deadline asks now (once per flush period).
    #[inline]
    pub fn wants_counts_timer(&self) -> bool {
        self.counts_at.is_some() && !self.counts_armed && !self.counts_swept
    }

    /// From now on the driver flushes waiting counts itself, when [`Relay::counts_due_by`]
    /// says so on a periodic sweep, instead of by a deadline of this relay's: a relay
    /// thread, whose loop would otherwise keep a timer for every busy relay and read the
    /// clock on every wake-up (bench/RESULTS.md "Issue 21: what the telemetry costs").
    pub fn counts_swept(&mut self) {
        self.counts_swept = true;
        self.counts_armed = false;
    }

    /// Whether waiting counts are past their deadline at `now` (or byte-count due).
    pub fn counts_due_by(&self, now: Instant) -> bool {
        self.counts_due() || self.counts_at.is_some_and(|at| at.instant() <= now)
    }

    /// Whether the driver must call [`Relay::note_activity`] when bytes move.
    pub fn tracks_activity(&self) -> bool {
        self.idle.is_some() || self.keepalive.is_some()
    }

    /// When to call [`Relay::handle_timeout`] next, if ever. `now` is asked only when the
    /// relay has just started winding down (the linger deadline starts then).
    pub fn poll_deadline(&mut self, now: impl FnOnce() -> Instant) -> Option<Instant> {
        if self.linger_at.is_none() && self.winding_down() {
            self.linger_at = Some(now() + self.linger);
        }
        let idle_at = self.idle.map(|idle| self.last_activity + idle);
        self.counts_armed = self.counts_at.is_some();
        let counts_at = self
            .counts_at
            .filter(|_| !self.counts_stale && !self.counts_swept)
            .map(CountsDue::instant);
        let scheduled_at = self.scheduled.as_deref().map(|(at, _)| *at);
        [
            idle_at,
            self.linger_at,
            self.close_at,
            scheduled_at,
            self.keepalive_deadline(),
            counts_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A side has closed, a Close passed, we are closing (drain, idle), or a side broke the
    /// protocol: from here the sides have the linger time to finish.
    #[inline]
    pub fn winding_down(&self) -> bool {
        self.winding
    }

    fn update_winding(&mut self) {
        self.winding = self.closing
            || self.up.src_done
            || self.down.src_done
            || self.up.stopped()
            || self.down.stopped();
    }

    /// The relay is over: close both connections. Both directions ended (each source
    /// closed and the close passed on), or both Close frames went through — then the close
    /// handshake is complete, and as the server side towards the client we close the TCP
    /// connection now (RFC 6455 §7.1.1) instead of waiting for FINs — or the linger ran
    /// out.
    #[inline]
    pub fn is_done(&self) -> bool {
        // Only a relay winding down can be done.
        self.winding
            && (self.end.is_some()
                || (self.up.finished() && self.down.finished())
                || (self.up.closed_and_flushed() && self.down.closed_and_flushed()))
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Data messages passed so far, both ways.
    pub fn messages(&self) -> u64 {
        self.up.tracker.messages() + self.down.tracker.messages()
    }

    /// Whether enough bytes passed since the last [`Relay::take_counts`] to flush them to
    /// the shared metrics.
    #[inline]
    pub fn counts_due(&self) -> bool {
        self.up.bytes - self.up.bytes_counted > COUNTS_DUE_BYTES
            || self.down.bytes - self.down.bytes_counted > COUNTS_DUE_BYTES
            || self.counts_stale
    }

    /// Counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        let take = |flow: &mut Flow| {
            let bytes = flow.bytes - flow.bytes_counted;
            let messages = flow.tracker.messages() - flow.messages_counted;
            flow.bytes_counted = flow.bytes;
            flow.messages_counted = flow.tracker.messages();
            (bytes, messages, flow.tracker.take_sizes(messages))
        };
        let (bytes_up, messages_up, sizes_up) = take(&mut self.up);
        let (bytes_down, messages_down, sizes_down) = take(&mut self.down);
        self.counts_at = None;
        self.counts_armed = false;
        self.counts_stale = false;
        Counts {
            bytes_up,
            messages_up,
            bytes_down,
            messages_down,
            sizes_up,
            sizes_down,
        }
    }

    /// What the relay did, once it is done.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            bytes_up: self.up.bytes,
            bytes_down: self.down.bytes,
            messages_up: self.up.tracker.messages(),
            messages_down: self.down.tracker.messages(),
            injected_to_client: self.down.injected,
            injected_to_upstream: self.up.injected,
            violation: self.violation,
            end: self.end.unwrap_or(RelayEnd::Closed),
            pings_to_client: self.keepalive.as_ref().map_or(0, |k| k.pings(Side::Client)),
            pings_to_backend: self
                .keepalive
                .as_ref()
                .map_or(0, |k| k.pings(Side::Backend)),
            unanswered: self.keepalive.as_ref().and_then(|k| k.unanswered()),
            closed_by: self.closed_by,
            client_close: self.up.tracker.close_code(),
            backend_close: self.down.tracker.close_code(),
        }
    }

    /// Records that wsgate closes first with `close`, unless someone closed before. Every
    /// Close of wsgate's own that starts an end (not one that answers a side's) calls it.
    fn closed_by_us(&mut self, close: Close) {
        if self.closed_by.is_none() {
            self.closed_by = Some(ClosedBy::Gateway(GatewayClose(close)));
        }
    }

    // ---- internals ----------------------------------------------------------------------

    /// `from` broke the protocol: it gets Close 1002 (1007) once its peer answered our Close
    /// (1001 towards a backend, 1014 towards a client) or ended, so what the peer sent
    /// before still reaches it, in order, as from an endpoint that fails the connection.
    #[cold]
    fn fail(&mut self, from: Side, v: Violation) {
        self.violation = Some((from, v));
        self.closed_by_us(Close::Violation(v));
        let to_peer = match from {
            _ if v.is_limit() => Close::PeerOverLimit,
            Side::Client => Close::ClientBrokeProtocol,
            Side::Backend => Close::BackendBrokeProtocol,
        };
        // Injected once the forward of this read is handed back (`handle_forwarded`), so
        // the frames before the offending one go first.
        self.flow_from(from).close_wanted = Some(to_peer);
        let towards_breaker = self.flow_to_mut(from);
        if towards_breaker.discard {
            // Ours went already (drain, idle): a second Close is not allowed.
        } else if towards_breaker.src_done
            || towards_breaker.tracker.close_seen()
            || towards_breaker.close_wanted.is_some()
        {
            // Its peer already ended or closed, or ours is on its way anyway: nothing more
            // comes to wait for, and the breaker should learn why.
            towards_breaker.close_wanted = Some(Close::Violation(v));
        } else {
            towards_breaker.close_deferred = Some(Close::Violation(v));
        }
    }

    #[inline]
    fn inject_due(&mut self) {
        if self.up.close_wanted.is_some() || self.down.close_wanted.is_some() {
            self.up.inject_if_ready();
            self.down.inject_if_ready();
            self.update_winding();
        }
    }
}

/// A fresh masking key for frames we send to a backend. RFC 6455 wants keys a third
/// party cannot predict; a per-thread xorshift seeded from the process's random hasher
/// keys is enough for the few Close frames a proxy writes.
fn mask_key() -> [u8; 4] {
    (crate::proxy::random::next_u64() as u32).to_le_bytes()
}

#[cfg(test)]
mod tests;
