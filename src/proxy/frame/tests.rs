use super::*;
use proptest::prelude::*;

/// Encodes one frame the way a peer would.
fn frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
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

/// Offsets of every frame end, feeding the stream in the given chunk sizes.
fn boundaries(stream: &[u8], chunks: &[usize]) -> (Vec<usize>, FrameTracker) {
    let mut t = FrameTracker::new();
    let mut ends = vec![];
    let mut off = 0;
    let mut sizes = chunks.iter().cycle();
    while off < stream.len() {
        let size = (*sizes.next().unwrap()).max(1);
        let chunk = &stream[off..(off + size).min(stream.len())];
        let mut pos = 0;
        while pos < chunk.len() {
            let (n, end) = t.advance(&chunk[pos..]);
            pos += n;
            if end.is_some() {
                ends.push(off + pos);
            }
        }
        off += chunk.len();
    }
    (ends, t)
}

/// Frame ends are found for small, 16-bit and 64-bit lengths, masked or not.
#[test]
fn finds_ends_of_all_length_encodings() {
    let mut stream = vec![];
    let mut expected = vec![];
    for (len, mask) in [
        (0, None),
        (5, Some([1, 2, 3, 4])),
        (300, None),
        (70_000, Some([9, 9, 9, 9])),
    ] {
        stream.extend(frame(OP_BINARY, true, &vec![7u8; len], mask));
        expected.push(stream.len());
    }
    let (ends, t) = boundaries(&stream, &[stream.len()]);
    assert_eq!(ends, expected);
    assert_eq!(t.messages(), 4);
    assert!(t.at_boundary());
}

/// A fragmented message with a ping in the middle counts as one message, and the
/// tracker is at a boundary between its fragments.
#[test]
fn fragmented_message_with_interleaved_ping_is_one_message() {
    let mut t = FrameTracker::new();
    let first = frame(OP_TEXT, false, b"hel", None);
    let ping = frame(OP_PING, true, b"p", None);
    let last = frame(OP_CONTINUATION, true, b"lo", None);
    assert_eq!(
        t.advance(&first),
        (
            first.len(),
            Some(FrameEnd {
                opcode: OP_TEXT,
                fin: false
            })
        )
    );
    assert!(t.at_boundary());
    assert_eq!(t.messages(), 0);
    t.track(&ping);
    t.track(&last);
    assert_eq!(t.messages(), 1);
}

/// A Close frame is noticed only once it is complete.
#[test]
fn close_seen_after_complete_close_frame() {
    let mut t = FrameTracker::new();
    let close = frame(OP_CLOSE, true, &[0x03, 0xE8], Some([1, 2, 3, 4]));
    t.track(&close[..close.len() - 1]);
    assert!(!t.close_seen());
    assert!(!t.at_boundary());
    t.track(&close[close.len() - 1..]);
    assert!(t.close_seen());
}

/// Bytes that cannot be frames make the tracker give up injecting, not panic.
#[test]
fn garbage_desyncs_instead_of_panicking() {
    for bad in [
        vec![0x83, 0x00],                           // reserved opcode
        vec![0x09, 0x00],                           // fragmented ping
        vec![0x89, 126, 0x00, 0x80],                // oversized control frame
        vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0], // 64-bit length with top bit
    ] {
        let mut t = FrameTracker::new();
        t.track(&bad);
        assert!(t.desynced(), "{bad:?}");
        assert!(!t.at_boundary());
    }
}

/// Our Close frames parse back as Close frames with the right code, masked or not.
#[test]
fn injected_close_frames_are_well_formed() {
    for mask in [None, Some([0xA1, 0xB2, 0xC3, 0xD4])] {
        let mut out = vec![];
        close_frame(1001, "going away", mask, &mut out);
        let mut t = FrameTracker::new();
        assert_eq!(
            t.advance(&out),
            (
                out.len(),
                Some(FrameEnd {
                    opcode: OP_CLOSE,
                    fin: true
                })
            )
        );
        let payload_start = if mask.is_some() { 6 } else { 2 };
        let payload: Vec<u8> = out[payload_start..]
            .iter()
            .enumerate()
            .map(|(i, b)| mask.map_or(*b, |k| b ^ k[i % 4]))
            .collect();
        assert_eq!(&payload[..2], &1001u16.to_be_bytes());
        assert_eq!(&payload[2..], b"going away");
    }
}

proptest! {
    /// Boundaries do not depend on how the stream is split into reads.
    #[test]
    fn boundaries_independent_of_split(
        frames in prop::collection::vec((0u8..3, any::<bool>(), 0usize..300, any::<bool>()), 1..20),
        chunks in prop::collection::vec(1usize..64, 1..10),
    ) {
        let mut stream = vec![];
        for (op, fin, len, masked) in &frames {
            let op = [OP_TEXT, OP_BINARY, OP_PING][*op as usize];
            let len = if op == OP_PING { len % 126 } else { *len };
            let fin = op == OP_PING || *fin;
            stream.extend(frame(op, fin, &vec![0xAB; len], masked.then_some([1, 2, 3, 4])));
        }
        let (whole, _) = boundaries(&stream, &[stream.len()]);
        let (split, t) = boundaries(&stream, &chunks);
        prop_assert_eq!(whole.len(), frames.len());
        prop_assert_eq!(whole, split);
        prop_assert!(t.at_boundary());
    }
}

/// What the relay can observe of a tracker.
fn observable(t: &FrameTracker) -> (bool, bool, bool, u64, bool, u64) {
    (
        t.at_boundary(),
        t.close_seen(),
        t.desynced(),
        t.messages(),
        t.in_payload,
        t.remaining,
    )
}

proptest! {
    /// `track` (the relay's per-read loop) ends in the same state as feeding the same
    /// reads to `advance` frame by frame, for valid frames and for arbitrary bytes alike.
    #[test]
    fn track_agrees_with_advance(
        frames in prop::collection::vec((0u8..6, any::<bool>(), 0usize..300, any::<bool>()), 0..20),
        garbage in prop::collection::vec(any::<u8>(), 0..40),
        chunks in prop::collection::vec(1usize..64, 1..10),
    ) {
        let mut stream = vec![];
        for (op, fin, len, masked) in &frames {
            let op = [OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CONTINUATION, OP_CLOSE][*op as usize];
            let control = op & 0x08 != 0;
            let len = if control { len % 126 } else { *len };
            let fin = control || *fin;
            stream.extend(frame(op, fin, &vec![0xAB; len], masked.then_some([1, 2, 3, 4])));
        }
        stream.extend(garbage);
        let (_, by_frame) = boundaries(&stream, &chunks);
        let mut tracked = FrameTracker::new();
        let mut sizes = chunks.iter().cycle();
        let mut off = 0;
        while off < stream.len() {
            let end = (off + *sizes.next().unwrap()).min(stream.len());
            tracked.track(&stream[off..end]);
            off = end;
        }
        prop_assert_eq!(observable(&tracked), observable(&by_frame));
    }
}
