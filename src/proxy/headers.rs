//! Header rules for both directions: hop-by-hop headers stop here (RFC 9110 §7.6.1),
//! everything else passes unchanged, and the forwarding headers are added.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::telemetry::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};

/// Headers that describe one hop and never travel further.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes hop-by-hop headers, including any named in `Connection`, and `Upgrade`
/// (the caller re-adds `Upgrade: websocket` where it belongs).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let doomed: smallvec::SmallVec<[HeaderName; 4]> = {
        let hop = hop_by_hop_in(as_bytes(headers));
        headers
            .keys()
            .filter(|name| hop(name.as_str().as_bytes()))
            .cloned()
            .collect()
    };
    for name in doomed {
        headers.remove(name);
    }
}

/// The one hop-by-hop rule, for every caller (header maps here, a backend's raw 101 in
/// `upgrade.rs`): a test that is true for the names that stop at this hop — RFC 9110's
/// hop-by-hop headers, `Upgrade`, and those the `Connection` headers list. Names compare
/// case-insensitively; the tokens of `Connection` are borrowed, not copied.
pub fn hop_by_hop_in<'a, I>(headers: I) -> impl Fn(&[u8]) -> bool + 'a
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut listed: smallvec::SmallVec<[&'a [u8]; 4]> = smallvec::SmallVec::new();
    for (_, value) in headers.filter(|(n, _)| n.eq_ignore_ascii_case(b"connection")) {
        listed.extend(
            value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty()),
        );
    }
    move |name: &[u8]| {
        name.eq_ignore_ascii_case(b"upgrade")
            || HOP_BY_HOP
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
            || listed.iter().any(|t| name.eq_ignore_ascii_case(t))
    }
}

/// A header map's entries as raw (name, value) bytes, for `hop_by_hop_in`.
fn as_bytes(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
}

/// Whether a comma-separated header contains `token` (case-insensitive). Works on the bytes:
/// tokens are ASCII, and going through `&str` (validation, Unicode trimming) cost ~500
/// instructions per handshake for `Connection: Upgrade` alone (bench/instructions.sh).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// What the backend is told about the original request.
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// `http` or `https`: the scheme the client used to reach wsgate.
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
    /// The trace the request belongs to: `traceparent` (wsgate's span as the parent) and the
    /// caller's `tracestate` go to the backend in place of the client's.
    pub trace: &'a TraceContext,
}

/// Prepares a request's headers for the backend, in place (the HTTP path); the rules are
/// `for_upstream`'s.
pub fn to_upstream(headers: &mut HeaderMap, backend_authority: &str, fwd: &Forwarded<'_>) {
    let mut out = HeaderMap::with_capacity(headers.len() + 4);
    for_upstream(headers, backend_authority, fwd, |name, value| {
        out.append(name.clone(), value.clone());
    });
    *headers = out;
}

/// The headers a request carries to the backend, handed to `emit` one by one without
/// touching `headers` (the WebSocket path writes them straight into the request head, and
/// the balancer may still be reading the client's originals): hop-by-hop removed (as
/// `strip_hop_by_hop`), `Host` set to the backend (Ocelot's behaviour; the original goes to
/// `X-Forwarded-Host`), the client's IP appended to `X-Forwarded-For` (so ASP.NET's
/// ForwardedHeaders, which trusts the last hop, sees the real client), `X-Forwarded-Proto`
/// and `X-Request-Id` set. Headers the rules replace come last.
pub fn for_upstream(
    headers: &HeaderMap,
    backend_authority: &str,
    fwd: &Forwarded<'_>,
    mut emit: impl FnMut(&HeaderName, &HeaderValue),
) {
    let hop = hop_by_hop_in(as_bytes(headers));
    let replaced = |name: &HeaderName| {
        name == header::HOST
            || *name == X_FORWARDED_FOR
            || *name == X_FORWARDED_PROTO
            || *name == X_REQUEST_ID
            || *name == TRACEPARENT
            || *name == TRACESTATE
            || (fwd.host.is_some() && *name == X_FORWARDED_HOST)
    };
    for (name, value) in headers {
        if hop(name.as_str().as_bytes()) || replaced(name) {
            continue;
        }
        emit(name, value);
    }
    if let Ok(v) = HeaderValue::from_str(backend_authority) {
        emit(&header::HOST, &v);
    }
    let ip = IpText::new(fwd.client_ip);
    // A `Connection`-listed X-Forwarded-For was meant for this hop only.
    let prev = match hop(X_FORWARDED_FOR.as_str().as_bytes()) {
        true => None,
        false => headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
    };
    let xff = match prev {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", ip.as_str()))
        }
        _ => HeaderValue::from_str(ip.as_str()),
    };
    if let Ok(v) = xff {
        emit(&X_FORWARDED_FOR, &v);
    }
    emit(&X_FORWARDED_PROTO, &HeaderValue::from_static(fwd.proto));
    if let Some(host) = fwd.host {
        emit(&X_FORWARDED_HOST, host);
    }
    emit(&X_REQUEST_ID, fwd.request_id);
    emit(&TRACEPARENT, &fwd.trace.traceparent());
    if let Some(state) = &fwd.trace.tracestate {
        emit(&TRACESTATE, state);
    }
}

/// An IP address as text, written without `fmt`: std's `Display` for an IPv4 address cost
/// ~1,300 instructions, a few per cent of a whole proxied handshake (bench/instructions.sh).
/// The text is exactly `Display`'s.
struct IpText {
    /// 45 bytes hold the longest IPv6 text (an IPv4-mapped one with every group written).
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            // Rare enough at the edge to keep std's formatting (zero-run compression and
            // the IPv4-mapped form are easy to get wrong by hand).
            IpAddr::V6(v6) => {
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{v6}"));
                text.len = cursor.position() as usize;
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written text is `Display`'s, for every octet value in every position and
    /// for IPv6 forms up to the longest.
    #[test]
    fn ip_text_matches_display() {
        let mut ips: Vec<IpAddr> = (0..=255u8)
            .flat_map(|o| {
                [
                    [o, 0, 0, 0],
                    [0, o, 0, 0],
                    [10, 0, o, 1],
                    [255, 255, 255, o],
                ]
            })
            .map(IpAddr::from)
            .collect();
        for v6 in [
            "::",
            "::1",
            "fd00::1",
            "::ffff:192.168.100.200",
            "2001:db8:85a3:1234:5678:8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "0:0:0:0:0:ffff:255.255.255.255",
        ] {
            ips.push(v6.parse().unwrap());
        }
        for ip in ips {
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// A token is found in any of the header's values, in any case, between commas and
    /// optional whitespace; a longer token containing it does not count.
    #[test]
    fn has_token_finds_whole_tokens_in_every_value() {
        let with = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONNECTION, HeaderValue::from_bytes(v).unwrap());
            }
            has_token(&h, &header::CONNECTION, "upgrade")
        };
        assert!(with(&[b"Upgrade"]));
        assert!(with(&[b"keep-alive,  UPGRADE\t"]));
        assert!(with(&[b"keep-alive", b"close, upgrade"]));
        assert!(with(&[b"caf\xe9, upgrade"]));
        assert!(!with(&[b"upgraded, keep-alive"]));
        assert!(!with(&[b"up grade"]));
        assert!(!with(&[b""]));
        assert!(!with(&[]));
    }

    /// Hop-by-hop headers and those named in Connection are removed; end-to-end ones stay.
    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("cookie", "a=1"),
            ("authorization", "Bearer t"),
            ("sec-websocket-protocol", "chat"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            vec!["authorization", "cookie", "sec-websocket-protocol"]
        );
    }

    /// The raw-bytes test removes what `strip_hop_by_hop` removes, whatever the case.
    #[test]
    fn raw_hop_by_hop_test_matches_the_header_map_rules() {
        let raw: &[(&[u8], &[u8])] = &[
            (b"Connection", b"Upgrade, X-Secret-Hop"),
            (b"Upgrade", b"websocket"),
            (b"Keep-Alive", b"timeout=5"),
            (b"x-secret-hop", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Sec-WebSocket-Accept", b"abc"),
            (b"Set-Cookie", b"a=1"),
        ];
        let hop = hop_by_hop_in(raw.iter().copied());
        let kept: Vec<&[u8]> = raw.iter().map(|(n, _)| *n).filter(|n| !hop(n)).collect();
        assert_eq!(kept, vec![&b"Sec-WebSocket-Accept"[..], &b"Set-Cookie"[..]]);

        let mut map = map(&[
            ("connection", "Upgrade, X-Secret-Hop"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("sec-websocket-accept", "abc"),
            ("set-cookie", "a=1"),
        ]);
        strip_hop_by_hop(&mut map);
        let mut names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["sec-websocket-accept", "set-cookie"]);
    }

    /// Forwarding headers: Host rewritten, XFF appended, proto/host/request id set.
    #[test]
    fn forwarding_headers_are_added() {
        let mut h = map(&[
            ("host", "chat.example.com"),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        let host = h.get("host").cloned();
        let id = HeaderValue::from_static("req-1");
        let trace = TraceContext::start();
        to_upstream(
            &mut h,
            "10.0.0.7:8080",
            &Forwarded {
                client_ip: "127.0.0.1".parse().unwrap(),
                proto: "http",
                host: host.as_ref(),
                request_id: &id,
                trace: &trace,
            },
        );
        assert_eq!(h["traceparent"], trace.traceparent());
        assert_eq!(h["host"], "10.0.0.7:8080");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "chat.example.com");
        assert_eq!(h["x-request-id"], "req-1");
    }
}
