//! The frame tracker of one relayed direction (src/proxy/frame.rs) fed arbitrary bytes in
//! arbitrary reads, under any rules (masked or not, each extension setting).
//!
//! Input: a byte whose low bits choose the rules (bit 0: masked; bits 1-2: extensions) and
//! whose high nibble is a count `c`, then `c` bytes giving the lengths of the first reads,
//! then the stream (whatever the first reads leave is the last read).
//! Checks: nothing panics; what goes on (held header bytes, the read's prefix, a Close
//! released from several reads) is the same whatever the reads, and is a prefix of the
//! stream; violation, message count and Close agree; without a violation or a Close, what
//! is held back is at most one partial frame's header or one partial Close (no byte lost).

use wsgate::proxy::frame::{Extensions, FrameRules, FrameTracker};

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    forwarded: Vec<u8>,
    violation: Option<wsgate::proxy::frame::Violation>,
    messages: u64,
    close_seen: bool,
}

fn run(rules: FrameRules, reads: &[&[u8]]) -> Outcome {
    let mut t = FrameTracker::new(rules);
    let mut forwarded = Vec::new();
    for read in reads {
        let r = t.track(read);
        forwarded.extend_from_slice(t.released(r.held_len));
        forwarded.extend_from_slice(&read[..r.forward]);
        forwarded.extend(t.take_held_close());
    }
    Outcome {
        forwarded,
        violation: t.violation(),
        messages: t.messages(),
        close_seen: t.close_seen(),
    }
}

/// One input: panics when a property does not hold.
pub fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let rules = FrameRules {
        masked: first & 1 != 0,
        extensions: match (first >> 1) & 3 {
            0 => Extensions::None,
            1 => Extensions::PerMessageDeflate,
            _ => Extensions::Unknown,
        },
    };
    let count = usize::from(first >> 4).min(rest.len());
    let (lengths, stream) = rest.split_at(count);
    let mut reads = Vec::new();
    let mut off = 0;
    for len in lengths {
        let end = (off + usize::from(*len)).min(stream.len());
        reads.push(&stream[off..end]);
        off = end;
    }
    reads.push(&stream[off..]);

    let whole = run(rules, &[stream]);
    let split = run(rules, &reads);
    assert_eq!(whole, split, "reads {reads:?}");
    assert!(
        stream.starts_with(&whole.forwarded),
        "what goes on is a prefix of the stream"
    );
    if whole.violation.is_none() && !whole.close_seen {
        // Held back: a partial header (< 14 bytes) or a partial Close (< 14 + 125 bytes).
        let held = stream.len() - whole.forwarded.len();
        assert!(held < 14 + 125, "{held} bytes held back");
    }
}
