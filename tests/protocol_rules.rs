//! The protocol rules a gateway enforces (RFC 6455 §5.1–5.5 and §7; issue 19, item 2), each
//! broken once by the client and once by the backend, on both relay drivers (the tokio relay,
//! and a relay thread after the relay moved). Both peers are raw TCP writing exact bytes, so
//! a test sees every byte the gateway passes on.
//!
//! A violation must fail the connection the way an endpoint would: the side that broke the
//! rule gets Close 1002 (1007 for a Close reason that is not UTF-8); the offending frame is
//! never passed on, not one byte of it; the other side gets a Close of its own, 1001 toward
//! the backend when the client broke the rule, 1014 toward the client when the backend did;
//! frames before the offending one arrive intact. The breaker's Close comes once the other
//! side has answered the gateway's (in place of that answer), so what the other side sent
//! before still reaches the breaker first. Valid traffic that looks close to a
//! violation (every valid Close code, permessage-deflate's RSV1) passes unchanged, and a
//! side that ends its TCP connection after the other side's Close ends the relay without an
//! invented Close 1011.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::raw_ws::*;
use support::*;
use tokio::net::TcpListener;

/// What runs the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    /// The relay stays on the async runtime (no relay threads).
    Tokio,
    /// The relay moves to a relay thread after its first message (before the test's frames).
    RelayThread,
}

/// The peer that breaks the rule (or, in the checks of valid traffic, the one that starts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

impl Side {
    /// RFC 6455 §5.1: clients mask every frame, servers none.
    fn masks(self) -> bool {
        self == Side::Client
    }

    /// The gateway is the server to the client and the client to the backend: its own
    /// frames (a Close it sends) are masked toward the backend only.
    fn gets_masked_frames_from_the_gateway(self) -> bool {
        self == Side::Backend
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }

    /// The Close code the gateway sends to the other side when this side broke a rule.
    fn others_close_code(self) -> u16 {
        match self {
            Side::Client => 1001,
            Side::Backend => 1014,
        }
    }
}

const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// A gateway with one route to a raw backend listener, run by `driver`.
struct Rig {
    gw: Gateway,
    backends: TcpListener,
    driver: Driver,
    links: u64,
}

impl Rig {
    async fn start(driver: Driver) -> Rig {
        Rig::start_with_limits(driver, None).await
    }

    /// A rig whose route has `limits` (the route's message limits, issue 20).
    async fn start_with_limits(driver: Driver, limits: Option<wsgate::api::LimitsSpec>) -> Rig {
        let backends = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend: SocketAddr = backends.local_addr().unwrap();
        let offload = match driver {
            Driver::Tokio => OffloadOptions {
                threads: 0,
                after_messages: u64::MAX,
            },
            Driver::RelayThread => OffloadOptions {
                threads: 1,
                after_messages: 1,
            },
        };
        let mut spec = spec("/{everything}", "/{everything}", &[backend]);
        spec.limits = limits;
        let routes = [route("rules", 0, &spec)];
        let gw = Gateway::start_with_offload(&routes, Duration::from_secs(5), offload).await;
        Rig {
            gw,
            backends,
            driver,
            links: 0,
        }
    }

    /// A relayed connection, `extension` negotiated when given, after one message each way
    /// (which moves it to a relay thread on that driver; checked by the gateway's metric).
    async fn open(&mut self, extension: Option<&str>) -> Link {
        let mut link = open_link(
            self.gw.server.listen_addr,
            &self.backends,
            extension,
            extension,
        )
        .await;
        self.links += 1;
        link.client.send(&frame(FIN | TEXT, true, b"warm-up")).await;
        let up = link
            .backend
            .next_frame()
            .await
            .expect("warm-up reaches the backend");
        assert_eq!(
            (up.first, up.masked, &up.payload[..]),
            (FIN | TEXT, true, &b"warm-up"[..])
        );
        link.backend
            .send(&frame(FIN | TEXT, false, b"warm-up"))
            .await;
        let down = link
            .client
            .next_frame()
            .await
            .expect("warm-up reaches the client");
        assert_eq!(
            (down.first, down.masked, &down.payload[..]),
            (FIN | TEXT, false, &b"warm-up"[..])
        );
        let moved = self.links;
        match self.driver {
            Driver::RelayThread => {
                eventually("the relay moved to a relay thread", || {
                    (metric(&self.gw, "wsgate_relays_moved_total") == Some(moved)).then_some(())
                })
                .await
            }
            Driver::Tokio => assert_eq!(
                metric(&self.gw, "wsgate_relays_moved_total").unwrap_or(0),
                0,
                "no relay thread on this driver"
            ),
        }
        link
    }
}

/// The value of the metric line starting with `series` (name and labels).
fn metric(gw: &Gateway, series: &str) -> Option<u64> {
    gw.metrics.encode().lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse::<f64>().ok().map(|v| v as u64)
    })
}

fn peer(link: &mut Link, side: Side) -> &mut RawPeer {
    match side {
        Side::Client => &mut link.client,
        Side::Backend => &mut link.backend,
    }
}

/// A frame as `side` sends it (masked from the client, unmasked from the backend).
fn from(side: Side, first: u8, payload: &[u8]) -> Vec<u8> {
    frame(first, side.masks(), payload)
}

/// A rule broken: the valid frames sent first, then the offending frame's bytes.
struct Violation {
    extension: Option<&'static str>,
    before: Vec<Vec<u8>>,
    offending: Vec<u8>,
    /// What the side that broke the rule must get: 1002, or 1007 for a bad Close reason
    /// (1009, 1008 for the route's message limits).
    code: u16,
    /// What the other side gets: 1001 toward the backend and 1014 toward the client for a
    /// broken rule, 1001 both ways for a route's limit.
    other_code: u16,
}

impl Violation {
    fn new(offending: Vec<u8>) -> Violation {
        Violation {
            extension: None,
            before: Vec::new(),
            offending,
            code: 1002,
            other_code: 0,
        }
    }
}

/// `breaker` sends a valid text message, `v.before` and the offending frame in one write;
/// checks what each side gets (see the module comment), then that after both answer the
/// Close nothing more arrives before their connections end.
async fn fails_the_connection(rig: &mut Rig, breaker: Side, v: Violation) {
    let others_close_code = match v.other_code {
        0 => breaker.others_close_code(),
        code => code,
    };
    let mut link = rig.open(v.extension).await;
    let mut before = vec![from(breaker, FIN | TEXT, b"before")];
    before.extend(v.before);
    let mut bytes: Vec<u8> = before.concat();
    bytes.extend_from_slice(&v.offending);
    peer(&mut link, breaker).send(&bytes).await;

    let other = breaker.other();
    for expected in parse_all(&before.concat()) {
        let got = peer(&mut link, other).next_frame().await;
        assert_eq!(
            got.as_ref(),
            Some(&expected),
            "{other:?} must get the frames before the offending one intact"
        );
    }
    let got = peer(&mut link, other).next_frame().await;
    let got = got.unwrap_or_else(|| {
        panic!("{other:?}'s connection ended without a Close after {breaker:?} broke the rule")
    });
    assert!(
        got.is_close() && Some(&got) != parse(&v.offending).map(|(f, _)| f).as_ref(),
        "{other:?} got {got:?} where the gateway's Close belongs: the offending frame was \
         passed on"
    );
    assert_eq!(
        (got.close_code(), got.masked),
        (
            Some(others_close_code),
            other.gets_masked_frames_from_the_gateway()
        ),
        "{other:?} gets a Close {} of the gateway's own (masked toward the backend only): {got:?}",
        others_close_code
    );

    // The other side answers the gateway's Close; only then does the breaker get its own
    // (in place of that answer), so what the other side sent before still reaches it.
    let other_reply = from(other, FIN | CLOSE, &close_payload(1000, b""));
    peer(&mut link, other).send(&other_reply).await;
    let got = peer(&mut link, breaker).next_frame().await;
    let got =
        got.unwrap_or_else(|| panic!("{breaker:?}'s connection ended without a Close {}", v.code));
    assert_eq!(
        (got.opcode(), got.close_code(), got.masked),
        (
            CLOSE,
            Some(v.code),
            breaker.gets_masked_frames_from_the_gateway()
        ),
        "{breaker:?}, which broke the rule, gets Close {}: {got:?}",
        v.code
    );

    // The breaker answers too, and the backend (a server) then ends its TCP connection, as
    // RFC 6455 §7.1.1 has servers do; nothing else may follow on either side.
    let breaker_reply = from(breaker, FIN | CLOSE, &close_payload(v.code, b""));
    peer(&mut link, breaker).send(&breaker_reply).await;
    link.backend.shut_down_writing().await;
    for side in [other, breaker] {
        let rest = peer(&mut link, side).frames_until_end().await;
        assert!(
            rest.is_empty(),
            "{side:?} got frames after the gateway's Close: {rest:?}"
        );
    }
}

// The rules. Each takes the driver and the side that breaks it.

/// §5.1: client frames are masked, backend frames are not.
async fn wrong_masking(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = frame(FIN | TEXT, !breaker.masks(), b"wrong masking");
    fails_the_connection(&mut rig, breaker, Violation::new(offending)).await;
}

/// §5.2: RSV1 with no extension negotiated.
async fn rsv1_without_an_extension(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = from(breaker, FIN | RSV1 | TEXT, b"rsv1");
    fails_the_connection(&mut rig, breaker, Violation::new(offending)).await;
}

/// permessage-deflate (RFC 7692) defines RSV1 only: RSV2 stays a violation.
async fn rsv2_with_permessage_deflate(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = from(breaker, FIN | RSV2 | TEXT, b"rsv2");
    let v = Violation {
        extension: Some(PERMESSAGE_DEFLATE),
        ..Violation::new(offending)
    };
    fails_the_connection(&mut rig, breaker, v).await;
}

/// permessage-deflate defines RSV1 only: RSV3 stays a violation.
async fn rsv3_with_permessage_deflate(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = from(breaker, FIN | RSV3 | BINARY, b"rsv3");
    let v = Violation {
        extension: Some(PERMESSAGE_DEFLATE),
        ..Violation::new(offending)
    };
    fails_the_connection(&mut rig, breaker, v).await;
}

/// permessage-deflate allows RSV1 on a message's first frame only (RFC 7692 §6).
async fn rsv1_on_a_continuation_with_permessage_deflate(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let v = Violation {
        extension: Some(PERMESSAGE_DEFLATE),
        before: vec![from(breaker, RSV1 | TEXT, b"first frame")],
        ..Violation::new(from(breaker, FIN | RSV1 | CONTINUATION, b"second frame"))
    };
    fails_the_connection(&mut rig, breaker, v).await;
}

/// §5.2: opcodes 3-7 and B-F are reserved. Each on a connection of its own.
async fn reserved_opcodes(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        eprintln!("opcode {opcode:#x}");
        let offending = from(breaker, FIN | opcode, b"reserved");
        fails_the_connection(&mut rig, breaker, Violation::new(offending)).await;
    }
}

/// §5.5: a control frame's payload is at most 125 bytes.
async fn control_frame_over_125_bytes(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = from(breaker, FIN | PING, &[b'p'; 126]);
    fails_the_connection(&mut rig, breaker, Violation::new(offending)).await;
}

/// §5.5: control frames are never fragmented (FIN clear on a Ping).
async fn fragmented_control_frame(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = from(breaker, PING, b"no fin");
    fails_the_connection(&mut rig, breaker, Violation::new(offending)).await;
}

/// §5.4: a continuation frame with no message in progress.
async fn continuation_without_a_message(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = from(breaker, FIN | CONTINUATION, b"orphan");
    fails_the_connection(&mut rig, breaker, Violation::new(offending)).await;
}

/// §5.4: a new text or binary message inside a fragmented one.
async fn new_message_inside_a_fragmented_one(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    for opcode in [TEXT, BINARY] {
        eprintln!("new message opcode {opcode:#x}");
        let v = Violation {
            before: vec![from(breaker, TEXT, b"fragment")],
            ..Violation::new(from(breaker, FIN | opcode, b"interloper"))
        };
        fails_the_connection(&mut rig, breaker, v).await;
    }
}

/// §5.5.1: a Close body is empty or starts with a 2-byte code; 1 byte is neither.
async fn close_with_a_one_byte_payload(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = from(breaker, FIN | CLOSE, &[0x03]);
    fails_the_connection(&mut rig, breaker, Violation::new(offending)).await;
}

/// §7.4: codes below 1000, 1004-1006 and 1015 (never sent), 1016-2999 (unassigned in the
/// IANA registry) and 5000 and above are not valid in a Close frame.
async fn close_with_an_invalid_code(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        eprintln!("close code {code}");
        let offending = from(breaker, FIN | CLOSE, &close_payload(code, b"bad code"));
        fails_the_connection(&mut rig, breaker, Violation::new(offending)).await;
    }
}

/// §5.5.1, §8.1: a Close reason must be UTF-8; if not, the connection fails with 1007.
async fn close_with_a_reason_not_utf8(driver: Driver, breaker: Side) {
    let mut rig = Rig::start(driver).await;
    let offending = from(
        breaker,
        FIN | CLOSE,
        &close_payload(
            1000,
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
        ),
    );
    let v = Violation {
        code: 1007,
        ..Violation::new(offending)
    };
    fails_the_connection(&mut rig, breaker, v).await;
}

// Valid traffic next to the rules, and the end of a relay.

/// Every valid Close code (and an empty Close) passes unchanged both ways: `starter` sends
/// it, the other side answers with the same, and the starter gets that answer.
async fn valid_close_codes_pass(driver: Driver, starter: Side) {
    let mut rig = Rig::start(driver).await;
    let codes = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ];
    let payloads = codes
        .iter()
        .map(|&c| close_payload(c, "bye ✓".as_bytes()))
        .chain([Vec::new()]);
    for payload in payloads {
        eprintln!("close payload {payload:02x?}");
        let mut link = rig.open(None).await;
        let other = starter.other();
        let close = from(starter, FIN | CLOSE, &payload);
        peer(&mut link, starter).send(&close).await;
        let got = peer(&mut link, other).next_frame().await;
        assert_eq!(
            got,
            parse_all(&close).pop(),
            "{other:?} gets the Close unchanged"
        );
        let answer = from(other, FIN | CLOSE, &payload);
        peer(&mut link, other).send(&answer).await;
        let got = peer(&mut link, starter).next_frame().await;
        assert_eq!(
            got,
            parse_all(&answer).pop(),
            "{starter:?} gets the answer unchanged"
        );
    }
}

/// With permessage-deflate negotiated, RSV1 on a message's first frame passes unchanged,
/// unfragmented and fragmented (continuations without RSV1, a Ping between fragments).
async fn permessage_deflate_rsv1_on_a_first_frame_passes(driver: Driver, sender: Side) {
    let mut rig = Rig::start(driver).await;
    let mut link = rig.open(Some(PERMESSAGE_DEFLATE)).await;
    let frames = [
        from(sender, FIN | RSV1 | TEXT, b"compressed"),
        from(sender, RSV1 | BINARY, b"first part"),
        from(sender, FIN | PING, b"between fragments"),
        from(sender, FIN | CONTINUATION, b"last part"),
    ]
    .concat();
    peer(&mut link, sender).send(&frames).await;
    for expected in parse_all(&frames) {
        let got = peer(&mut link, sender.other()).next_frame().await;
        assert_eq!(got.as_ref(), Some(&expected), "passes unchanged");
    }
}

/// `closer` sends Close 1000, the other side gets it and ends its TCP connection without
/// answering: the relay ends cleanly. The closer may get the Close answered with its own
/// code, or no frame at all, but never a Close the gateway made up (1011, 1001): the
/// Autobahn 7.x cases.
async fn peer_ending_tcp_after_a_close_is_clean(driver: Driver, closer: Side) {
    let mut rig = Rig::start(driver).await;
    let mut link = rig.open(None).await;
    let close = from(closer, FIN | CLOSE, &close_payload(1000, b"done"));
    peer(&mut link, closer).send(&close).await;
    let other = closer.other();
    let got = peer(&mut link, other).next_frame().await;
    assert_eq!(got, parse_all(&close).pop(), "{other:?} gets the Close");
    let Link {
        client, backend, ..
    } = link;
    let mut closer_peer = match closer {
        Side::Client => {
            drop(backend);
            client
        }
        Side::Backend => {
            drop(client);
            backend
        }
    };
    let rest = closer_peer.frames_until_end().await;
    assert!(
        rest.is_empty() || (rest.len() == 1 && rest[0].close_code() == Some(1000)),
        "{closer:?} sent Close 1000 and its peer ended TCP: nothing, or its Close answered, \
         may follow; got {rest:?}"
    );
}

/// No Close exchanged and a side ends its TCP connection: the other side gets the gateway's
/// Close, 1011 toward the client when the backend died, 1001 toward the backend when the
/// client went away.
async fn side_dying_without_a_close(driver: Driver, dying: Side) {
    let mut rig = Rig::start(driver).await;
    let link = rig.open(None).await;
    let Link {
        client, backend, ..
    } = link;
    let (mut survivor, expected) = match dying {
        Side::Client => {
            drop(client);
            (backend, 1001)
        }
        Side::Backend => {
            drop(backend);
            (client, 1011)
        }
    };
    let got = survivor.next_frame().await;
    let got = got.unwrap_or_else(|| panic!("the connection ended without a Close {expected}"));
    assert_eq!(
        (got.close_code(), got.masked),
        (
            Some(expected),
            dying.other().gets_masked_frames_from_the_gateway()
        ),
        "the survivor gets Close {expected}: {got:?}"
    );
}

// The route's message limits (issue 20, item 5): enforced by the same machine from the
// same frame headers. The sender gets 1009 (size) or 1008 (rate), the other side 1001.

/// `maxMessageBytes: 1000`: a 1,000-byte message passes, a message of 600 + 600 bytes in
/// two frames is cut at its second frame (the first went on before the limit was reached).
async fn message_over_max_message_bytes(driver: Driver, breaker: Side) {
    let limits = wsgate::api::LimitsSpec {
        max_message_bytes: Some(1000),
        ..Default::default()
    };
    let mut rig = Rig::start_with_limits(driver, Some(limits)).await;
    let mut v = Violation::new(from(breaker, CONTINUATION | FIN, &[b'b'; 600]));
    v.before = vec![
        from(breaker, FIN | TEXT, &[b'k'; 1000]),
        from(breaker, TEXT, &[b'a'; 600]),
    ];
    v.code = 1009;
    v.other_code = 1001;
    fails_the_connection(&mut rig, breaker, v).await;
    // Both Close frames of wsgate's own are counted when the relay ends.
    let side = |s: Side| match s {
        Side::Client => "Client",
        Side::Backend => "Backend",
    };
    for (to, code) in [(breaker, 1009), (breaker.other(), 1001)] {
        let series = format!(
            "wsgate_closes_sent_total{{route=\"rules\",to=\"{}\",code=\"{code}\"}}",
            side(to)
        );
        eventually("the close counted", || {
            (metric(&rig.gw, &series) == Some(1)).then_some(())
        })
        .await;
    }
}

/// `messagesPerSecond: 1, messageBurst: 5`: six messages in one write after the warm-up
/// message; the bucket then holds 4 tokens and a fraction (5 if the warm-up took a second),
/// so four or five go on and the next is refused: the sender gets 1008, the other side 1001,
/// and nothing of the refused message passes.
async fn messages_over_messages_per_second(driver: Driver, breaker: Side) {
    let limits = wsgate::api::LimitsSpec {
        messages_per_second: Some(1),
        message_burst: Some(5),
        ..Default::default()
    };
    let mut rig = Rig::start_with_limits(driver, Some(limits)).await;
    let mut link = rig.open(None).await;
    let messages: Vec<Vec<u8>> = (0..6u8)
        .map(|i| from(breaker, FIN | TEXT, &[b'0' + i]))
        .collect();
    peer(&mut link, breaker).send(&messages.concat()).await;
    let other = breaker.other();
    let mut passed = 0;
    let close = loop {
        let got = peer(&mut link, other)
            .next_frame()
            .await
            .unwrap_or_else(|| panic!("{other:?}'s connection ended without a Close"));
        if got.is_close() {
            break got;
        }
        assert_eq!(got.payload, [b'0' + passed], "in order, intact");
        passed += 1;
    };
    assert!(
        (4..=5).contains(&passed),
        "{passed} messages passed a burst of 5"
    );
    assert_eq!(
        (close.close_code(), close.masked),
        (Some(1001), other.gets_masked_frames_from_the_gateway())
    );
    peer(&mut link, other)
        .send(&from(other, FIN | CLOSE, &close_payload(1001, b"")))
        .await;
    let got = peer(&mut link, breaker).next_frame().await;
    let got = got.unwrap_or_else(|| panic!("{breaker:?} got no Close 1008"));
    assert_eq!(
        (got.close_code(), got.masked),
        (Some(1008), breaker.gets_masked_frames_from_the_gateway()),
        "{got:?}"
    );
}

/// For each check, one test per driver and side: `tokio_relay::RULE::by_client`, ….
macro_rules! on_both_drivers_and_sides {
    ($($check:ident),* $(,)?) => {
        mod tokio_relay {
            $(
                mod $check {
                    #[tokio::test]
                    async fn by_client() {
                        crate::$check(crate::Driver::Tokio, crate::Side::Client).await
                    }
                    #[tokio::test]
                    async fn by_backend() {
                        crate::$check(crate::Driver::Tokio, crate::Side::Backend).await
                    }
                }
            )*
        }
        mod relay_thread {
            $(
                mod $check {
                    #[tokio::test]
                    async fn by_client() {
                        crate::$check(crate::Driver::RelayThread, crate::Side::Client).await
                    }
                    #[tokio::test]
                    async fn by_backend() {
                        crate::$check(crate::Driver::RelayThread, crate::Side::Backend).await
                    }
                }
            )*
        }
    };
}

on_both_drivers_and_sides!(
    wrong_masking,
    rsv1_without_an_extension,
    rsv2_with_permessage_deflate,
    rsv3_with_permessage_deflate,
    rsv1_on_a_continuation_with_permessage_deflate,
    reserved_opcodes,
    control_frame_over_125_bytes,
    fragmented_control_frame,
    continuation_without_a_message,
    new_message_inside_a_fragmented_one,
    close_with_a_one_byte_payload,
    close_with_an_invalid_code,
    close_with_a_reason_not_utf8,
    valid_close_codes_pass,
    permessage_deflate_rsv1_on_a_first_frame_passes,
    peer_ending_tcp_after_a_close_is_clean,
    side_dying_without_a_close,
    message_over_max_message_bytes,
    messages_over_messages_per_second,
);
