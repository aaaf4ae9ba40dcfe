//! The backend's answer to the upgrade request (src/proxy/upgrade.rs), read as `exchange`
//! reads it: parse what arrived, skip 1xx heads, stop at a 101, another final status or an
//! error.
//!
//! Input: one byte choosing where the stream is cut into reads, then the stream.
//! Checks: nothing panics; the answer does not depend on how the reads were cut; a 101's
//! head and early bytes are exactly the bytes that followed the skipped 1xx heads; the
//! headers passed on to the client are all inside the head and none is hop-by-hop.

use bytes::{Buf, BytesMut};
use wsgate::fuzzing::{parse_upstream_head, UpstreamHead};

/// What one way of reading the stream came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The stream ended before a final answer.
    Unfinished,
    /// A 101 after skipping this many bytes of 1xx heads: its head and early bytes.
    Switched {
        skipped: usize,
        head: Vec<u8>,
        early: Vec<u8>,
        passed_on: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// A final non-101 answer, starting after this many bytes of 1xx heads.
    Final {
        skipped: usize,
    },
    Refused(String),
}

/// One input: panics when a property does not hold.
pub fn check(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let at_once = read(stream, stream.len().max(1));
    let in_pieces = read(stream, usize::from(cut).max(1));
    assert_eq!(
        at_once, in_pieces,
        "the answer depends on how the reads were cut"
    );
    if let Outcome::Switched {
        skipped,
        head,
        early,
        ..
    } = &at_once
    {
        assert_eq!(&stream[*skipped..*skipped + head.len()], &head[..]);
        assert_eq!(&stream[*skipped + head.len()..], &early[..]);
    }
}

/// `exchange`'s loop over a stream cut into reads of `step` bytes.
fn read(stream: &[u8], step: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut read = 0;
    let mut skipped = 0;
    loop {
        match parse_upstream_head(&mut buf) {
            Err(reason) => return Outcome::Refused(reason.to_string()),
            Ok(UpstreamHead::Informational(len)) => {
                assert!(len > 0 && len <= buf.len());
                buf.advance(len);
                skipped += len;
                continue;
            }
            Ok(UpstreamHead::Switched { head, early }) => {
                assert!(skipped + head.len() <= stream.len());
                // The rest of the stream arrives behind the head as relayed bytes.
                let mut early = early.to_vec();
                early.extend_from_slice(&stream[read..]);
                return Outcome::Switched {
                    skipped,
                    passed_on: passed_on(head.end_to_end(), head.end_to_end_map().len()),
                    head: stream[skipped..skipped + head.len()].to_vec(),
                    early,
                };
            }
            Ok(UpstreamHead::Final) => return Outcome::Final { skipped },
            Ok(UpstreamHead::Partial) => {}
        }
        if read == stream.len() {
            return Outcome::Unfinished;
        }
        let next = (read + step).min(stream.len());
        buf.extend_from_slice(&stream[read..next]);
        read = next;
    }
}

/// The headers the client's 101 carries (`end_to_end`), checked against the size of the map
/// hyper would get (`end_to_end_map`).
fn passed_on<'a>(
    end_to_end: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    map_len: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let kept: Vec<(Vec<u8>, Vec<u8>)> = end_to_end.map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
    for (name, _) in &kept {
        for hop in [
            &b"connection"[..],
            b"upgrade",
            b"transfer-encoding",
            b"keep-alive",
        ] {
            assert!(
                !name.eq_ignore_ascii_case(hop),
                "hop-by-hop {name:?} passed on"
            );
        }
    }
    assert!(map_len <= kept.len());
    kept
}
