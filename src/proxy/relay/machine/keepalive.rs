//! Keep-alive, a route's `keepalive: {pingInterval, pongTimeout}`: when no bytes came from
//! a side for `pingInterval`, wsgate sends that side a Ping of its own, at a frame boundary
//! (masked towards the backend, as a client's frames must be). The Pong answering it is
//! taken out of the stream, never forwarded; other Pongs pass on untouched, and our Pings
//! never reach the other side (they start here). A side that sends nothing at all within
//! `pongTimeout` of the Ping is treated as gone, as if its connection had ended: the other
//! side gets Close 1001 (the client is gone) or 1011 (the backend is gone) and the relay
//! winds down. Any bytes from a side restart its quiet time.
//!
//! Rare work only: the per-frame path pays nothing. A Ping waits for the end of the frame
//! under way by asking the other direction's tracker to pause there; a Pong is looked at
//! only while a Ping of ours is unanswered, and only the Pong frame (the tracker stops in
//! front of it on its control-frame path). Either way the read that holds the spot goes on
//! through the backlog (one copy per Ping, not per message).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use super::{mask_key, Close, Forward, Relay, Side, Timeout};
use crate::proxy::frame::{control_payload, ping_frame, CaughtPong};

/// A route's `keepalive` (`model::Keepalive`), in whole milliseconds: 8 bytes in every
/// relay's configuration, which waits in each connection's future (`connection.rs`'s size
/// budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// A side that sent nothing for this long gets a Ping.
    ping_interval_ms: NonZeroU32,
    /// A side that sends nothing for this long after our Ping is gone.
    pong_timeout_ms: NonZeroU32,
}

impl Keepalive {
    /// Both durations in milliseconds, at least 1 and at most `u32::MAX` (49 days).
    pub fn new(ping_interval: Duration, pong_timeout: Duration) -> Keepalive {
        let ms = |d: Duration| {
            NonZeroU32::new(d.as_millis().clamp(1, u128::from(u32::MAX)) as u32)
                .unwrap_or(NonZeroU32::MIN)
        };
        Keepalive {
            ping_interval_ms: ms(ping_interval),
            pong_timeout_ms: ms(pong_timeout),
        }
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.ping_interval_ms.get()))
    }

    pub fn pong_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.pong_timeout_ms.get()))
    }
}

/// Our Pings' payload: this prefix, then the Ping's token in hex (a Pong that echoes it
/// answers our Ping, not someone else's passing through).
const PAYLOAD_PREFIX: &[u8; 17] = b"wsgate keepalive ";
const PAYLOAD_LEN: usize = PAYLOAD_PREFIX.len() + 8;

fn payload(token: u32) -> [u8; PAYLOAD_LEN] {
    let mut out = [0u8; PAYLOAD_LEN];
    out[..PAYLOAD_PREFIX.len()].copy_from_slice(PAYLOAD_PREFIX);
    for (i, b) in out[PAYLOAD_PREFIX.len()..].iter_mut().enumerate() {
        *b = b"0123456789abcdef"[(token >> (28 - 4 * i) & 0xF) as usize];
    }
    out
}

/// The keep-alive state of one relay.
#[derive(Debug)]
pub(super) struct State {
    config: Keepalive,
    /// By [`Side`]: the client, the backend.
    sides: [SideState; 2],
    unanswered: Option<Side>,
}

#[derive(Debug)]
struct SideState {
    /// When bytes last came from this side (or its Pong to our Ping).
    heard_at: Instant,
    /// The byte count of the flow from this side when last noted.
    bytes_seen: u64,
    /// Our Ping to this side was due at this time; the side must send something within
    /// `pong_timeout`. None: no Ping unanswered.
    ping_at: Option<Instant>,
    /// That Ping waits for the end of the frame under way towards this side.
    ping_waiting: bool,
    /// That Ping went out after it was due: the side's time starts again at the deadline.
    ping_late: bool,
    /// A Pong answering our Ping came (heard at the next note).
    answered: bool,
    /// The tokens of our last two Pings (a Pong may answer the one before).
    tokens: [u32; 2],
    pings: u32,
}

impl State {
    pub(super) fn new(config: Keepalive, now: Instant) -> Box<State> {
        let side = || SideState {
            heard_at: now,
            bytes_seen: 0,
            ping_at: None,
            ping_waiting: false,
            ping_late: false,
            answered: false,
            tokens: [token(), token()],
            pings: 0,
        };
        Box::new(State {
            config,
            sides: [side(), side()],
            unanswered: None,
        })
    }

    pub(super) fn pings(&self, to: Side) -> u32 {
        self.sides[to as usize].pings
    }

    pub(super) fn unanswered(&self) -> Option<Side> {
        self.unanswered
    }
}

fn token() -> u32 {
    u32::from_le_bytes(mask_key())
}

impl Relay {
    /// A step moved bytes at `now`: a side whose bytes came (or whose Pong answered us)
    /// was heard. Returns whether any bytes came besides our Pongs.
    pub(super) fn note_keepalive_activity(&mut self, now: Instant) -> bool {
        let bytes = [self.up.bytes, self.down.bytes];
        let Some(ka) = self.keepalive.as_deref_mut() else {
            return true;
        };
        let mut moved = false;
        for (s, bytes) in ka.sides.iter_mut().zip(bytes) {
            let came = bytes != s.bytes_seen;
            moved |= came;
            if came || s.answered {
                s.bytes_seen = bytes;
                s.heard_at = now;
                s.answered = false;
                s.ping_at = None;
                s.ping_late = false;
            }
        }
        moved
    }

    /// When the next Ping is due, or the answer to one.
    pub(super) fn keepalive_deadline(&self) -> Option<Instant> {
        let ka = self.keepalive.as_deref()?;
        if self.winding {
            return None;
        }
        ka.sides
            .iter()
            .map(|s| match s.ping_at {
                Some(at) => at + ka.config.pong_timeout(),
                None => s.heard_at + ka.config.ping_interval(),
            })
            .min()
    }

    /// The keep-alive's part of [`Relay::handle_timeout`]: Pings to quiet sides, and a side
    /// that did not answer is gone.
    pub(super) fn handle_keepalive_timeout(&mut self, now: Instant) -> Timeout {
        if self.winding {
            return Timeout::Nothing;
        }
        let Some(ka) = self.keepalive.as_deref_mut() else {
            return Timeout::Nothing;
        };
        let (ping_interval, pong_timeout) = (ka.config.ping_interval(), ka.config.pong_timeout());
        let mut due = [false; 2];
        for side in [Side::Client, Side::Backend] {
            let s = &mut ka.sides[side as usize];
            match s.ping_at {
                Some(at) if at + pong_timeout <= now => {
                    if s.ping_waiting || s.ping_late {
                        // Our Ping left late (or not yet: the other side is mid-frame): the
                        // side gets its whole time from here.
                        s.ping_at = Some(now);
                        s.ping_late = false;
                    } else {
                        ka.unanswered = Some(side);
                        self.side_unanswered(side);
                        return Timeout::KeepaliveUnanswered(side);
                    }
                }
                Some(_) => {}
                None if s.heard_at + ping_interval <= now => {
                    s.ping_at = Some(now);
                    due[side as usize] = true;
                }
                None => {}
            }
        }
        let mut pinged = false;
        for side in [Side::Client, Side::Backend] {
            if due[side as usize] {
                pinged |= self.ping(side);
            }
        }
        if pinged {
            Timeout::KeepalivePing
        } else {
            Timeout::Nothing
        }
    }

    /// Sends `to` a Ping now, or at the end of the frame under way towards it. Returns
    /// whether it went into the backlog now.
    fn ping(&mut self, to: Side) -> bool {
        let flow = self.flow_to_mut(to);
        if flow.discard || flow.dst_dead || flow.dst_shut || flow.close_wanted.is_some() {
            // Closing anyway.
            return false;
        }
        let at_boundary = flow.tracker.at_boundary();
        let Some(ka) = self.keepalive.as_deref_mut() else {
            return false;
        };
        let s = &mut ka.sides[to as usize];
        if s.ping_waiting {
            return false;
        }
        s.tokens = [token(), s.tokens[0]];
        if at_boundary {
            self.write_ping(to);
            true
        } else {
            s.ping_waiting = true;
            self.flow_to_mut(to).tracker.pause_at_frame_end();
            false
        }
    }

    /// Puts our Ping behind what waits for `to`, and watches for its Pong.
    fn write_ping(&mut self, to: Side) {
        let Some(ka) = self.keepalive.as_deref_mut() else {
            return;
        };
        let s = &mut ka.sides[to as usize];
        s.pings += 1;
        let payload = payload(s.tokens[0]);
        let flow = self.flow_to_mut(to);
        let mut frame = Vec::with_capacity(6 + PAYLOAD_LEN);
        ping_frame(&payload, flow.masked.then(mask_key), &mut frame);
        flow.stash(&frame);
        self.flow_from(to).tracker.catch_pongs(true);
    }

    /// `side` did not answer: it is treated as gone, as if its connection had ended (see
    /// [`Relay::handle_eof`]), with the keep-alive's Close towards the other side.
    fn side_unanswered(&mut self, side: Side) {
        let close = match side {
            Side::Client => Close::ClientUnanswered,
            Side::Backend => Close::BackendUnanswered,
        };
        // The access log names wsgate, with the keep-alive's reason, as the one that closed.
        self.closed_by_us(close);
        let flow = self.flow_from(side);
        flow.src_done = true;
        if flow.injected.is_none() {
            flow.close_wanted = Some(close);
        }
        self.inject_due();
        self.update_winding();
    }

    /// The rare path of [`Relay::handle_read`]: `from`'s tracker paused where our Ping to
    /// the other side goes, or stopped in front of a Pong that may answer our Ping to
    /// `from`. What goes on of this read (`bytes`, what the tracker was given) then goes
    /// through the backlog, in order, and the forward handed back is empty.
    #[cold]
    pub(super) fn keepalive_in<'a>(
        &mut self,
        from: Side,
        bytes: &'a [u8],
        fwd: Forward<'a>,
    ) -> Forward<'a> {
        let to = from.other();
        let mut held = [0u8; 14];
        let held_len = {
            let released = self.parts(&fwd)[0];
            held[..released.len()].copy_from_slice(released);
            released.len()
        };
        let flow = self.flow_from(from);
        flow.stash(&held[..held_len]);
        flow.stash(fwd.body);
        let mut pos = fwd.body.len();
        loop {
            let flow = self.flow_from(from);
            if flow.tracker.paused() {
                flow.tracker.resume();
                let closing = flow.close_wanted.is_some();
                if let Some(s) = self
                    .keepalive
                    .as_deref_mut()
                    .map(|k| &mut k.sides[to as usize])
                {
                    if s.ping_waiting {
                        s.ping_waiting = false;
                        s.ping_late = s.ping_at.is_some();
                        if !closing {
                            self.write_ping(to);
                        }
                    }
                }
            } else if flow.tracker.pong_ahead() {
                match flow.tracker.catch_pong(&bytes[pos..]) {
                    CaughtPong::Partial => {
                        // Counted once the Pong is whole and not ours.
                        flow.bytes -= (bytes.len() - pos) as u64;
                        break;
                    }
                    CaughtPong::Failed => {
                        let _ = self.stopped_in(from, &[]);
                        break;
                    }
                    CaughtPong::Whole { consumed, frame } => {
                        pos += consumed;
                        // Our Pong is not traffic: not counted as relayed, and not the idle
                        // limit's activity. Another is, all of it (its earlier part too).
                        let ours = self.is_our_pong(from, &frame);
                        let flow = self.flow_from(from);
                        flow.bytes -= consumed as u64;
                        if !ours {
                            flow.bytes += frame.len() as u64;
                            flow.stash(&frame);
                        }
                    }
                }
            }
            if pos == bytes.len() {
                break;
            }
            let flow = self.flow_from(from);
            let rest = if flow.close_wanted.is_none() {
                &bytes[pos..]
            } else {
                let n = flow
                    .tracker
                    .payload_remaining()
                    .min((bytes.len() - pos) as u64);
                &bytes[pos..pos + n as usize]
            };
            // At a boundary with nothing held: no header bytes are released.
            let tracked = flow.tracker.track(rest);
            let mut body = &rest[..tracked.forward];
            if flow.tracker.stopped() {
                body = self.stopped_in(from, body);
                self.flow_from(from).stash(body);
                break;
            }
            flow.stash(body);
            if !(flow.tracker.paused() || flow.tracker.pong_ahead()) {
                // The tracker took the rest (forwarded, or a partial header held).
                break;
            }
            pos += tracked.forward;
        }
        self.update_winding();
        Forward {
            to,
            held_len: 0,
            body: &[],
        }
    }

    /// Whether `frame`, a whole Pong from `side`, answers one of our last two Pings to it.
    fn is_our_pong(&mut self, side: Side, frame: &[u8]) -> bool {
        let mut got = [0u8; 125];
        let n = control_payload(frame, &mut got);
        let Some(ka) = self.keepalive.as_deref_mut() else {
            return false;
        };
        let s = &mut ka.sides[side as usize];
        let Some(i) = s.tokens.iter().position(|t| got[..n] == payload(*t)) else {
            return false;
        };
        s.answered = true;
        if i == 0 {
            // The latest Ping is answered: no more Pongs to look at.
            self.flow_from(side).tracker.catch_pongs(false);
        }
        true
    }
}
