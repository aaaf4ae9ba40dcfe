//! The frame-header tracker: a state machine over the bytes of one direction of a
//! WebSocket connection that knows where frames start and end, and checks each frame
//! header against the rules an endpoint must enforce (RFC 6455 §5.1–5.5, §7.4), without
//! buffering or unmasking data payload.
//!
//! It tells the relay which leading part of a read may go on: whole frames and the payload
//! of frames whose header passed the checks. A header split across reads is held back (at
//! most 14 bytes, inline) until it is complete and checked, and so is a Close frame until
//! its payload (code and reason) is checked, so no byte of an offending frame is ever
//! forwarded, and the destination is always at a frame boundary where the relay may write
//! a Close of its own.
//!
//! Text payloads are not checked for UTF-8: that is the endpoints' work, and would cost a
//! pass over every byte. Extension payloads (permessage-deflate) are never decoded; only
//! the RSV bits are checked against what the 101 negotiated.

use std::fmt;

pub use crate::telemetry::MESSAGE_SIZE_BOUNDS;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1 and the IANA registry) the relay uses.
pub mod close_code {
    /// The gateway is shutting down, the connection was idle too long, or (towards a
    /// backend) the client went away or broke the protocol.
    pub const GOING_AWAY: u16 = 1001;
    /// A peer broke the protocol (sent to that peer).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A Close reason that is not UTF-8 (sent to that peer).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A side sent messages faster than the route's `limits.messagesPerSecond` (sent to
    /// that side), or its token expired (`closeOnTokenExpiry`, to the client).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over the route's `limits.maxMessageBytes` (sent to its sender).
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The backend connection ended without a Close frame.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The connection's endpoint holds more than its share of the route (`rebalance`):
    /// reconnect, to a less loaded endpoint.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Towards the client when the backend broke the protocol.
    pub const BAD_GATEWAY: u16 = 1014;
}

/// Whether a peer may send `code` in a Close frame: the codes RFC 6455 §7.4 and the IANA
/// registry define for use on the wire (1000–1003, 1007–1014), and the ranges for
/// libraries and applications (3000–4999). 1004–1006 and 1015 are reserved, never sent.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The extensions a 101 negotiated, as far as the RSV bits go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Extensions {
    /// None: every RSV bit must be 0.
    #[default]
    None,
    /// permessage-deflate (RFC 7692): RSV1 may be set on a data message's first frame.
    PerMessageDeflate,
    /// An extension wsgate does not know: its RSV bits pass unchecked.
    Unknown,
}

impl Extensions {
    /// From the values of the backend's `Sec-WebSocket-Extensions` (RFC 6455 §9.1:
    /// comma-separated extensions, each a token with `;` parameters).
    ///
    /// ```
    /// use wsgate::proxy::frame::Extensions;
    /// assert_eq!(Extensions::negotiated([]), Extensions::None);
    /// let deflate: &[u8] = b"permessage-deflate; client_max_window_bits=15";
    /// assert_eq!(Extensions::negotiated([deflate]), Extensions::PerMessageDeflate);
    /// assert_eq!(Extensions::negotiated([&b"x-custom"[..]]), Extensions::Unknown);
    /// ```
    pub fn negotiated<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Extensions {
        let mut found = Extensions::None;
        for value in values {
            for ext in value.split(|b| *b == b',') {
                let name = ext.split(|b| *b == b';').next().unwrap_or_default();
                let name = name.trim_ascii();
                if name.is_empty() {
                    continue;
                }
                if name.eq_ignore_ascii_case(b"permessage-deflate") && found == Extensions::None {
                    found = Extensions::PerMessageDeflate;
                } else if !name.eq_ignore_ascii_case(b"permessage-deflate") {
                    return Extensions::Unknown;
                }
            }
        }
        found
    }
}

/// Message sizes of one direction since they were last taken: a count per bucket of
/// [`MESSAGE_SIZE_BOUNDS`] (plus one above) and the sum of the sizes. Kept per connection
/// and flushed to the process-wide histogram with the byte counts, so a message costs two
/// adds and no shared write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageSizes {
    /// Not cumulative: `buckets[i]` counts messages in (bound[i-1], bound[i]]. u32: a flush
    /// comes at least every 320 KiB, so fewer than 2^18 messages fit between two.
    pub buckets: [u32; MESSAGE_SIZE_BOUNDS.len() + 1],
    pub sum: u64,
}

impl MessageSizes {
    #[inline(always)]
    fn add(&mut self, len: u64) {
        self.buckets[size_bucket(len)] += 1;
        self.sum += len;
    }
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The bucket of a message of `len` payload bytes: bounds are 64 × 4^i, so the bucket is
/// half the bit length of `len - 1` above 64's, without a search.
#[inline(always)]
pub fn size_bucket(len: u64) -> usize {
    let bits = 64 - len.saturating_sub(1).leading_zeros();
    ((bits.saturating_sub(5) / 2) as usize).min(MESSAGE_SIZE_BOUNDS.len())
}

/// What the frames of one direction must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRules {
    /// Frames in this direction must be masked (client → server) or must not be.
    pub masked: bool,
    pub extensions: Extensions,
}

/// A frame that broke the rules. The side that sent it gets [`Violation::close_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A client frame without a mask, or a backend frame with one (§5.1).
    Masking,
    /// RSV bits the negotiated extensions do not allow (§5.2).
    ReservedBits,
    /// Opcodes 3–7 and 0xB–0xF (§5.2).
    ReservedOpcode,
    /// A control frame with more than 125 bytes of payload (§5.5).
    ControlTooLong,
    /// A control frame without FIN (§5.5).
    ControlFragmented,
    /// A continuation frame with no fragmented message to continue (§5.4).
    UnexpectedContinuation,
    /// A new text or binary message inside a fragmented one (§5.4).
    MessageInsideFragmented,
    /// A 64-bit payload length with its most significant bit set (§5.2).
    LengthOverflow,
    /// A Close payload of one byte (§5.5.1).
    CloseTooShort,
    /// A Close code no peer may send (§7.4).
    CloseCode,
    /// A Close reason that is not UTF-8 (§5.5.1, §8.1).
    CloseReasonNotUtf8,
    /// Not a protocol rule but the route's: a message over `limits.maxMessageBytes`, seen
    /// from the frame headers (the message is never buffered to measure it).
    MessageTooBig,
    /// A message started beyond the route's `limits.messagesPerSecond` (and its burst).
    MessageRate,
}

impl Violation {
    /// The code of the Close frame the offending side gets: 1007 for a reason that is not
    /// UTF-8, 1002 for everything else.
    pub fn close_code(self) -> u16 {
        match self {
            Violation::CloseReasonNotUtf8 => close_code::INVALID_PAYLOAD,
            Violation::MessageTooBig => close_code::MESSAGE_TOO_BIG,
            Violation::MessageRate => close_code::POLICY_VIOLATION,
            _ => close_code::PROTOCOL_ERROR,
        }
    }

    /// A route's limit, not a protocol rule: the other side then gets 1001, as when its
    /// peer goes away, rather than a code that says the peer misbehaved.
    pub fn is_limit(self) -> bool {
        matches!(self, Violation::MessageTooBig | Violation::MessageRate)
    }

    /// The reason in that Close frame, and in the log.
    pub fn reason(self) -> &'static str {
        match self {
            Violation::Masking => "frame masking is wrong for this direction",
            Violation::ReservedBits => "RSV bits not negotiated",
            Violation::ReservedOpcode => "reserved opcode",
            Violation::ControlTooLong => "control frame over 125 bytes",
            Violation::ControlFragmented => "fragmented control frame",
            Violation::UnexpectedContinuation => "continuation without a message",
            Violation::MessageInsideFragmented => "new message inside a fragmented one",
            Violation::LengthOverflow => "payload length over 2^63",
            Violation::CloseTooShort => "close payload of one byte",
            Violation::CloseCode => "invalid close code",
            Violation::CloseReasonNotUtf8 => "close reason is not UTF-8",
            Violation::MessageTooBig => "message over the route's maxMessageBytes",
            Violation::MessageRate => "messages over the route's messagesPerSecond",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// What [`FrameTracker::track`] decided about one read. Two words, returned in
/// registers: the rare held-back header bytes stay in the tracker
/// ([`FrameTracker::released`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// How many header bytes held back from earlier reads, now checked, go on first.
    pub held_len: u8,
    /// How many leading bytes of the read go on after those. The rest is held back (a
    /// partial header), or dropped (after a Close, or from an offending frame on).
    pub forward: usize,
}

impl Tracked {
    const NOTHING: Tracked = Tracked {
        held_len: 0,
        forward: 0,
    };
}

/// Where the tracker is in its direction's byte stream. The states from `Stopped` on need
/// the relay's attention after a read ([`FrameTracker::needs_attention`], one compare).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum At {
    /// Between frames (or inside a header held back: nothing of it went on).
    Boundary,
    /// Inside the payload of a frame whose header went on.
    Payload,
    /// A Close frame is being held back until its payload is complete.
    HeldClose,
    /// A Close passed, or a frame broke the rules: nothing more is forwarded.
    Stopped,
    // Keep-alive (`relay/machine/keepalive.rs`), only when the relay asked for it:
    /// The frame under way ended where the relay wants to put a frame of its own
    /// ([`FrameTracker::pause_at_frame_end`]); the read's bytes after it are not tracked
    /// yet. [`FrameTracker::resume`] goes on.
    Paused,
    /// A Pong frame starts here that may answer the relay's Ping
    /// ([`FrameTracker::catch_pongs`]); nothing of it was forwarded. The relay takes it with
    /// [`FrameTracker::catch_pong`].
    PongAhead,
}

/// What [`FrameTracker::catch_pong`] made of the bytes it was given.
#[derive(Debug, PartialEq, Eq)]
pub enum CaughtPong {
    /// All of them belong to the Pong, which is not complete yet (held in the tracker).
    Partial,
    /// The Pong is complete after `consumed` bytes: here it is, header and payload as sent.
    /// The tracker is at a frame boundary again.
    Whole { consumed: usize, frame: Vec<u8> },
    /// The frame broke the rules: the tracker stopped with its violation.
    Failed,
}

/// What the tracker knows about one direction's byte stream.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    /// 0x80 when frames in this direction must be masked, else 0 (the mask bit's place).
    mask_bit: u8,
    /// The first row of `VALID_FIRST_BYTE` for the negotiated extensions.
    table_row: u8,
    at: At,
    /// Header bytes of the next frame held back so far (max 14).
    header: [u8; 14],
    have: u8,
    /// A held-back header completed by the last read: it goes on before that read's bytes.
    released: [u8; 14],
    /// Payload bytes left in the current frame (`At::Payload`, `At::HeldClose`).
    remaining: u64,
    /// The frame being forwarded ends a data message.
    ends_message: bool,
    /// A data message was started with FIN=0 and awaits its final continuation frame.
    fragmented: bool,
    close_seen: bool,
    /// The length of a Close frame that went on in place (within one read), header
    /// included: at most 14 + 125.
    close_len: u8,
    violation: Option<Violation>,
    messages: u64,
    /// `limits.maxMessageBytes` (u64::MAX: none), and the payload of the message under
    /// way so far (its frames' lengths as their headers arrive).
    max_message: u64,
    message_len: u64,
    /// Messages may start while `messages` is below this (the relay's token bucket for
    /// `limits.messagesPerSecond` sets it; u64::MAX: no limit).
    messages_allowed: u64,
    /// The fast path takes 7-bit lengths below this: 126, or less when `max_message` is
    /// smaller (so a message over the limit always reaches the checks).
    fast_len_limit: u8,
    /// A Close frame split across reads, header included; allocated only then (boxed: an
    /// idle connection's tracker stays small: 8 bytes instead of a `Vec`'s 24; it is
    /// allocated at most once per direction, a Close being the last frame). Also a Pong
    /// being caught ([`At::PongAhead`]; once per keep-alive ping answered).
    #[allow(clippy::box_collection)]
    held_close: Option<Box<Vec<u8>>>,
    // Keep-alive (`relay/machine/keepalive.rs`):
    /// Stop at the end of the frame under way ([`At::Paused`]).
    pause_at_frame_end: bool,
    /// Stop in front of a Pong frame ([`At::PongAhead`]): the relay's Ping is unanswered.
    catch_pongs: bool,
    /// The code of the Close that passed (1005, "no status", for a Close without one;
    /// 0 until one passed): the access log's close code.
    close_code: u16,
    /// Sizes of the messages since [`FrameTracker::take_sizes`] that the fast path did
    /// not take (boxed, allocated at the first such message after a take: a quiet
    /// connection's tracker holds a null pointer).
    sizes: Option<Box<MessageSizes>>,
    /// The fast path's messages (7-bit lengths, so 64 B or less, or up to 125 B) since the
    /// last take: how many were over 64 B, and their payload. Two adds per message instead
    /// of a bucket computed behind a pointer (callgrind: 351 → 399 instructions per 64 B
    /// round trip with the bucket, bench/RESULTS.md "Issue 21: what the telemetry costs");
    /// their count is the messages' count minus the boxed buckets', at the take.
    short_over_64: u32,
    short_payload: u32,
}

// The fast path's two buckets: at most 64 B, and above (a 7-bit length is at most 125).
const _: () = assert!(MESSAGE_SIZE_BOUNDS[0] == 64 && MESSAGE_SIZE_BOUNDS[1] >= 125);

/// Which first header bytes (FIN, RSV, opcode) are valid, as 256-bit sets, one row per
/// (extensions, fragmented) at `2 * extensions + fragmented`: one lookup per frame instead
/// of a chain of branches.
static VALID_FIRST_BYTE: [[u64; 4]; 6] = {
    let mut table = [[0u64; 4]; 6];
    let mut row = 0;
    while row < 6 {
        let mut b0 = 0usize;
        while b0 < 256 {
            if first_byte_valid(b0 as u8, row / 2, row % 2 == 1) {
                table[row][b0 >> 6] |= 1 << (b0 & 63);
            }
            b0 += 1;
        }
        row += 1;
    }
    table
};

const fn ext_index(e: Extensions) -> usize {
    match e {
        Extensions::None => 0,
        Extensions::PerMessageDeflate => 1,
        Extensions::Unknown => 2,
    }
}

const fn first_byte_valid(b0: u8, ext: usize, fragmented: bool) -> bool {
    let fin = b0 & 0x80 != 0;
    let rsv = b0 & 0x70;
    let opcode = b0 & 0x0F;
    let first_data_frame = matches!(opcode, OP_TEXT | OP_BINARY);
    // permessage-deflate sets RSV1 on a message's first frame only; an unknown extension
    // may set any.
    let rsv_ok = rsv == 0 || ext == 2 || (ext == 1 && first_data_frame && rsv == 0x40);
    match opcode {
        OP_TEXT | OP_BINARY => !fragmented && rsv_ok,
        OP_CONTINUATION => fragmented && rsv_ok,
        OP_CLOSE | OP_PING | OP_PONG => fin && rsv_ok,
        _ => false,
    }
}

impl FrameTracker {
    pub fn new(rules: FrameRules) -> Self {
        FrameTracker {
            mask_bit: if rules.masked { 0x80 } else { 0 },
            table_row: 2 * ext_index(rules.extensions) as u8,
            at: At::Boundary,
            header: [0; 14],
            have: 0,
            released: [0; 14],
            remaining: 0,
            ends_message: false,
            fragmented: false,
            close_seen: false,
            close_len: 0,
            violation: None,
            messages: 0,
            max_message: u64::MAX,
            message_len: 0,
            messages_allowed: u64::MAX,
            fast_len_limit: 126,
            held_close: None,
            pause_at_frame_end: false,
            catch_pongs: false,
            close_code: 0,
            sizes: None,
            short_over_64: 0,
            short_payload: 0,
        }
    }

    /// The sizes of the `messages` messages that ended since the last call (None when
    /// none did): the fast path's folded into the first two buckets. Once per flush of a
    /// relay's counts, never per message.
    pub fn take_sizes(&mut self, messages: u64) -> Option<Box<MessageSizes>> {
        let boxed: u64 = self
            .sizes
            .as_deref()
            .map_or(0, |s| s.buckets.iter().map(|&n| u64::from(n)).sum());
        let short = messages.saturating_sub(boxed);
        if short == 0 {
            return self.sizes.take();
        }
        let mut sizes = self.sizes.take().unwrap_or_default();
        let over_64 = u64::from(self.short_over_64).min(short);
        sizes.buckets[0] = sizes.buckets[0].saturating_add(saturating_u32(short - over_64));
        sizes.buckets[1] = sizes.buckets[1].saturating_add(saturating_u32(over_64));
        sizes.sum += u64::from(self.short_payload);
        self.short_over_64 = 0;
        self.short_payload = 0;
        Some(sizes)
    }

    /// A message of `len` payload bytes ended.
    #[inline(always)]
    fn count_size(&mut self, len: u64) {
        match &mut self.sizes {
            Some(sizes) => sizes.add(len),
            None => self.first_size(len),
        }
    }

    #[cold]
    fn first_size(&mut self, len: u64) {
        let mut sizes = Box::<MessageSizes>::default();
        sizes.add(len);
        self.sizes = Some(sizes);
    }

    /// True when nothing of a frame is half-way to the destination: a frame of our own may
    /// be written there now. Held-back bytes were not forwarded, so they do not count.
    pub fn at_boundary(&self) -> bool {
        self.at != At::Payload
    }

    /// Payload bytes still to come of the frame being forwarded (0 at a boundary).
    pub fn payload_remaining(&self) -> u64 {
        if self.at == At::Payload {
            self.remaining
        } else {
            0
        }
    }

    /// A Close passed or a frame broke the rules: nothing more goes on.
    #[inline]
    pub fn stopped(&self) -> bool {
        self.at == At::Stopped
    }

    /// The tracker stopped ([`FrameTracker::stopped`]), paused at a frame end, or found a
    /// Pong the relay wants to see. (One compare: the relay's per-read check for all.)
    #[inline]
    pub fn needs_attention(&self) -> bool {
        self.at >= At::Stopped
    }

    /// Asks the tracker to stop at the end of the frame under way (its payload is being
    /// forwarded: not at a boundary), so the relay can put a frame of its own there. A read
    /// that ends the frame then leaves the tracker [`FrameTracker::paused`], its forward
    /// ending with the frame.
    pub fn pause_at_frame_end(&mut self) {
        self.pause_at_frame_end = true;
    }

    /// Stopped at the end of a frame as asked; [`FrameTracker::resume`] goes on.
    pub fn paused(&self) -> bool {
        self.at == At::Paused
    }

    pub fn resume(&mut self) {
        if self.at == At::Paused {
            self.at = At::Boundary;
        }
    }

    /// While on, a Pong frame that starts in a read stops the tracker in front of it
    /// ([`FrameTracker::pong_ahead`]) so the relay can see whether it answers its own Ping.
    /// Only frames whose header starts after this call: a Pong begun earlier cannot answer
    /// a Ping sent since.
    pub fn catch_pongs(&mut self, on: bool) {
        self.catch_pongs = on;
    }

    /// A Pong is ahead or being caught: hand the read's rest to [`FrameTracker::catch_pong`].
    pub fn pong_ahead(&self) -> bool {
        self.at == At::PongAhead
    }

    /// Takes the bytes of the Pong ahead (from its first byte, or where the last call left
    /// off) until it is complete, checking its header like any frame's. Reads at most the
    /// frame's 6 + 125 bytes of `bytes`.
    pub fn catch_pong(&mut self, bytes: &[u8]) -> CaughtPong {
        let mut frame = self.held_close.take().unwrap_or_default();
        let mut used = 0;
        loop {
            let need = if frame.len() < 2 {
                2
            } else {
                header_len_of(frame[1]) + usize::from(frame[1] & 0x7F)
            };
            let take = need.saturating_sub(frame.len()).min(bytes.len() - used);
            let first_bytes_now = frame.len() < 2;
            frame.extend_from_slice(&bytes[used..used + take]);
            used += take;
            if frame.len() < 2 {
                self.held_close = Some(frame);
                return CaughtPong::Partial;
            }
            if first_bytes_now {
                // Opcode, FIN, RSV, masking, length ≤ 125: the checks of any control frame.
                if let Err(v) = self.check_first_bytes(frame[0], frame[1]) {
                    self.fail(v);
                    return CaughtPong::Failed;
                }
                continue;
            }
            if frame.len() < need {
                self.held_close = Some(frame);
                return CaughtPong::Partial;
            }
            self.at = At::Boundary;
            return CaughtPong::Whole {
                consumed: used,
                frame: *frame,
            };
        }
    }

    /// Messages over `max` payload bytes (all their frames) break the route's limit: the
    /// frame that goes over it is not forwarded, and the tracker stops with
    /// [`Violation::MessageTooBig`].
    pub fn limit_message_bytes(&mut self, max: u64) {
        self.max_message = max;
        self.fast_len_limit = max.saturating_add(1).min(126) as u8;
    }

    /// How many more messages may start before the tracker stops (u64::MAX: no limit).
    #[inline]
    pub fn messages_left(&self) -> u64 {
        self.messages_allowed.saturating_sub(self.messages)
    }

    /// Lets messages start until [`FrameTracker::messages`] reaches `total`; the one after
    /// stops the tracker with [`Violation::MessageRate`], before any of it is forwarded.
    #[inline]
    pub fn allow_messages_until(&mut self, total: u64) {
        self.messages_allowed = total;
    }

    /// The header bytes the last [`FrameTracker::track`] released from earlier reads
    /// (its `held_len`): they go on before that read's bytes.
    pub fn released(&self, held_len: u8) -> &[u8] {
        &self.released[..usize::from(held_len)]
    }

    /// A Close frame passed completely in this direction.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// The code of the Close that passed in this direction (1005 when it carried none),
    /// once one did.
    pub fn close_code(&self) -> Option<u16> {
        self.close_seen.then_some(self.close_code)
    }

    /// How many bytes at the end of the read's forward are the Close frame, when the Close
    /// came whole within one read (0 when it came in several: then it goes on from
    /// [`FrameTracker::take_held_close`]). Lets the relay withhold a Close and send its own.
    pub fn close_frame_len(&self) -> usize {
        usize::from(self.close_len)
    }

    /// The frame that broke the rules, once one did.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    /// Complete data messages (text or binary, counting a fragmented one once).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Takes the bytes of one read. Returns what goes on: header bytes held from earlier
    /// reads, then a prefix of `bytes`. Never reads data payload; reads Close payloads,
    /// which are at most 125 bytes. Once a Close passed or a frame broke the rules, nothing
    /// more goes on.
    #[inline(always)]
    pub fn track(&mut self, bytes: &[u8]) -> Tracked {
        // A read inside a large frame's payload that does not end it, inline: most reads
        // of large messages (callgrind, 64 KiB messages: about half of them).
        let len = bytes.len() as u64;
        if self.at == At::Payload && len < self.remaining {
            self.remaining -= len;
            return Tracked {
                held_len: 0,
                forward: bytes.len(),
            };
        }
        self.track_reads(bytes)
    }

    fn track_reads(&mut self, bytes: &[u8]) -> Tracked {
        let mut out = Tracked::NOTHING;
        let mut pos = 0;
        match self.at {
            // The relay takes over from a pause or a Pong (`relay/machine/keepalive.rs`).
            At::Stopped | At::Paused | At::PongAhead => return out,
            At::Payload => {}
            At::HeldClose => {
                self.hold_close_payload(bytes);
                return out;
            }
            At::Boundary if self.have > 0 => {
                // A header split across reads: complete it from this read.
                let had = usize::from(self.have);
                // Its full length is known once its first two bytes are.
                loop {
                    let (have, need) = (usize::from(self.have), self.header_len());
                    let take = (need - have).min(bytes.len() - pos);
                    if take == 0 {
                        break;
                    }
                    self.header[have..have + take].copy_from_slice(&bytes[pos..pos + take]);
                    self.have += take as u8;
                    pos += take;
                }
                if let Err(v) = self.check_partial_header() {
                    self.fail(v);
                    return out;
                }
                if usize::from(self.have) < self.header_len() {
                    return out;
                }
                let header = self.header;
                let header = &header[..usize::from(self.have)];
                self.have = 0;
                if header[0] & 0x0F == OP_CLOSE {
                    // Its payload follows in this read, or is held back with it.
                    self.held_close = Some(Box::new(header.to_vec()));
                    self.start_held_close(header);
                    return self.finish_or_hold_close(bytes, pos);
                }
                if let Err(v) = self.start_frame(header) {
                    self.fail(v);
                    return out;
                }
                self.released[..had].copy_from_slice(&header[..had]);
                out.held_len = had as u8;
            }
            At::Boundary => {}
        }
        self.track_frames(bytes, pos, out)
    }

    /// Whole frames from `pos` on: the relay's per-read loop, one pass over the headers
    /// with no per-frame return values (callgrind: against a call per frame, frame
    /// tracking went from ~275 to ~125 instructions per 64 B round trip).
    #[inline]
    fn track_frames(&mut self, bytes: &[u8], mut pos: usize, mut out: Tracked) -> Tracked {
        // A whole frame's header is 2 bytes, plus the mask key where frames are masked.
        let short_header_len = 2 + usize::from(self.mask_bit >> 5);
        loop {
            if self.at == At::Payload {
                let avail = (bytes.len() - pos) as u64;
                if avail < self.remaining {
                    self.remaining -= avail;
                    out.forward = bytes.len();
                    return out;
                }
                pos += self.remaining as usize;
                self.end_frame();
                if self.pause_at_frame_end {
                    // Here the relay puts a frame of its own (keep-alive's Ping).
                    self.pause_at_frame_end = false;
                    self.at = At::Paused;
                    out.forward = pos;
                    return out;
                }
            }
            // The usual frame, checked in three compares: a whole unfragmented text or
            // binary message (FIN set, no RSV bit: valid whatever the extensions) outside a
            // fragmented one, masked as this direction must be, with a 7-bit length
            // (`b1 ^ mask_bit` is under 126 only when both hold), and all of it in this
            // read. Everything else takes the checks below. (callgrind: ~70 → ~20
            // instructions per frame; bench/RESULTS.md, "Issue 19 ... recovered".)
            // The sizes of these messages add up in registers, stored once per run of them.
            let (mut over_64, mut payload) = (0u32, 0u32);
            while let [b0, b1, ..] = bytes[pos..] {
                let len7 = b1 ^ self.mask_bit;
                if b0.wrapping_sub(0x81) >= 2
                    || len7 >= self.fast_len_limit
                    || self.fragmented
                    || self.messages >= self.messages_allowed
                {
                    break;
                }
                let frame_len = short_header_len + usize::from(len7);
                if bytes.len() - pos < frame_len {
                    break;
                }
                self.messages += 1;
                over_64 += u32::from(len7 > 64);
                payload += u32::from(len7);
                pos += frame_len;
            }
            // Both are at most the read's length (far below 4 GiB), so the locals cannot
            // overflow; the fields could only wrap if counts were not taken for 4 GiB, and
            // they are taken every 256 KiB.
            self.short_over_64 = self.short_over_64.wrapping_add(over_64);
            self.short_payload = self.short_payload.wrapping_add(payload);
            if pos == bytes.len() {
                out.forward = pos;
                return out;
            }
            let rest = &bytes[pos..];
            if self.catch_pongs && rest[0] & 0x0F == OP_PONG {
                // May answer the relay's Ping: the relay decides (`catch_pong`).
                out.forward = pos;
                self.at = At::PongAhead;
                return out;
            }
            if rest.len() < 2 {
                out.forward = pos;
                self.hold_header(rest);
                return out;
            }
            let (b0, b1) = (rest[0], rest[1]);
            if let Err(v) = self.check_first_bytes(b0, b1) {
                out.forward = pos;
                self.fail(v);
                return out;
            }
            let header_len = header_len_of(b1);
            if rest.len() < header_len {
                out.forward = pos;
                self.hold_header(rest);
                return out;
            }
            let opcode = b0 & 0x0F;
            if opcode == OP_CLOSE {
                out.forward = pos;
                self.start_held_close(&rest[..header_len]);
                let held = self.finish_or_hold_close(rest, header_len);
                // A Close complete in this read goes on in place, right behind what
                // preceded it; one split across reads goes on later from `held_close`.
                out.forward += held.forward;
                return out;
            }
            let len7 = b1 & 0x7F;
            if len7 < 126 {
                // The usual header: a 7-bit length (any control frame has one).
                let frame_len = header_len + usize::from(len7);
                if rest.len() >= frame_len {
                    // The whole frame is here: count it and skip it (a data frame's FIN
                    // ends a message or starts a fragmented one; control frames change
                    // neither).
                    if b0 & 0x08 == 0 {
                        if let Err(v) = self.check_limits(b0, u64::from(len7)) {
                            out.forward = pos;
                            self.fail(v);
                            return out;
                        }
                        let fin = b0 >> 7;
                        self.fragmented = fin == 0;
                        self.messages += u64::from(fin);
                        if fin != 0 {
                            self.count_size(self.message_len);
                        }
                    }
                    pos += frame_len;
                    continue;
                }
            }
            if let Err(v) = self.start_frame(&rest[..header_len]) {
                out.forward = pos;
                self.fail(v);
                return out;
            }
            pos += header_len;
        }
    }

    /// Checks what the first two header bytes tell: opcode, FIN, RSV bits against the
    /// message state, masking, control frame length.
    #[inline]
    fn check_first_bytes(&self, b0: u8, b1: u8) -> Result<(), Violation> {
        let set = &VALID_FIRST_BYTE[usize::from(self.table_row + u8::from(self.fragmented))];
        if set[usize::from(b0 >> 6)] & (1 << (b0 & 63)) == 0 {
            return Err(self.classify_first_byte(b0));
        }
        if b1 & 0x80 != self.mask_bit {
            return Err(Violation::Masking);
        }
        if b0 & 0x08 != 0 && b1 & 0x7F > 125 {
            return Err(Violation::ControlTooLong);
        }
        Ok(())
    }

    /// Why `b0` is not in the valid set (the cold path of `check_first_bytes`).
    #[cold]
    fn classify_first_byte(&self, b0: u8) -> Violation {
        let opcode = b0 & 0x0F;
        let control = opcode & 0x08 != 0;
        match opcode {
            OP_TEXT | OP_BINARY if self.fragmented => Violation::MessageInsideFragmented,
            OP_CONTINUATION if !self.fragmented => Violation::UnexpectedContinuation,
            OP_TEXT | OP_BINARY | OP_CONTINUATION | OP_CLOSE | OP_PING | OP_PONG => {
                if control && b0 & 0x80 == 0 {
                    Violation::ControlFragmented
                } else {
                    Violation::ReservedBits
                }
            }
            _ => Violation::ReservedOpcode,
        }
    }

    /// Checks a held partial header as soon as its first two bytes are known, so an
    /// offending frame fails at once instead of waiting for the rest of its header.
    fn check_partial_header(&self) -> Result<(), Violation> {
        if self.have < 2 {
            return Ok(());
        }
        self.check_first_bytes(self.header[0], self.header[1])?;
        if usize::from(self.have) >= self.header_len() {
            payload_len(&self.header)?;
        }
        Ok(())
    }

    /// A complete, checked-so-far header of a data, ping or pong frame: forward its
    /// payload from here.
    #[inline]
    fn start_frame(&mut self, header: &[u8]) -> Result<(), Violation> {
        let len = payload_len(header)?;
        if header[0] & 0x08 == 0 {
            self.check_limits(header[0], len)?;
        }
        self.frame_started(header[0]);
        self.remaining = len;
        if len == 0 {
            self.end_frame();
        } else {
            self.at = At::Payload;
        }
        Ok(())
    }

    /// The route's message limits, for a data frame whose header passed the protocol
    /// checks: a new message may start (the rate), and the message stays within
    /// `max_message` with this frame's `len` bytes.
    #[inline]
    fn check_limits(&mut self, b0: u8, len: u64) -> Result<(), Violation> {
        if b0 & 0x0F == OP_CONTINUATION {
            self.message_len = self.message_len.saturating_add(len);
        } else {
            if self.messages >= self.messages_allowed {
                return Err(Violation::MessageRate);
            }
            self.message_len = len;
        }
        if self.message_len > self.max_message {
            return Err(Violation::MessageTooBig);
        }
        Ok(())
    }

    /// Message bookkeeping for a frame whose header passed the checks.
    #[inline]
    fn frame_started(&mut self, b0: u8) {
        let opcode = b0 & 0x0F;
        if opcode & 0x08 == 0 {
            let fin = b0 & 0x80 != 0;
            self.fragmented = !fin;
            self.ends_message = fin;
        } else {
            self.ends_message = false;
        }
    }

    #[inline]
    fn end_frame(&mut self) {
        self.messages += u64::from(self.ends_message);
        if self.ends_message {
            self.count_size(self.message_len);
        }
        self.ends_message = false;
        self.remaining = 0;
        self.at = At::Boundary;
    }

    /// Keeps the start of a header (fewer bytes than it needs) for the next read, checking
    /// what is known of it already.
    fn hold_header(&mut self, part: &[u8]) {
        self.header[..part.len()].copy_from_slice(part);
        self.have = part.len() as u8;
        if let Err(v) = self.check_partial_header() {
            self.fail(v);
        }
    }

    /// A Close header: its payload length, checked (≤ 125 was checked with the first bytes).
    fn start_held_close(&mut self, header: &[u8]) {
        self.remaining = u64::from(header[1] & 0x7F);
        self.at = At::HeldClose;
    }

    /// `bytes[pos..]` continues a Close frame whose header is known: the Close is checked
    /// once its payload is complete. Returns how much of `bytes` (from 0) goes on when the
    /// whole frame is in `bytes` and valid; a Close split across reads is kept in
    /// `held_close` and goes on from there ([`FrameTracker::take_held_close`]).
    fn finish_or_hold_close(&mut self, bytes: &[u8], pos: usize) -> Tracked {
        let mut out = Tracked::NOTHING;
        let need = self.remaining as usize;
        let avail = bytes.len() - pos;
        let split = self.held_close.is_some();
        if avail < need {
            // Started in this read: `bytes` begins with its header, which is held too.
            let from = if split { pos } else { 0 };
            self.held_close
                .get_or_insert_with(Default::default)
                .extend_from_slice(&bytes[from..]);
            self.remaining -= avail as u64;
            return out;
        }
        if split {
            let mut frame = self.held_close.take().unwrap_or_default();
            frame.extend_from_slice(&bytes[pos..pos + need]);
            match check_close(&frame) {
                Ok(code) => {
                    self.held_close = Some(frame);
                    self.close_code = code;
                    self.close_passed();
                }
                Err(v) => self.fail(v),
            }
            return out;
        }
        let frame = &bytes[..pos + need];
        match check_close(frame) {
            Ok(code) => {
                self.close_code = code;
                out.forward = pos + need;
                self.close_len = (pos + need) as u8;
                self.close_passed();
            }
            Err(v) => self.fail(v),
        }
        out
    }

    /// Continues a Close frame held across reads.
    fn hold_close_payload(&mut self, bytes: &[u8]) {
        let _ = self.finish_or_hold_close(bytes, 0);
    }

    fn close_passed(&mut self) {
        self.close_seen = true;
        self.remaining = 0;
        self.at = At::Stopped;
    }

    /// A Close frame that was split across reads and has now passed the checks: the
    /// caller writes it on. Empty otherwise.
    pub fn take_held_close(&mut self) -> Vec<u8> {
        if self.close_seen {
            self.held_close.take().map(|b| *b).unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    #[cold]
    fn fail(&mut self, v: Violation) {
        self.violation = Some(v);
        self.at = At::Stopped;
        self.have = 0;
        self.held_close = None;
    }

    /// Header length so far known: 2, then 2 + extended length + mask key.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        header_len_of(self.header[1])
    }
}

/// A frame header's full length, from its second byte: 2, plus the extended length (2 or
/// 8), plus the mask key (4). Without branches: it runs for every frame that is not whole
/// in its read.
#[inline(always)]
fn header_len_of(b1: u8) -> usize {
    let len7 = b1 & 0x7F;
    let ext = usize::from(len7 >= 126) * 2 + usize::from(len7 == 127) * 6;
    let mask = usize::from(b1 >> 7) * 4;
    2 + ext + mask
}

/// The payload length of a complete header.
fn payload_len(header: &[u8]) -> Result<u64, Violation> {
    match header[1] & 0x7F {
        126 => Ok(u64::from(u16::from_be_bytes([header[2], header[3]]))),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                Err(Violation::LengthOverflow)
            } else {
                Ok(len)
            }
        }
        len => Ok(u64::from(len)),
    }
}

/// Checks a whole Close frame (header and payload): no payload, or a valid code and a
/// UTF-8 reason. Returns its code (1005, "no status received", when it has none).
fn check_close(frame: &[u8]) -> Result<u16, Violation> {
    let header_len = header_len_of(frame[1]);
    let payload = &frame[header_len..];
    match payload.len() {
        0 => return Ok(NO_STATUS),
        1 => return Err(Violation::CloseTooShort),
        _ => {}
    }
    let mut plain = [0u8; 125];
    let plain = &mut plain[..payload.len()];
    plain.copy_from_slice(payload);
    if frame[1] & 0x80 != 0 {
        let key = &frame[header_len - 4..header_len];
        for (i, b) in plain.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    let code = u16::from_be_bytes([plain[0], plain[1]]);
    if !valid_close_code(code) {
        return Err(Violation::CloseCode);
    }
    if std::str::from_utf8(&plain[2..]).is_err() {
        return Err(Violation::CloseReasonNotUtf8);
    }
    Ok(code)
}

/// The code reported for a Close frame without one (RFC 6455 §7.1.5; never sent).
const NO_STATUS: u16 = 1005;

/// Encodes a Close frame into `out` (cleared first). `mask` is Some for frames sent
/// towards a backend, where RFC 6455 requires masking; the reason is cut to fit a
/// control frame (at a character boundary, so it stays UTF-8).
///
/// ```
/// use wsgate::proxy::frame::{close_frame, Extensions, FrameRules, FrameTracker};
///
/// let mut out = Vec::new();
/// close_frame(1001, "going away", None, &mut out);
/// assert_eq!(&out[..4], &[0x88, 12, 0x03, 0xE9]);
///
/// let mut tracker = FrameTracker::new(FrameRules { masked: false, extensions: Extensions::None });
/// assert_eq!(tracker.track(&out).forward, out.len());
/// assert!(tracker.close_seen());
/// ```
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    let len = 2 + reason.len();
    out.clear();
    out.push(0x80 | OP_CLOSE);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(mask_bit | len as u8);
    let start = out.len() + mask.map_or(0, |_| 4);
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    if let Some(key) = mask {
        for (i, b) in out[start..].iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
}

/// Encodes a Ping frame with `payload` (at most 125 bytes) into `out` (cleared first),
/// masked with `mask` when it goes towards a backend, like [`close_frame`].
///
/// ```
/// use wsgate::proxy::frame::ping_frame;
///
/// let mut out = Vec::new();
/// ping_frame(b"hi", None, &mut out);
/// assert_eq!(out, [0x89, 2, b'h', b'i']);
/// ping_frame(b"hi", Some([1, 2, 3, 4]), &mut out);
/// assert_eq!(out, [0x89, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
/// ```
pub fn ping_frame(payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let payload = &payload[..payload.len().min(125)];
    out.clear();
    out.push(0x80 | OP_PING);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(mask_bit | payload.len() as u8);
    if let Some(key) = mask {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
}

/// The payload of a control frame as sent (header and payload), unmasked into `out`.
pub fn control_payload(frame: &[u8], out: &mut [u8; 125]) -> usize {
    let header_len = header_len_of(frame[1]);
    let payload = &frame[header_len.min(frame.len())..];
    let n = payload.len().min(125);
    out[..n].copy_from_slice(&payload[..n]);
    if frame[1] & 0x80 != 0 {
        let key = &frame[header_len - 4..header_len];
        for (i, b) in out[..n].iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    n
}

#[cfg(test)]
pub(crate) mod tests;
