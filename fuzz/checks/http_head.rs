//! The client's first request head on the direct upgrade path (src/proxy/connection.rs):
//! the head parse, `DirectUpgrade::take` and the handshake validation it runs.
//!
//! Input: one byte choosing where the stream is cut into reads, then the stream.
//! Checks: nothing panics; reading in pieces finds the same head as reading at once (a
//! head's length and parts do not depend on how TCP cut it); every span lies inside the
//! head; an upgrade taken for the direct path is the head plus the early bytes, byte for
//! byte, with a target in origin form and `Upgrade: websocket`; a request left to hyper
//! leaves the buffer exactly as it was. Reading in pieces goes through `HeadReader`, which
//! skips parses that cannot finish the head, and must still find it.

use bytes::BytesMut;
use wsgate::fuzzing::{
    parse_request_head, DirectUpgrade, RequestHead, RequestHeadReader, RequestHeadStatus,
};

/// One input: panics when a property does not hold.
pub fn check(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = parse_request_head(stream);
    let pieces = read_in_pieces(stream, usize::from(cut).max(1));
    match (&whole, &pieces) {
        (RequestHeadStatus::Complete(a), Some((b, _))) => {
            assert_eq!(
                a.len, b.len,
                "head length depends on how the reads were cut"
            );
            assert_eq!(
                a.direct.as_ref().map(|d| (&d.target, &d.headers)),
                b.direct.as_ref().map(|d| (&d.target, &d.headers)),
                "head parts depend on how the reads were cut"
            );
        }
        (RequestHeadStatus::Complete(a), None) => {
            panic!(
                "a complete head of {} bytes was never found reading in pieces",
                a.len
            )
        }
        (_, Some((b, at))) => panic!(
            "reading in pieces found a head of {} bytes after {at} bytes; the whole input has none",
            b.len
        ),
        (_, None) => {}
    }
    let RequestHeadStatus::Complete(head) = whole else {
        return;
    };
    check_head(&head, stream);
    let mut buf = BytesMut::from(stream);
    let len = head.len;
    match DirectUpgrade::take(&mut buf, head) {
        Ok(None) => assert_eq!(
            &buf[..],
            stream,
            "a request left to hyper must leave the buffer as it was"
        ),
        // A header value no HeaderValue can hold: wsgate's own 400.
        Err(_) => {}
        Ok(Some(upgrade)) => check_upgrade(&upgrade, len, stream),
    }
}

/// `read_head`'s loop, with its `HeadReader` (which skips parses that cannot finish the
/// head): stop at the first answer that is not "partial". `Some((head, bytes read))` when
/// that answer is a complete head.
fn read_in_pieces(stream: &[u8], step: usize) -> Option<(RequestHead, usize)> {
    let mut reader = RequestHeadReader::default();
    let mut read = 0;
    while read < stream.len() {
        read = (read + step).min(stream.len());
        match reader.step(&stream[..read]) {
            RequestHeadStatus::Partial => {}
            RequestHeadStatus::Complete(head) => return Some((head, read)),
            RequestHeadStatus::Refused(_) => return None,
        }
    }
    None
}

fn check_head(head: &RequestHead, stream: &[u8]) {
    assert!(head.len > 0 && head.len <= stream.len());
    assert!(
        stream[..head.len].ends_with(b"\n"),
        "a head ends with its empty line"
    );
    let Some(direct) = &head.direct else {
        return;
    };
    let within = |r: &std::ops::Range<usize>| r.start <= r.end && r.end <= head.len;
    assert!(
        within(&direct.target),
        "target {:?} outside the head",
        direct.target
    );
    assert!(stream[direct.target.clone()].starts_with(b"/"));
    // httparse skips empty lines before the request line (RFC 9112 §2.2 allows it).
    let line = &stream[stream
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count()..];
    assert!(line.starts_with(b"GET "), "only a GET is served directly");
    for (name, value) in &direct.headers {
        assert!(within(value), "{name}: value {value:?} outside the head");
    }
}

fn check_upgrade(upgrade: &DirectUpgrade, len: usize, stream: &[u8]) {
    assert_eq!(upgrade.head.len(), len);
    assert_eq!(&upgrade.head[..], &stream[..len]);
    assert_eq!(&upgrade.early[..], &stream[len..]);
    let target = &upgrade.head[upgrade.target.clone()];
    assert!(target.starts_with(b"/"));
    let has = |name: http::HeaderName, token: &str| {
        upgrade.headers.get_all(name).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    // Taken when it asks for WebSocket; the rest of the handshake (Connection, version,
    // key) is checked by the request sequence, which answers 400/426 itself.
    assert!(has(http::header::UPGRADE, "websocket"));
}
