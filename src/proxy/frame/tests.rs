use super::*;
use proptest::prelude::*;

const CLIENT: FrameRules = FrameRules {
    masked: true,
    extensions: Extensions::None,
};
const BACKEND: FrameRules = FrameRules {
    masked: false,
    extensions: Extensions::None,
};
const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// Encodes one frame the way a peer would; `b0` is FIN, RSV and opcode.
pub(crate) fn raw_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    raw_frame(if fin { 0x80 } else { 0 } | opcode, payload, mask)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Feeds `stream` in reads of the given sizes; returns everything that would be forwarded,
/// in order, and the tracker.
fn forwarded(rules: FrameRules, stream: &[u8], chunks: &[usize]) -> (Vec<u8>, FrameTracker) {
    let mut t = FrameTracker::new(rules);
    let mut out = vec![];
    let mut off = 0;
    let mut sizes = chunks.iter().cycle();
    while off < stream.len() {
        let size = (*sizes.next().unwrap()).max(1);
        let chunk = &stream[off..(off + size).min(stream.len())];
        let r = t.track(chunk);
        out.extend_from_slice(t.released(r.held_len));
        out.extend_from_slice(&chunk[..r.forward]);
        out.extend(t.take_held_close());
        off += chunk.len();
    }
    (out, t)
}

/// Frames of every length encoding pass whole, and count as messages.
#[test]
fn frames_of_all_length_encodings_pass_whole() {
    let mut stream = vec![];
    for len in [0, 5, 125, 126, 300, 70_000] {
        stream.extend(frame(OP_BINARY, true, &vec![7u8; len], Some(KEY)));
    }
    for chunks in [vec![stream.len()], vec![1], vec![3, 7, 1000]] {
        let (out, t) = forwarded(CLIENT, &stream, &chunks);
        assert_eq!(out, stream, "split {chunks:?}");
        assert_eq!(t.messages(), 6);
        assert!(t.at_boundary());
        assert_eq!(t.violation(), None);
    }
}

/// A fragmented message with a ping in the middle counts as one message, and the
/// tracker is at a boundary between its fragments.
#[test]
fn fragmented_message_with_interleaved_ping_is_one_message() {
    let mut t = FrameTracker::new(BACKEND);
    let first = frame(OP_TEXT, false, b"hel", None);
    let ping = frame(OP_PING, true, b"p", None);
    let last = frame(OP_CONTINUATION, true, b"lo", None);
    assert_eq!(t.track(&first).forward, first.len());
    assert!(t.at_boundary());
    assert_eq!(t.messages(), 0);
    assert_eq!(t.track(&ping).forward, ping.len());
    assert_eq!(t.track(&last).forward, last.len());
    assert_eq!(t.messages(), 1);
}

/// A header split across reads is held back until it is complete, then released first.
#[test]
fn split_header_is_held_then_released() {
    let f = frame(OP_TEXT, true, &[b'x'; 200], Some(KEY));
    let mut t = FrameTracker::new(CLIENT);
    let r = t.track(&f[..3]);
    assert_eq!((t.released(r.held_len), r.forward), (&[][..], 0));
    assert!(t.at_boundary(), "nothing of the frame went on");
    let r = t.track(&f[3..10]);
    assert_eq!(t.released(r.held_len), &f[..3]);
    assert_eq!(r.forward, 7);
    assert!(!t.at_boundary());
}

/// A Close frame goes on only once complete and checked; nothing after it does.
#[test]
fn close_is_held_until_complete_and_ends_the_direction() {
    let close = frame(OP_CLOSE, true, &close_payload(1000, b"bye"), Some(KEY));
    let text = frame(OP_TEXT, true, b"late", Some(KEY));
    let mut stream = close.clone();
    stream.extend_from_slice(&text);
    for chunks in [vec![stream.len()], vec![1], vec![4, 3]] {
        let (out, t) = forwarded(CLIENT, &stream, &chunks);
        assert_eq!(out, close, "split {chunks:?}");
        assert!(t.close_seen());
        assert_eq!(t.violation(), None);
    }
    let mut t = FrameTracker::new(CLIENT);
    assert_eq!(t.track(&close[..close.len() - 1]).forward, 0);
    assert!(!t.close_seen());
    assert!(
        t.at_boundary(),
        "a held Close leaves the destination at a boundary"
    );
}

/// Each rule of RFC 6455 §5 a gateway checks, and what it is called.
#[test]
fn each_rule_is_a_named_violation() {
    let text = |b0| raw_frame(b0, b"hi", Some(KEY));
    let cases: Vec<(&str, FrameRules, Vec<u8>, Violation)> = vec![
        (
            "unmasked client frame",
            CLIENT,
            frame(OP_TEXT, true, b"hi", None),
            Violation::Masking,
        ),
        (
            "masked backend frame",
            BACKEND,
            frame(OP_TEXT, true, b"hi", Some(KEY)),
            Violation::Masking,
        ),
        (
            "RSV1 without extension",
            CLIENT,
            text(0x80 | 0x40 | OP_TEXT),
            Violation::ReservedBits,
        ),
        (
            "RSV2",
            CLIENT,
            text(0x80 | 0x20 | OP_TEXT),
            Violation::ReservedBits,
        ),
        (
            "RSV3 on close",
            CLIENT,
            text(0x80 | 0x10 | OP_CLOSE),
            Violation::ReservedBits,
        ),
        ("opcode 3", CLIENT, text(0x83), Violation::ReservedOpcode),
        ("opcode 0xB", CLIENT, text(0x8B), Violation::ReservedOpcode),
        (
            "ping of 126",
            CLIENT,
            frame(OP_PING, true, &[0; 126], Some(KEY)),
            Violation::ControlTooLong,
        ),
        (
            "fragmented ping",
            CLIENT,
            frame(OP_PING, false, b"p", Some(KEY)),
            Violation::ControlFragmented,
        ),
        (
            "lone continuation",
            CLIENT,
            frame(OP_CONTINUATION, true, b"x", Some(KEY)),
            Violation::UnexpectedContinuation,
        ),
        (
            "text inside fragmented",
            CLIENT,
            [
                frame(OP_TEXT, false, b"a", Some(KEY)),
                frame(OP_TEXT, true, b"b", Some(KEY)),
            ]
            .concat(),
            Violation::MessageInsideFragmented,
        ),
        (
            "64-bit length overflow",
            BACKEND,
            vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
            Violation::LengthOverflow,
        ),
        (
            "close of one byte",
            CLIENT,
            frame(OP_CLOSE, true, &[3], Some(KEY)),
            Violation::CloseTooShort,
        ),
        (
            "close code 1005",
            CLIENT,
            frame(OP_CLOSE, true, &close_payload(1005, b""), Some(KEY)),
            Violation::CloseCode,
        ),
        (
            "close code 999",
            BACKEND,
            frame(OP_CLOSE, true, &close_payload(999, b""), None),
            Violation::CloseCode,
        ),
        (
            "close code 5000",
            CLIENT,
            frame(OP_CLOSE, true, &close_payload(5000, b""), Some(KEY)),
            Violation::CloseCode,
        ),
        (
            "close reason not UTF-8",
            CLIENT,
            frame(
                OP_CLOSE,
                true,
                &close_payload(1000, &[0xCE, 0xBA, 0xFF]),
                Some(KEY),
            ),
            Violation::CloseReasonNotUtf8,
        ),
    ];
    for (name, rules, bytes, want) in cases {
        for chunks in [vec![bytes.len()], vec![1]] {
            let (_, t) = forwarded(rules, &bytes, &chunks);
            assert_eq!(t.violation(), Some(want), "{name}, split {chunks:?}");
        }
    }
}

/// The close code a violation earns: 1007 for a reason that is not UTF-8, else 1002.
#[test]
fn violations_map_to_close_codes() {
    assert_eq!(Violation::CloseReasonNotUtf8.close_code(), 1007);
    assert_eq!(Violation::Masking.close_code(), 1002);
    assert_eq!(Violation::CloseCode.close_code(), 1002);
}

/// permessage-deflate allows RSV1 on a message's first frame only; an unknown extension
/// leaves RSV bits unchecked.
#[test]
fn rsv1_follows_the_negotiated_extension() {
    let deflate = FrameRules {
        masked: true,
        extensions: Extensions::PerMessageDeflate,
    };
    let first = raw_frame(0x40 | OP_TEXT, b"a", Some(KEY));
    let cont = raw_frame(0x80 | OP_CONTINUATION, b"b", Some(KEY));
    let (_, t) = forwarded(deflate, &[first.clone(), cont].concat(), &[100]);
    assert_eq!(t.violation(), None);
    assert_eq!(t.messages(), 1);
    let cont_rsv1 = raw_frame(0x80 | 0x40 | OP_CONTINUATION, b"b", Some(KEY));
    let (_, t) = forwarded(deflate, &[first, cont_rsv1].concat(), &[100]);
    assert_eq!(t.violation(), Some(Violation::ReservedBits));
    let ping_rsv1 = raw_frame(0x80 | 0x40 | OP_PING, b"", Some(KEY));
    let (_, t) = forwarded(deflate, &ping_rsv1, &[100]);
    assert_eq!(t.violation(), Some(Violation::ReservedBits));
    let rsv2 = raw_frame(0x80 | 0x20 | OP_BINARY, b"", Some(KEY));
    let (_, t) = forwarded(deflate, &rsv2, &[100]);
    assert_eq!(t.violation(), Some(Violation::ReservedBits));
    let unknown = FrameRules {
        masked: true,
        extensions: Extensions::Unknown,
    };
    let (_, t) = forwarded(unknown, &rsv2, &[100]);
    assert_eq!(t.violation(), None);
}

/// Valid close codes pass: the registered ones a peer may send and the private ranges.
#[test]
fn valid_close_codes() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ] {
        assert!(valid_close_code(code), "{code}");
    }
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        assert!(!valid_close_code(code), "{code}");
    }
}

/// Our Close frames parse back as valid Close frames with the right code, masked or not,
/// and a long reason is cut at a character boundary.
#[test]
fn injected_close_frames_are_well_formed() {
    for (mask, rules) in [(None, BACKEND), (Some([0xA1, 0xB2, 0xC3, 0xD4]), CLIENT)] {
        let mut out = vec![];
        close_frame(1001, "going away", mask, &mut out);
        let mut t = FrameTracker::new(rules);
        assert_eq!(t.track(&out).forward, out.len());
        assert!(t.close_seen());
        let payload_start = if mask.is_some() { 6 } else { 2 };
        let payload: Vec<u8> = out[payload_start..]
            .iter()
            .enumerate()
            .map(|(i, b)| mask.map_or(*b, |k| b ^ k[i % 4]))
            .collect();
        assert_eq!(&payload[..2], &1001u16.to_be_bytes());
        assert_eq!(&payload[2..], b"going away");
    }
    let long = "é".repeat(100);
    let mut out = vec![];
    close_frame(1000, &long, None, &mut out);
    let mut t = FrameTracker::new(BACKEND);
    assert_eq!(t.track(&out).forward, out.len());
    assert_eq!(t.violation(), None);
    assert!(out.len() <= 2 + 125);
}

/// Valid frames of any kind, as a client (masked) or backend would send them.
fn valid_stream(frames: &[(u8, bool, usize)], masked: bool) -> (Vec<u8>, u64) {
    let mut stream = vec![];
    let mut fragmented = false;
    let mut messages = 0;
    for &(kind, fin, len) in frames {
        let mask = masked.then_some(KEY);
        match kind % 3 {
            0 => {
                let op = if fragmented { OP_CONTINUATION } else { OP_TEXT };
                stream.extend(frame(op, fin, &vec![b'a'; len], mask));
                fragmented = !fin;
                messages += u64::from(fin);
            }
            1 => stream.extend(frame(OP_PING, true, &vec![1; len % 126], mask)),
            _ => stream.extend(frame(OP_PONG, true, &vec![2; len % 126], mask)),
        }
    }
    (stream, messages)
}

proptest! {
    /// Any valid frame stream, split into reads anywhere, goes on byte for byte, with the
    /// same message count and no violation.
    #[test]
    fn valid_streams_pass_whole_for_any_split(
        frames in prop::collection::vec((0u8..3, any::<bool>(), 0usize..300), 0..20),
        chunks in prop::collection::vec(1usize..64, 1..10),
        masked in any::<bool>(),
    ) {
        let (stream, messages) = valid_stream(&frames, masked);
        let rules = FrameRules { masked, extensions: Extensions::None };
        let (out, t) = forwarded(rules, &stream, &chunks);
        prop_assert_eq!(&out, &stream);
        prop_assert_eq!(t.messages(), messages);
        prop_assert_eq!(t.violation(), None);
        prop_assert!(t.at_boundary());
    }

    /// Arbitrary bytes never panic, and what goes on does not depend on how they are split
    /// into reads; what goes on is always a prefix of the stream.
    #[test]
    fn arbitrary_bytes_forward_a_prefix_whatever_the_split(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        chunks in prop::collection::vec(1usize..64, 1..10),
        masked in any::<bool>(),
        ext in 0u8..3,
    ) {
        let extensions = [Extensions::None, Extensions::PerMessageDeflate, Extensions::Unknown][ext as usize];
        let rules = FrameRules { masked, extensions };
        let (whole, tw) = forwarded(rules, &bytes, &[bytes.len().max(1)]);
        let (split, ts) = forwarded(rules, &bytes, &chunks);
        prop_assert!(bytes.starts_with(&whole));
        prop_assert!(bytes.starts_with(&split));
        // A split can only hold back a trailing partial frame the whole read also could
        // not finish; everything complete goes on the same.
        prop_assert_eq!(tw.violation(), ts.violation());
        prop_assert_eq!(tw.messages(), ts.messages());
        prop_assert_eq!(tw.close_seen(), ts.close_seen());
        prop_assert_eq!(whole, split);
    }

    /// A stream of valid frames followed by an offending one: everything before it goes
    /// on, nothing of it does.
    #[test]
    fn nothing_of_an_offending_frame_goes_on(
        frames in prop::collection::vec((0u8..3, Just(true), 0usize..200), 0..8),
        bad in 0usize..6,
        chunks in prop::collection::vec(1usize..64, 1..10),
    ) {
        let (good, _) = valid_stream(&frames, true);
        let offending = [
            frame(OP_TEXT, true, b"unmasked", None),
            raw_frame(0x80 | 0x20 | OP_BINARY, b"rsv2", Some(KEY)),
            raw_frame(0x84, b"op4", Some(KEY)),
            frame(OP_PING, false, b"frag", Some(KEY)),
            frame(OP_CONTINUATION, true, b"lone", Some(KEY)),
            frame(OP_CLOSE, true, &close_payload(1004, b""), Some(KEY)),
        ][bad].clone();
        let stream = [good.clone(), offending, frame(OP_TEXT, true, b"after", Some(KEY))].concat();
        let (out, t) = forwarded(CLIENT, &stream, &chunks);
        prop_assert_eq!(out, good);
        prop_assert!(t.violation().is_some());
    }
}

/// The branch-free header length agrees with RFC 6455 §5.2 for every second byte.
#[test]
fn header_len_of_every_second_byte() {
    for b1 in 0..=255u8 {
        let ext = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        assert_eq!(super::header_len_of(b1), 2 + ext + mask, "b1 = {b1:#04x}");
    }
}

#[test]
fn message_sizes_fall_in_their_buckets() {
    for (len, bucket) in [
        (0, 0),
        (1, 0),
        (64, 0),
        (65, 1),
        (256, 1),
        (257, 2),
        (4096, 3),
        (4097, 4),
        (16 << 20, 9),
        ((16 << 20) + 1, 10),
        (u64::MAX, 10),
    ] {
        assert_eq!(size_bucket(len), bucket, "{len}");
    }
    for (i, bound) in MESSAGE_SIZE_BOUNDS.iter().enumerate() {
        assert_eq!(size_bucket(*bound), i);
        assert_eq!(size_bucket(bound + 1), i + 1);
    }
}

/// Whole small messages (the fast path), a fragmented one with a ping inside, and a large
/// one split across reads are each counted once, by their payload size.
#[test]
fn each_message_size_is_counted_once() {
    let rules = FrameRules {
        masked: true,
        extensions: Extensions::None,
    };
    let key = Some([1, 2, 3, 4]);
    let mut stream = frame(OP_TEXT, true, &[b'a'; 10], key);
    stream.extend(frame(OP_BINARY, true, &[b'b'; 100], key));
    stream.extend(frame(OP_TEXT, false, &[b'c'; 200], key));
    stream.extend(frame(OP_PING, true, b"p", key));
    stream.extend(frame(OP_CONTINUATION, true, &[b'd'; 200], key));
    stream.extend(frame(OP_BINARY, true, &vec![b'e'; 70_000], key));
    // Split reads (every frame through the general path) and one read (the two small
    // messages through the fast path, counted inline and folded in at the take).
    for reads in [&[7, 1000, 5000][..], &[stream.len()][..]] {
        let (out, mut tracker) = forwarded(rules, &stream, reads);
        assert_eq!(out, stream);
        assert_eq!(tracker.messages(), 4);
        let sizes = tracker.take_sizes(4).expect("sizes");
        let mut want = [0u32; MESSAGE_SIZE_BOUNDS.len() + 1];
        want[0] = 1; // 10
        want[1] = 1; // 100
        want[2] = 1; // 400
        want[6] = 1; // 70,000
        assert_eq!(sizes.buckets, want, "reads {reads:?}");
        assert_eq!(sizes.sum, 10 + 100 + 400 + 70_000);
        assert!(tracker.take_sizes(0).is_none(), "taken");
    }
}
