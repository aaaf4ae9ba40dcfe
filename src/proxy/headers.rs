//! Header rules for both directions: hop-by-hop headers stop here (RFC 9110 §7.6.1),
//! everything else passes unchanged, and the forwarding headers are added.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// Whether a comma-separated header contains `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What the backend is told about the original request.
pub struct Forwarded<'a> {
    pub client_ip: IpAddr,
    /// `http` or `https`: the scheme the client used to reach wsgate.
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
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
    let ip = fwd.client_ip.to_string();
    // A `Connection`-listed X-Forwarded-For was meant for this hop only.
    let prev = match hop(X_FORWARDED_FOR.as_str().as_bytes()) {
        true => None,
        false => headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
    };
    let xff = match prev {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        emit(&X_FORWARDED_FOR, &v);
    }
    emit(&X_FORWARDED_PROTO, &HeaderValue::from_static(fwd.proto));
    if let Some(host) = fwd.host {
        emit(&X_FORWARDED_HOST, host);
    }
    emit(&X_REQUEST_ID, fwd.request_id);
}

#[cfg(test)]
mod tests {
    use super::*;

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
        to_upstream(
            &mut h,
            "10.0.0.7:8080",
            &Forwarded {
                client_ip: "127.0.0.1".parse().unwrap(),
                proto: "http",
                host: host.as_ref(),
                request_id: &id,
            },
        );
        assert_eq!(h["host"], "10.0.0.7:8080");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "chat.example.com");
        assert_eq!(h["x-request-id"], "req-1");
    }
}
