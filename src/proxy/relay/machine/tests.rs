//! The relay machine without sockets: a simulated driver whose sockets take a limited
//! number of bytes per write (so backlogs form), driven by byte slices and a fake clock.

use super::*;
use crate::proxy::frame::{OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT};
use proptest::prelude::*;

const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

fn frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    crate::proxy::frame::tests::raw_frame(b0, payload, mask)
}

fn text(payload: &[u8], masked: bool) -> Vec<u8> {
    frame(0x80 | OP_TEXT, payload, masked.then_some(KEY))
}

fn close(code: u16, reason: &[u8], masked: bool) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    frame(0x80 | OP_CLOSE, &p, masked.then_some(KEY))
}

/// A frame as it arrived: opcode, whether masked, unmasked payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    b0: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl Parsed {
    fn close_code(&self) -> Option<u16> {
        (self.b0 & 0x0F == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Parses complete frames; panics on a partial one (a destination must never be left
/// inside a frame by what the machine wrote).
fn parse(mut bytes: &[u8]) -> Vec<Parsed> {
    let mut out = vec![];
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "partial header: {bytes:?}");
        let (b0, b1) = (bytes[0], bytes[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let key = masked.then(|| {
            let k: [u8; 4] = bytes[at..at + 4].try_into().unwrap();
            at += 4;
            k
        });
        assert!(bytes.len() >= at + len, "partial payload");
        let payload = bytes[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, b)| key.map_or(*b, |k| b ^ k[i % 4]))
            .collect();
        out.push(Parsed {
            b0,
            masked,
            payload,
        });
        bytes = &bytes[at + len..];
    }
    out
}

/// A driver over in-memory sockets that take at most `room` bytes until made writable.
struct Sim {
    relay: Relay,
    now: Instant,
    /// What each side received: [client, backend].
    got: [Vec<u8>; 2],
    shut: [bool; 2],
    room: [usize; 2],
    /// Bytes a socket takes each time it becomes writable.
    refill: usize,
}

impl Sim {
    fn new(config: RelayConfig, refill: usize) -> Sim {
        let now = Instant::now();
        Sim {
            relay: Relay::new(config, false, now),
            now,
            got: [vec![], vec![]],
            shut: [false; 2],
            room: [refill; 2],
            refill,
        }
    }

    fn write(&mut self, to: Side, bytes: &[u8]) -> usize {
        assert!(!self.shut[to as usize], "write after shutdown to {to:?}");
        let n = bytes.len().min(self.room[to as usize]);
        self.room[to as usize] -= n;
        self.got[to as usize].extend_from_slice(&bytes[..n]);
        n
    }

    fn read(&mut self, from: Side, bytes: &[u8]) {
        if !self.relay.wants_read(from) {
            // A driver reads only what the machine wants (backpressure, an ended side).
            self.writable();
            if !self.relay.wants_read(from) {
                return;
            }
        }
        let fwd = self.relay.handle_read(from, bytes);
        let to = fwd.to();
        let mut sent = 0;
        if !self.relay.has_backlog(to) {
            let parts = self.relay.parts(&fwd).map(<[u8]>::to_vec);
            for part in &parts {
                let n = self.write(to, part);
                sent += n;
                if n < part.len() {
                    break;
                }
            }
        }
        self.relay.handle_forwarded(fwd, sent);
        self.owed(Side::Client);
        self.owed(Side::Backend);
    }

    fn owed(&mut self, to: Side) {
        while let Some(out) = self.relay.poll_output(to) {
            match out {
                Output::Write(bytes) => {
                    let bytes = bytes.to_vec();
                    let n = self.write(to, &bytes);
                    if n == 0 {
                        return;
                    }
                    self.relay.handle_sent(to, n);
                }
                Output::Flush => self.relay.handle_flushed(to),
                Output::Shutdown => {
                    self.shut[to as usize] = true;
                    self.relay.handle_shutdown(to);
                }
            }
        }
    }

    /// Both sockets drain: everything owed goes out.
    fn writable(&mut self) {
        for _ in 0..10_000 {
            self.room = [self.refill; 2];
            self.owed(Side::Client);
            self.owed(Side::Backend);
            if !self.relay.has_backlog(Side::Client) && !self.relay.has_backlog(Side::Backend) {
                return;
            }
        }
        panic!("backlog never drained");
    }

    fn eof(&mut self, from: Side) {
        self.relay.handle_eof(from);
        self.owed(Side::Client);
        self.owed(Side::Backend);
    }

    /// Moves the clock to the machine's deadline and fires it. Counts that came due are
    /// taken, as a driver flushes them; a wake-up for them alone (read on the real clock,
    /// not this one) is not an event of these tests, so the next deadline fires instead.
    fn fire(&mut self) -> Option<Timeout> {
        loop {
            let now = self.now;
            let at = self.relay.poll_deadline(|| now)?;
            self.now = self.now.max(at);
            let t = self.relay.handle_timeout(self.now);
            self.owed(Side::Client);
            self.owed(Side::Backend);
            if self.relay.counts_due() {
                let _ = self.relay.take_counts();
                if t == Timeout::Nothing {
                    continue;
                }
            }
            return Some(t);
        }
    }

    fn frames(&self, side: Side) -> Vec<Parsed> {
        parse(&self.got[side as usize])
    }
}

fn closes(frames: &[Parsed]) -> Vec<u16> {
    frames.iter().filter_map(Parsed::close_code).collect()
}

/// Frames before an offending one go on, nothing of it does; the peer gets 1001 (a
/// backend) or 1014 (a client) at once; what the peer sends until it answers with its own
/// Close still reaches the offender, and then, instead of the peer's Close, our 1002
/// (masked towards a backend); then the relay is done.
#[test]
fn a_violation_fails_the_connection_with_the_stated_codes() {
    for from in [Side::Client, Side::Backend] {
        let masked = from == Side::Client;
        let good = text(b"before", masked);
        // The wrong masking for this direction.
        let bad = text(b"wrongly masked", !masked);
        let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
        sim.read(from, &[good.clone(), bad].concat());
        sim.writable();
        let to = from.other();
        let got = sim.frames(to);
        assert_eq!(got[0].payload, b"before", "{from:?}");
        assert_eq!(got.len(), 2, "{from:?}: {got:?}");
        let peer_code = if from == Side::Client { 1001 } else { 1014 };
        assert_eq!(closes(&got), vec![peer_code]);
        assert_eq!(got[1].masked, to == Side::Backend);
        assert!(
            sim.frames(from).is_empty(),
            "the offender waits for its peer"
        );
        assert!(!sim.relay.is_done());
        // The peer's answer to the earlier message, then its Close.
        sim.read(
            to,
            &[text(b"echo", !masked), close(peer_code, b"", !masked)].concat(),
        );
        sim.writable();
        let back = sim.frames(from);
        assert_eq!(back[0].payload, b"echo");
        assert_eq!(closes(&back), vec![1002], "ours, not the peer's Close");
        assert_eq!(back[1].masked, from == Side::Backend);
        assert!(sim.relay.is_done());
        assert_eq!(
            sim.relay.stats().violation,
            Some((from, Violation::Masking))
        );
    }
}

/// The offender's 1002 also goes when its peer ends without a Close, or not at all when
/// the peer had closed already (a second Close is not allowed).
#[test]
fn the_offenders_close_goes_when_its_peer_ends() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.read(Side::Client, &text(b"x", false));
    sim.eof(Side::Backend);
    sim.writable();
    assert_eq!(closes(&sim.frames(Side::Client)), vec![1002]);
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.read(Side::Backend, &close(1000, b"", false));
    sim.read(Side::Client, &text(b"x", false));
    sim.writable();
    assert_eq!(closes(&sim.frames(Side::Client)), vec![1000]);
}

/// A Close reason that is not UTF-8 earns 1007.
#[test]
fn a_bad_close_reason_earns_1007() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.read(Side::Client, &close(1000, &[0xFF, 0xFE], true));
    sim.writable();
    assert_eq!(closes(&sim.frames(Side::Backend)), vec![1001]);
    sim.read(Side::Backend, &close(1001, b"", false));
    sim.writable();
    assert_eq!(closes(&sim.frames(Side::Client)), vec![1007]);
    assert!(sim.relay.is_done());
}

/// The Autobahn 7.x case: the client's Close went through, the backend ends its TCP
/// connection without answering: the client gets no invented 1011, just the end.
#[test]
fn peer_fin_after_a_close_never_earns_1011() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.read(Side::Client, &close(1000, b"bye", true));
    sim.eof(Side::Backend);
    sim.writable();
    assert!(closes(&sim.frames(Side::Client)).is_empty());
    assert!(sim.shut[Side::Client as usize], "the FIN is passed on");
    // The backend's Close went to the client, then the client vanished: no 1001 for it.
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.read(Side::Backend, &close(1000, b"bye", false));
    sim.eof(Side::Client);
    sim.writable();
    assert!(closes(&sim.frames(Side::Backend)).is_empty());
}

/// Without any Close, a backend that vanishes earns the client 1011, and a client that
/// vanishes earns the backend a masked 1001.
#[test]
fn a_side_vanishing_without_close_is_reported_to_the_other() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.eof(Side::Backend);
    assert_eq!(closes(&sim.frames(Side::Client)), vec![1011]);
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.eof(Side::Client);
    let got = sim.frames(Side::Backend);
    assert_eq!(closes(&got), vec![1001]);
    assert!(got[0].masked);
}

/// Valid frames of text (possibly fragmented) and pings, as one side sends them.
fn valid_stream(frames: &[(bool, bool, usize)], masked: bool) -> Vec<u8> {
    let mut stream = vec![];
    let mut fragmented = false;
    for &(ping, fin, len) in frames {
        let mask = masked.then_some(KEY);
        if ping {
            stream.extend(frame(0x80 | OP_PING, &vec![1; len % 126], mask));
        } else {
            let op = if fragmented { OP_CONTINUATION } else { OP_TEXT };
            stream.extend(frame(
                if fin { 0x80 } else { 0 } | op,
                &vec![b'a'; len],
                mask,
            ));
            fragmented = !fin;
        }
    }
    stream
}

fn split_points(len: usize, cuts: &[usize]) -> Vec<usize> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points
}

proptest! {
    /// For any valid stream split at any points, with the drain (towards the client) or
    /// the idle timeout (both ways) at any point and sockets that take few bytes at a
    /// time: what each side receives is whole frames, a prefix of what was sent, then
    /// exactly one Close of ours (masked towards the backend), then nothing.
    #[test]
    fn injected_close_lands_on_a_frame_boundary(
        frames in prop::collection::vec((any::<bool>(), any::<bool>(), 0usize..400), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        event_at in any::<usize>(),
        idle in any::<bool>(),
        from_client in any::<bool>(),
        refill in 1usize..200,
    ) {
        let from = if from_client { Side::Client } else { Side::Backend };
        let stream = valid_stream(&frames, from == Side::Client);
        let config = RelayConfig { idle: idle.then_some(Duration::from_secs(1)), ..Default::default() };
        let mut sim = Sim::new(config, refill);
        let points = split_points(stream.len(), &cuts);
        let event_at = event_at % points.len();
        for (i, pair) in points.windows(2).enumerate() {
            if i == event_at {
                if idle {
                    prop_assert!(matches!(sim.fire(), Some(Timeout::Idle(_))));
                } else {
                    sim.relay.handle_drain();
                }
            }
            sim.read(from, &stream[pair[0]..pair[1]]);
            sim.writable();
        }
        if event_at >= points.len() - 1 {
            if idle { sim.fire(); } else { sim.relay.handle_drain(); }
        }
        sim.writable();
        let to = from.other();
        let got = sim.frames(to);
        let sent = parse(&stream);
        let (last, before) = got.split_last().expect("our Close at least");
        if idle || to == Side::Client {
            prop_assert_eq!(last.close_code(), Some(1001));
            prop_assert_eq!(last.masked, to == Side::Backend);
            prop_assert!(sent.starts_with(before));
        } else {
            // A drain closes towards the client only; the backend's direction is intact.
            prop_assert_eq!(&got, &sent);
        }
    }

    /// Any valid frames from the client followed by any offending frame: the backend gets
    /// exactly the valid frames and a masked 1001, the client 1002 or 1007.
    #[test]
    fn every_violation_ends_the_relay_with_its_codes(
        frames in prop::collection::vec((any::<bool>(), Just(true), 0usize..200), 0..6),
        bad in 0usize..9,
        cuts in prop::collection::vec(any::<usize>(), 0..6),
        from_client in any::<bool>(),
        peer_closes in any::<bool>(),
    ) {
        let from = if from_client { Side::Client } else { Side::Backend };
        let masked = from == Side::Client;
        let mask = masked.then_some(KEY);
        let good = valid_stream(&frames, masked);
        let (offending, code) = [
            (frame(0x80 | OP_TEXT, b"x", (!masked).then_some(KEY)), 1002),
            (frame(0x80 | 0x40 | OP_TEXT, b"rsv1", mask), 1002),
            (frame(0x83, b"op3", mask), 1002),
            (frame(0x80 | OP_PING, &[0; 126], mask), 1002),
            (frame(OP_PING, b"frag", mask), 1002),
            (frame(0x80 | OP_CONTINUATION, b"lone", mask), 1002),
            (frame(0x80 | OP_CLOSE, &[3], mask), 1002),
            (frame(0x80 | OP_CLOSE, &[0x03, 0xEC], mask), 1002),
            (frame(0x80 | OP_CLOSE, &[0x03, 0xE8, 0xC0], mask), 1007),
        ][bad].clone();
        let stream = [good.clone(), offending, text(b"after", masked)].concat();
        let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
        let points = split_points(stream.len(), &cuts);
        for pair in points.windows(2) {
            sim.read(from, &stream[pair[0]..pair[1]]);
        }
        sim.writable();
        let to = from.other();
        // The peer answers our Close with its own, or just ends.
        if peer_closes {
            sim.read(to, &close(1000, b"", !masked));
        } else {
            sim.eof(to);
        }
        sim.writable();
        let got = sim.frames(to);
        let (last, before) = got.split_last().unwrap();
        prop_assert_eq!(before, &parse(&good)[..]);
        let peer_code = if from == Side::Client { 1001 } else { 1014 };
        prop_assert_eq!(last.close_code(), Some(peer_code));
        prop_assert_eq!(closes(&sim.frames(from)), vec![code]);
        // After a Close both ways the relay is done; after an end, it waits for the
        // offender's end (or the linger).
        prop_assert!(sim.relay.is_done() || !peer_closes);
    }

    /// After any events, a relay that winds down has a deadline, and firing deadlines ends
    /// it: no state a timer cannot leave. With an idle timeout, a deadline always exists.
    #[test]
    fn a_relay_always_ends(
        events in prop::collection::vec((0u8..6, prop::collection::vec(any::<u8>(), 0..40)), 0..20),
        idle in any::<bool>(),
    ) {
        let config = RelayConfig { idle: idle.then_some(Duration::from_secs(5)), ..Default::default() };
        let mut sim = Sim::new(config, 64);
        for (kind, bytes) in &events {
            if sim.relay.is_done() {
                break;
            }
            match kind {
                0 => sim.read(Side::Client, bytes),
                1 => sim.read(Side::Backend, bytes),
                2 => sim.eof(Side::Client),
                3 => sim.eof(Side::Backend),
                4 => sim.relay.handle_drain(),
                _ => sim.writable(),
            }
        }
        if !sim.relay.winding_down() && !idle {
            // Quiet and open: never cut unless asked. (Counts waiting have a deadline to be
            // flushed, not a cut; a driver takes them, and then there is none.)
            let _ = sim.relay.take_counts();
            prop_assert_eq!(sim.relay.poll_deadline(Instant::now), None);
            sim.relay.handle_drain();
        }
        for _ in 0..4 {
            if sim.relay.is_done() {
                break;
            }
            prop_assert!(sim.fire().is_some(), "a relay that is not done has a deadline");
        }
        prop_assert!(sim.relay.is_done());
    }
}

/// A Close of ours still waiting for a frame boundary (the drain, mid-frame) gives way to
/// the 1002 of a client that breaks the protocol meanwhile; the relay still ends.
#[test]
fn a_violation_during_a_pending_drain_close_earns_1002() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    let big = text(&[b'a'; 300], false);
    sim.read(Side::Backend, &big[..100]);
    sim.relay.handle_drain();
    sim.read(Side::Client, &text(b"x", false));
    sim.read(Side::Backend, &big[100..]);
    sim.writable();
    let got = sim.frames(Side::Client);
    assert_eq!(
        got[0].payload.len(),
        300,
        "the frame under way finishes first"
    );
    assert_eq!(closes(&got), vec![1002]);
    assert_eq!(closes(&sim.frames(Side::Backend)), vec![1001]);
    sim.read(Side::Backend, &close(1001, b"", false));
    sim.writable();
    assert!(sim.relay.is_done());
}

// ---- the route's message limits and the token's expiry -----------------------------------

thread_local! {
    /// The fake clock the message rate reads in these tests.
    static FAKE_NOW: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

fn fake_now() -> Instant {
    FAKE_NOW.with(|c| *c.get().get_or_insert_with(Instant::now))
}

fn advance_fake_clock(by: Duration) {
    let now = fake_now() + by;
    FAKE_NOW.with(|c| c.set(Some(now)));
}

/// A message over `maxMessageBytes`, whole in one frame or spread over several: the frames
/// before the one that goes over it pass, nothing of that one does; the sender gets 1009
/// (once its peer answered our 1001), the peer 1001. A message of exactly the limit passes.
#[test]
fn a_message_over_max_message_bytes_earns_its_sender_1009_and_the_peer_1001() {
    let config = RelayConfig {
        max_message_bytes: Some(100),
        ..RelayConfig::default()
    };
    for from in [Side::Client, Side::Backend] {
        let masked = from == Side::Client;
        let key = masked.then_some(KEY);
        let fragmented = [
            frame(OP_TEXT, &[b'a'; 60], key),
            frame(OP_CONTINUATION, &[b'b'; 60], key),
        ]
        .concat();
        for offending in [
            text(&[b'x'; 101], masked),
            text(&[b'x'; 1000], masked),
            fragmented,
        ] {
            let mut sim = Sim::new(config, 1 << 20);
            sim.read(from, &[text(&[b'k'; 100], masked), offending].concat());
            sim.writable();
            let to = from.other();
            let got = sim.frames(to);
            assert_eq!(got[0].payload, vec![b'k'; 100], "{from:?}: at the limit");
            let data: Vec<_> = got[1..]
                .iter()
                .filter(|f| f.close_code().is_none())
                .collect();
            // Of the fragmented one, the first frame (60 bytes) went on before the limit.
            assert!(
                data.iter().all(|f| f.payload.len() <= 60),
                "{from:?}: {got:?}"
            );
            assert_eq!(closes(&got), vec![1001], "{from:?}");
            sim.read(to, &close(1001, b"", !masked));
            sim.writable();
            assert_eq!(closes(&sim.frames(from)), vec![1009], "{from:?}");
            assert!(sim.relay.is_done());
            assert_eq!(
                sim.relay.stats().violation,
                Some((from, Violation::MessageTooBig))
            );
        }
    }
}

/// `messagesPerSecond` with a burst: the burst passes at once, the next message does not
/// (sender 1008, peer 1001); after a second of quiet the bucket has refilled.
#[test]
fn messages_over_the_rate_earn_1008_and_the_bucket_refills() {
    let config = RelayConfig {
        message_rate: Some(MessageRate {
            per_second: 2,
            burst: 3,
        }),
        clock: fake_now,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(config, 1 << 20);
    let burst: Vec<u8> = (0..3).flat_map(|_| text(b"m", true)).collect();
    sim.read(Side::Client, &burst);
    advance_fake_clock(Duration::from_secs(1));
    // Two tokens back: two more pass, the third does not.
    let more: Vec<u8> = (0..3).flat_map(|_| text(b"n", true)).collect();
    sim.read(Side::Client, &more);
    sim.writable();
    let got = sim.frames(Side::Backend);
    let passed = got.iter().filter(|f| f.close_code().is_none()).count();
    assert_eq!(passed, 5, "{got:?}");
    assert_eq!(closes(&got), vec![1001]);
    sim.read(Side::Backend, &close(1001, b"", false));
    sim.writable();
    assert_eq!(closes(&sim.frames(Side::Client)), vec![1008]);
    assert_eq!(
        sim.relay.stats().violation,
        Some((Side::Client, Violation::MessageRate))
    );
    // The other direction has its own bucket: the backend's messages were not counted.
}

/// `closeOnTokenExpiry`: at the token's expiry the client gets 1008, the backend 1001, on
/// a frame boundary; then the relay winds down like any close.
#[test]
fn an_expired_token_closes_the_client_with_1008_and_the_backend_with_1001() {
    let start = Instant::now();
    let config = RelayConfig {
        close_at: Some(start + Duration::from_secs(2)),
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(config, 1 << 20);
    sim.now = start;
    assert!(sim.relay.wants_timer());
    // Half a frame towards the client when the token expires: ours waits for its end.
    let long = text(&[b'z'; 200], false);
    sim.read(Side::Backend, &long[..50]);
    assert_eq!(sim.fire(), Some(Timeout::TokenExpired));
    assert_eq!(
        sim.got[Side::Client as usize],
        long[..50],
        "not inside a frame"
    );
    assert_eq!(closes(&sim.frames(Side::Backend)), vec![1001]);
    sim.read(Side::Backend, &long[50..]);
    sim.writable();
    let got = sim.frames(Side::Client);
    assert_eq!(got[0].payload.len(), 200);
    assert_eq!(closes(&got), vec![1008]);
    sim.read(Side::Client, &close(1008, b"", true));
    sim.read(Side::Backend, &close(1001, b"", false));
    assert!(sim.relay.is_done());
}

// ---- scheduled closes (issue 21: gentle drains, rebalancing) ------------------------------

/// A close scheduled for later is a deadline: nothing goes before it; at it the client
/// gets Close 1001 "endpoint removed" (the backend nothing of ours), and the relay winds
/// down as for the drain.
#[test]
fn a_scheduled_close_waits_for_its_moment_then_closes_the_client() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    assert!(!sim.relay.wants_timer());
    let at = sim.now + Duration::from_secs(3);
    sim.relay.handle_close_at(at, CloseReason::EndpointRemoved);
    assert!(sim.relay.wants_timer());
    assert!(!sim.relay.is_draining(), "only wsgate's shutdown drains");
    assert_eq!(sim.relay.poll_deadline(|| sim.now), Some(at));
    // Early: nothing happens.
    assert_eq!(
        sim.relay.handle_timeout(sim.now + Duration::from_secs(1)),
        Timeout::Nothing
    );
    sim.read(Side::Backend, &text(b"still here", false));
    assert_eq!(
        sim.fire(),
        Some(Timeout::Scheduled(CloseReason::EndpointRemoved))
    );
    assert_eq!(sim.now, at);
    let to_client = sim.frames(Side::Client);
    assert_eq!(closes(&to_client), vec![close_code::GOING_AWAY]);
    assert_eq!(to_client.last().unwrap().payload[2..], *b"endpoint removed");
    assert!(closes(&sim.frames(Side::Backend)).is_empty());
    assert!(sim.relay.winding_down());
    // The client answers; its Close goes on to the backend, whose answer ends it.
    sim.read(Side::Client, &close(close_code::GOING_AWAY, b"", true));
    sim.read(Side::Backend, &close(close_code::GOING_AWAY, b"", false));
    assert!(sim.relay.is_done());
    assert_eq!(
        sim.relay.stats().injected_to_client,
        Some(close_code::GOING_AWAY)
    );
}

/// A rebalance closes with 1012; an earlier request replaces a later one, and a later one
/// never postpones it.
#[test]
fn the_earliest_scheduled_close_wins_and_a_rebalance_is_1012() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    let t0 = sim.now;
    sim.relay.handle_close_at(
        t0 + Duration::from_secs(10),
        CloseReason::EndpointTerminating,
    );
    sim.relay
        .handle_close_at(t0 + Duration::from_secs(2), CloseReason::Rebalance);
    sim.relay
        .handle_close_at(t0 + Duration::from_secs(5), CloseReason::EndpointRemoved);
    assert_eq!(
        sim.relay.poll_deadline(|| t0),
        Some(t0 + Duration::from_secs(2))
    );
    assert_eq!(sim.fire(), Some(Timeout::Scheduled(CloseReason::Rebalance)));
    let to_client = sim.frames(Side::Client);
    assert_eq!(closes(&to_client), vec![close_code::SERVICE_RESTART]);
    assert_eq!(to_client[0].payload[2..], *b"rebalancing");
}

/// wsgate's shutdown at a connection's own moment: the relay is draining at once (it
/// stays where it runs, the drain signal is not answered twice), Close 1001 "gateway
/// shutting down" comes at the moment, in the middle of a frame only once it ended.
#[test]
fn a_scheduled_shutdown_drains_at_its_moment_at_a_frame_boundary() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    let at = sim.now + Duration::from_millis(700);
    sim.relay.handle_close_at(at, CloseReason::Shutdown);
    assert!(sim.relay.is_draining());
    // A second shutdown (the signal seen again) changes nothing.
    sim.relay
        .handle_close_at(sim.now + Duration::from_secs(9), CloseReason::Shutdown);
    assert_eq!(sim.relay.poll_deadline(|| sim.now), Some(at));
    // Half a frame from the backend is on its way when the moment comes.
    let whole = text(&[b'x'; 100], false);
    sim.read(Side::Backend, &whole[..40]);
    assert_eq!(sim.fire(), Some(Timeout::Scheduled(CloseReason::Shutdown)));
    assert_eq!(
        sim.got[Side::Client as usize].len(),
        40,
        "nothing mid-frame"
    );
    sim.read(Side::Backend, &whole[40..]);
    let to_client = sim.frames(Side::Client);
    assert_eq!(to_client.len(), 2);
    assert_eq!(closes(&to_client), vec![close_code::GOING_AWAY]);
    assert_eq!(to_client[1].payload[2..], *b"gateway shutting down");
}

/// A scheduled close after the relay already closed (idle) sends no second Close.
#[test]
fn a_scheduled_close_after_another_close_sends_nothing_more() {
    let config = RelayConfig {
        idle: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let mut sim = Sim::new(config, 1 << 20);
    sim.relay
        .handle_close_at(sim.now + Duration::from_secs(2), CloseReason::Rebalance);
    assert!(matches!(sim.fire(), Some(Timeout::Idle(_))));
    assert_eq!(sim.fire(), Some(Timeout::Scheduled(CloseReason::Rebalance)));
    assert_eq!(
        closes(&sim.frames(Side::Client)),
        vec![close_code::GOING_AWAY]
    );
}

// ---- keep-alive (a route's `keepalive`, `machine/keepalive.rs`) -------------------------

const PONG: u8 = 0x80 | crate::proxy::frame::OP_PONG;

fn keepalive_sim() -> Sim {
    let config = RelayConfig {
        keepalive: Some(Keepalive::new(
            Duration::from_secs(30),
            Duration::from_secs(10),
        )),
        ..RelayConfig::default()
    };
    Sim::new(config, 1 << 20)
}

impl Sim {
    /// A read at `at` seconds after the start, noted as the drivers note activity.
    fn read_at(&mut self, start: Instant, at: u64, from: Side, bytes: &[u8]) {
        self.now = start + Duration::from_secs(at);
        self.read(from, bytes);
        self.relay.note_activity(self.now);
    }

    fn pings(&self, to: Side) -> Vec<Parsed> {
        self.frames(to)
            .into_iter()
            .filter(|f| f.b0 == 0x80 | OP_PING)
            .collect()
    }

    /// The Pong a peer on `side` sends back for wsgate's last Ping to it.
    fn answer(&self, side: Side) -> Vec<u8> {
        let ping = self.pings(side).pop().expect("a ping to answer");
        frame(PONG, &ping.payload, (side == Side::Client).then_some(KEY))
    }
}

/// A side quiet for `pingInterval` gets a Ping of wsgate's own: unmasked towards the
/// client, masked towards the backend, with a recognizable payload; nothing earlier.
#[test]
fn keepalive_pings_each_quiet_side_after_the_interval_masked_towards_the_backend() {
    let mut sim = keepalive_sim();
    let start = sim.now;
    assert!(sim.relay.wants_timer() && sim.relay.tracks_activity());
    assert_eq!(
        sim.relay.poll_deadline(|| start),
        Some(start + Duration::from_secs(30))
    );
    assert_eq!(sim.fire(), Some(Timeout::KeepalivePing));
    assert_eq!(sim.now, start + Duration::from_secs(30));
    let to_client = sim.pings(Side::Client);
    let to_backend = sim.pings(Side::Backend);
    assert_eq!((to_client.len(), to_backend.len()), (1, 1));
    assert!(!to_client[0].masked && to_backend[0].masked);
    for ping in [&to_client[0], &to_backend[0]] {
        assert!(ping.payload.starts_with(b"wsgate keepalive "), "{ping:?}");
    }
    let stats = sim.relay.stats();
    assert_eq!((stats.pings_to_client, stats.pings_to_backend), (1, 1));
    assert_eq!(
        (stats.bytes_up, stats.bytes_down),
        (0, 0),
        "pings are not traffic"
    );
}

/// Bytes from a side restart its quiet time; bytes to it do not.
#[test]
fn keepalive_bytes_from_a_side_reset_its_timer() {
    let mut sim = keepalive_sim();
    let start = sim.now;
    sim.read_at(start, 20, Side::Client, &text(b"hi", true));
    assert_eq!(sim.fire(), Some(Timeout::KeepalivePing));
    assert_eq!(sim.now, start + Duration::from_secs(30));
    assert!(
        sim.pings(Side::Client).is_empty(),
        "the client spoke at 20 s"
    );
    assert_eq!(sim.pings(Side::Backend).len(), 1);
    // The backend answers at 35 s; the client's Ping is due at 50 s.
    let pong = sim.answer(Side::Backend);
    sim.read_at(start, 35, Side::Backend, &pong);
    assert_eq!(sim.fire(), Some(Timeout::KeepalivePing));
    assert_eq!(sim.now, start + Duration::from_secs(50));
    assert_eq!(sim.pings(Side::Client).len(), 1);
    let pong = sim.answer(Side::Client);
    sim.read_at(start, 55, Side::Client, &pong);
    // Then the backend's next one, 30 s after its Pong.
    assert_eq!(sim.fire(), Some(Timeout::KeepalivePing));
    assert_eq!(sim.now, start + Duration::from_secs(65));
    assert_eq!(sim.pings(Side::Backend).len(), 2);
}

/// The Pong answering our Ping is taken out of the stream, whole or split across reads,
/// and the frames around it go on in order; another Pong passes untouched.
#[test]
fn keepalive_a_pong_answering_our_ping_is_not_forwarded_another_pong_is() {
    for cut in [1usize, 3, 9, 20, 40, usize::MAX] {
        let mut sim = keepalive_sim();
        let start = sim.now;
        assert_eq!(sim.fire(), Some(Timeout::KeepalivePing));
        let ours = sim.answer(Side::Client);
        let theirs = frame(PONG, b"app pong", Some(KEY));
        let mut stream = text(b"one", true);
        stream.extend_from_slice(&ours);
        stream.extend_from_slice(&theirs);
        stream.extend_from_slice(&text(b"two", true));
        let cut = cut.min(stream.len());
        for part in [&stream[..cut], &stream[cut..]] {
            if !part.is_empty() {
                sim.read_at(start, 31, Side::Client, part);
            }
        }
        sim.writable();
        let got: Vec<_> = sim
            .frames(Side::Backend)
            .into_iter()
            .filter(|f| f.b0 != 0x80 | OP_PING)
            .collect();
        let payloads: Vec<&[u8]> = got.iter().map(|f| &f.payload[..]).collect();
        assert_eq!(payloads, [&b"one"[..], b"app pong", b"two"], "cut at {cut}");
        assert_eq!(got[1].b0, PONG);
        assert_eq!(
            sim.relay.stats().bytes_up,
            (stream.len() - ours.len()) as u64,
            "our Pong is not counted as relayed"
        );
        // The client answered: no Close at 40 s; its next Ping is due 30 s after 31 s.
        let backend_pong = sim.answer(Side::Backend);
        sim.read_at(start, 32, Side::Backend, &backend_pong);
        assert!(sim.relay.stats().bytes_down == 0);
        assert_eq!(sim.fire(), Some(Timeout::KeepalivePing));
        assert_eq!(sim.now, start + Duration::from_secs(61));
        assert!(closes(&sim.frames(Side::Backend)).is_empty());
        assert!(sim.frames(Side::Client).iter().all(|f| f.b0 != PONG));
    }
}

/// A side that sends nothing within `pongTimeout` of our Ping is gone: the backend gets
/// Close 1001 when the client is gone, the client Close 1011 when the backend is.
#[test]
fn keepalive_no_answer_closes_the_other_side_1001_or_1011() {
    for (gone, alive, code) in [
        (Side::Client, Side::Backend, 1001),
        (Side::Backend, Side::Client, 1011),
    ] {
        let mut sim = keepalive_sim();
        let start = sim.now;
        assert_eq!(sim.fire(), Some(Timeout::KeepalivePing));
        let pong = sim.answer(alive);
        sim.read_at(start, 31, alive, &pong);
        assert_eq!(sim.fire(), Some(Timeout::KeepaliveUnanswered(gone)));
        assert_eq!(sim.now, start + Duration::from_secs(40));
        assert_eq!(closes(&sim.frames(alive)), vec![code], "{gone:?} gone");
        assert!(closes(&sim.frames(gone)).is_empty());
        assert!(sim.relay.winding_down());
        assert!(!sim.relay.wants_read(gone), "a gone side is not read");
        let stats = sim.relay.stats();
        assert_eq!(stats.unanswered, Some(gone));
        let injected = match alive {
            Side::Client => stats.injected_to_client,
            Side::Backend => stats.injected_to_upstream,
        };
        assert_eq!(injected, Some(code));
        // The alive side answers our Close: then the relay is over.
        sim.read(alive, &close(code, b"", alive == Side::Client));
        sim.writable();
        assert!(sim.relay.is_done() || sim.fire() == Some(Timeout::LingerExpired));
    }
}

/// A Ping due while a frame is half-way to that side waits for the frame's end, and what
/// follows in the same read goes on behind it; the side's answer time starts again then.
#[test]
fn keepalive_the_ping_waits_for_a_frame_boundary_mid_message() {
    let mut sim = keepalive_sim();
    let start = sim.now;
    let long = text(&[b'z'; 200], false);
    sim.read_at(start, 5, Side::Backend, &long[..50]);
    // At 30 s the client is due (the backend spoke at 5 s).
    assert_eq!(sim.fire(), Some(Timeout::Nothing));
    assert_eq!(sim.now, start + Duration::from_secs(30));
    assert_eq!(
        sim.got[Side::Client as usize],
        long[..50],
        "not inside a frame"
    );
    let mut rest = long[50..].to_vec();
    rest.extend_from_slice(&text(b"after", false));
    sim.read_at(start, 33, Side::Backend, &rest);
    sim.writable();
    let got = sim.frames(Side::Client);
    let kinds: Vec<(u8, usize)> = got.iter().map(|f| (f.b0, f.payload.len())).collect();
    assert_eq!(
        kinds,
        [(0x81, 200), (0x80 | OP_PING, 25), (0x81, 5)],
        "{got:?}"
    );
    // Sent late (33 s): the client gets its full 10 s from the 40 s deadline.
    assert_eq!(sim.fire(), Some(Timeout::Nothing));
    assert_eq!(sim.now, start + Duration::from_secs(40));
    let deadline = sim.relay.poll_deadline(|| start).unwrap();
    assert_eq!(deadline, start + Duration::from_secs(50));
    let pong = sim.answer(Side::Client);
    sim.read_at(start, 45, Side::Client, &pong);
    assert!(sim.frames(Side::Backend).iter().all(|f| f.b0 != PONG));
    assert!(closes(&sim.frames(Side::Client)).is_empty());
}

/// Without `keepalive`, a quiet relay has no timer and sends nothing.
#[test]
fn keepalive_off_by_default_a_quiet_relay_has_no_timer() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    assert!(!sim.relay.wants_timer());
    assert_eq!(sim.fire(), None);
    assert!(sim.got.iter().all(Vec::is_empty));
}

/// Who closed first (the access log's "closed by"): a side's Close, even split across
/// reads, with its code; a side that ends without one; wsgate's own Close (drain), which a
/// later Close of a side does not displace. Each side's Close code is kept too.
#[test]
fn the_first_to_close_is_recorded_with_its_code() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    let c = close(4000, b"done", true);
    sim.read(Side::Client, &c[..3]);
    assert_eq!(sim.relay.stats().closed_by, None);
    sim.read(Side::Client, &c[3..]);
    sim.read(Side::Backend, &close(4000, b"", false));
    let stats = sim.relay.stats();
    assert_eq!(
        stats.closed_by,
        Some(ClosedBy::Peer {
            side: Side::Client,
            code: 4000
        })
    );
    assert_eq!(
        (stats.client_close, stats.backend_close),
        (Some(4000), Some(4000))
    );

    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.read(Side::Client, &text(b"hi", true));
    sim.eof(Side::Backend);
    assert_eq!(
        sim.relay.stats().closed_by,
        Some(ClosedBy::Gone(Side::Backend))
    );
    assert_eq!(sim.relay.stats().backend_close, None);

    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.relay.handle_drain();
    sim.owed(Side::Client);
    sim.read(Side::Client, &frame(0x80 | OP_CLOSE, &[], Some(KEY)));
    let stats = sim.relay.stats();
    match stats.closed_by {
        Some(ClosedBy::Gateway(close)) => {
            assert_eq!(
                (close.code(), close.reason()),
                (1001, "gateway shutting down")
            );
        }
        other => panic!("expected wsgate's drain, got {other:?}"),
    }
    // A Close without a code reports 1005.
    assert_eq!(stats.client_close, Some(1005));
}

/// Counts waiting are due by COUNTS_DUE_AFTER after the first read that made them, through
/// the relay's deadline (asked for once); once taken, a quiet relay has no deadline. The
/// message sizes come with them.
#[test]
fn waiting_counts_get_a_deadline_and_a_quiet_relay_none() {
    let config = RelayConfig {
        clock: fake_now,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(config, 1 << 20);
    assert!(!sim.relay.wants_timer());
    // Pins the fake clock.
    advance_fake_clock(Duration::ZERO);
    let start = fake_now();
    sim.read(Side::Client, &text(&[b'x'; 100], true));
    sim.read(Side::Backend, &text(&[b'y'; 10], false));
    assert!(sim.relay.wants_counts_timer() && sim.relay.wants_timer());
    assert!(!sim.relay.counts_due());
    let at = sim
        .relay
        .poll_deadline(fake_now)
        .expect("a counts deadline");
    // To the second: due 9 to 10 s after the first read.
    assert!(
        at <= start + COUNTS_DUE_AFTER && at > start + COUNTS_DUE_AFTER - Duration::from_secs(1),
        "{:?} after the read",
        at - start
    );
    assert!(!sim.relay.wants_counts_timer(), "asked for once");
    assert_eq!(
        sim.relay.handle_timeout(start + COUNTS_DUE_AFTER / 2),
        Timeout::Nothing
    );
    assert!(!sim.relay.counts_due());
    // An early wake-up (a deadline of an earlier period) asks for the deadline again.
    assert!(sim.relay.wants_counts_timer());
    assert_eq!(sim.relay.poll_deadline(fake_now), Some(at));
    assert_eq!(sim.relay.handle_timeout(at), Timeout::Nothing);
    assert!(sim.relay.counts_due());
    let counts = sim.relay.take_counts();
    assert_eq!((counts.messages_up, counts.messages_down), (1, 1));
    let up = counts.sizes_up.expect("sizes up");
    assert_eq!((up.buckets[1], up.sum), (1, 100));
    assert_eq!(counts.sizes_down.expect("sizes down").buckets[0], 1);
    assert!(!sim.relay.counts_due());
    assert!(!sim.relay.wants_timer());
    assert_eq!(sim.relay.poll_deadline(fake_now), None);
}

/// The access log's "who closed" for wsgate's scheduled closes and keep-alive timeouts:
/// wsgate, with the Close's code and reason, even when a side closes later.
#[test]
fn scheduled_closes_and_silent_peers_are_closed_by_wsgate() {
    let mut sim = Sim::new(RelayConfig::default(), 1 << 20);
    sim.relay
        .handle_close_at(sim.now + Duration::from_secs(1), CloseReason::Rebalance);
    assert_eq!(sim.fire(), Some(Timeout::Scheduled(CloseReason::Rebalance)));
    sim.read(Side::Client, &close(close_code::SERVICE_RESTART, b"", true));
    match sim.relay.stats().closed_by {
        Some(ClosedBy::Gateway(close)) => {
            assert_eq!((close.code(), close.reason()), (1012, "rebalancing"))
        }
        other => panic!("expected wsgate's rebalance, got {other:?}"),
    }

    let mut sim = keepalive_sim();
    let start = sim.now;
    assert_eq!(sim.fire(), Some(Timeout::KeepalivePing));
    let pong = sim.answer(Side::Backend);
    sim.read_at(start, 31, Side::Backend, &pong);
    assert_eq!(sim.fire(), Some(Timeout::KeepaliveUnanswered(Side::Client)));
    match sim.relay.stats().closed_by {
        Some(ClosedBy::Gateway(close)) => assert_eq!(
            (close.code(), close.reason()),
            (1001, "client did not answer keep-alive ping")
        ),
        other => panic!("expected wsgate's keep-alive, got {other:?}"),
    }
}

/// A relay whose driver sweeps its counts (a relay thread) gets no deadline for them: a
/// busy relay without an idle limit has no timer at all; the sweep asks `counts_due_by`.
#[test]
fn swept_counts_need_no_deadline_and_are_due_by_their_time() {
    let config = RelayConfig {
        clock: fake_now,
        ..RelayConfig::default()
    };
    let mut sim = Sim::new(config, 1 << 20);
    sim.relay.counts_swept();
    advance_fake_clock(Duration::ZERO);
    let start = fake_now();
    sim.read(Side::Client, &text(&[b'x'; 10], true));
    assert!(!sim.relay.wants_timer() && !sim.relay.wants_counts_timer());
    assert_eq!(sim.relay.poll_deadline(fake_now), None);
    assert!(!sim.relay.counts_due_by(start + COUNTS_DUE_AFTER / 2));
    assert!(sim.relay.counts_due_by(start + COUNTS_DUE_AFTER));
    let counts = sim.relay.take_counts();
    assert_eq!(counts.messages_up, 1);
    assert!(!sim.relay.counts_due_by(start + COUNTS_DUE_AFTER * 3));
}
