//! The frame tracker of one relayed direction (src/proxy/frame.rs) fed arbitrary bytes in
//! arbitrary reads.
//!
//! Input: a count byte `c`, then `c % 16` bytes giving the lengths of the first reads, then
//! the stream (whatever the first reads leave is the last read).
//! Checks: nothing panics or stalls; `track` over the whole stream, `track` read by read
//! and `advance` frame by frame (over the whole stream and read by read) agree on message
//! count, close seen, desynced and at-boundary; the frame ends `advance` reports account for
//! the message count and the Close; a Close injected at a boundary (as the relay does on
//! drain) is tracked as one whole frame.

use wsgate::fuzzing::{FrameEnd, FrameTracker};
use wsgate::proxy::frame::{close_frame, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_TEXT};

#[derive(Debug, PartialEq, Eq)]
struct State {
    messages: u64,
    close_seen: bool,
    desynced: bool,
    at_boundary: bool,
}

fn state(t: &FrameTracker) -> State {
    State {
        messages: t.messages(),
        close_seen: t.close_seen(),
        desynced: t.desynced(),
        at_boundary: t.at_boundary(),
    }
}

/// One input: panics when a property does not hold.
pub fn check(data: &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 16).min(rest.len());
    let (lengths, stream) = rest.split_at(count);
    let reads = cut(stream, lengths);

    let mut whole = FrameTracker::new();
    whole.track(stream);
    let expected = state(&whole);

    let mut by_read = FrameTracker::new();
    for read in &reads {
        by_read.track(read);
    }
    assert_eq!(
        state(&by_read),
        expected,
        "track read by read vs at once, reads {reads:?}"
    );

    let mut stepped = FrameTracker::new();
    let ends = advance_all(&mut stepped, stream);
    assert_eq!(state(&stepped), expected, "advance frame by frame vs track");

    let mut stepped_by_read = FrameTracker::new();
    let mut ends_by_read = Vec::new();
    for read in &reads {
        ends_by_read.extend(advance_all(&mut stepped_by_read, read));
    }
    assert_eq!(
        state(&stepped_by_read),
        expected,
        "advance read by read vs track"
    );
    assert_eq!(
        ends_by_read, ends,
        "frame ends depend on how the reads were cut"
    );

    let complete_messages = ends
        .iter()
        .filter(|e| e.fin && matches!(e.opcode, OP_TEXT | OP_BINARY | OP_CONTINUATION))
        .count() as u64;
    assert_eq!(complete_messages, expected.messages);
    assert_eq!(
        ends.iter().any(|e| e.opcode == OP_CLOSE),
        expected.close_seen
    );

    if expected.at_boundary {
        for mask in [None, Some([0x12, 0x34, 0x56, 0x78])] {
            let mut t = whole.clone();
            let mut close = Vec::new();
            close_frame(1001, "going away", mask, &mut close);
            let (used, end) = t.advance(&close);
            assert_eq!(used, close.len());
            assert_eq!(end.map(|e| (e.opcode, e.fin)), Some((OP_CLOSE, true)));
            assert!(t.at_boundary() && t.close_seen());
            assert_eq!(t.messages(), expected.messages);
        }
    }
}

/// The stream cut into reads: the given lengths while bytes last, then the rest.
fn cut<'a>(stream: &'a [u8], lengths: &[u8]) -> Vec<&'a [u8]> {
    let mut reads = Vec::with_capacity(lengths.len() + 1);
    let mut rest = stream;
    for &len in lengths {
        let (read, after) = rest.split_at(usize::from(len).min(rest.len()));
        reads.push(read);
        rest = after;
    }
    reads.push(rest);
    reads
}

/// `advance` until the bytes are used up; every call must make progress.
fn advance_all(t: &mut FrameTracker, mut bytes: &[u8]) -> Vec<FrameEnd> {
    let mut ends = Vec::new();
    while !bytes.is_empty() {
        let (used, end) = t.advance(bytes);
        assert!(
            used > 0 && used <= bytes.len(),
            "advance used {used} of {}",
            bytes.len()
        );
        ends.extend(end);
        bytes = &bytes[used..];
    }
    ends
}
