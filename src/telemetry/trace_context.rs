//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` a request carries to the backend. Read once per request (never per message):
//! a valid `traceparent` keeps its trace id and flags and gets wsgate's own span id as the
//! parent id the backend sees, with the `tracestate` passed on; an absent or malformed one is
//! replaced by a new trace (a random trace id), and a `tracestate` without a valid
//! `traceparent` is dropped, as the specification requires.

use std::cell::Cell;

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The `sampled` flag, the only one wsgate passes on (the specification: unknown flags are
/// not propagated).
pub const SAMPLED: u8 = 0x01;

/// Most list members a `tracestate` may have (the specification's limit).
const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `tracestate` passed on; a longer one is dropped, not cut.
const MAX_TRACESTATE_BYTES: usize = 4096;

/// The trace a request belongs to, as the backend is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// wsgate's own span: the parent id in the `traceparent` the backend gets.
    pub span_id: [u8; 8],
    /// The caller's span (the incoming `traceparent`'s parent id), when it sent a valid one.
    pub parent_id: Option<[u8; 8]>,
    pub flags: u8,
    /// The caller's `tracestate`, passed on only with a valid `traceparent`.
    pub tracestate: Option<HeaderValue>,
}

impl TraceContext {
    /// The context of a request with `headers`: the caller's trace continued, or a new one.
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        // Two `traceparent` headers are as invalid as a malformed one.
        let parent = match (values.next(), values.next()) {
            (Some(v), None) => parse_traceparent(v.as_bytes()),
            _ => None,
        };
        match parent {
            Some(p) => TraceContext {
                trace_id: p.trace_id,
                span_id: random_span_id(),
                parent_id: Some(p.parent_id),
                flags: p.flags & SAMPLED,
                tracestate: tracestate(headers),
            },
            None => TraceContext::start(),
        }
    }

    /// A new trace, wsgate's span its root. Sampled, so a backend that samples by its
    /// parent records it.
    pub fn start() -> TraceContext {
        TraceContext {
            trace_id: random_trace_id(),
            span_id: random_span_id(),
            parent_id: None,
            flags: SAMPLED,
            tracestate: None,
        }
    }

    /// `00-{trace id}-{span id}-{flags}`, written without `fmt`.
    pub fn traceparent(&self) -> HeaderValue {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        hex(&self.trace_id, &mut out[3..35]);
        out[35] = b'-';
        hex(&self.span_id, &mut out[36..52]);
        out[52] = b'-';
        hex(&[self.flags], &mut out[53..55]);
        HeaderValue::from_bytes(&out).expect("hex digits and dashes are a valid header value")
    }

    /// The trace id as 32 hex digits, for logs (on the stack: no allocation per request).
    pub fn trace_id_hex(&self) -> TraceIdHex {
        let mut out = [0u8; 32];
        hex(&self.trace_id, &mut out);
        TraceIdHex(out)
    }
}

/// A trace id's 32 lowercase hex digits.
pub struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

/// A valid incoming `traceparent`'s fields.
#[derive(Debug, PartialEq, Eq)]
struct Parent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

/// Parses a `traceparent` by the specification's rules: version `00` is exactly 55
/// characters; a later version (not `ff`) may be longer, with a `-` after the 55th;
/// lowercase hex only; neither id all zeros.
fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = unhex::<1>(&v[..2])?[0];
    match version {
        0xff => return None,
        0x00 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = unhex::<16>(&v[3..35])?;
    let parent_id = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        parent_id,
        flags,
    })
}

/// The caller's `tracestate` (several headers joined with `,`), if every list member is
/// well formed and it is within the limits; else none (an unparseable one is not passed on).
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(&TRACESTATE).iter();
    let first = values.next()?;
    let joined = match values.next() {
        None => first.clone(),
        Some(second) => {
            let mut all = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                all.push(b',');
                all.extend_from_slice(v.as_bytes());
                if all.len() > MAX_TRACESTATE_BYTES {
                    return None;
                }
            }
            HeaderValue::from_bytes(&all).ok()?
        }
    };
    if joined.len() > MAX_TRACESTATE_BYTES {
        return None;
    }
    let mut members = 0;
    for member in joined.as_bytes().split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue;
        }
        members += 1;
        if members > MAX_TRACESTATE_MEMBERS || !list_member(member) {
            return None;
        }
    }
    (members > 0).then_some(joined)
}

/// `key=value`: a key of lowercase letters, digits and `_-*/` (with one `@` for a tenant),
/// up to 256 characters; a value of printable ASCII without `,` and `=`, up to 256, not
/// ending in a space.
fn list_member(member: &[u8]) -> bool {
    let Some(eq) = member.iter().position(|&b| b == b'=') else {
        return false;
    };
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    let key_ok = !key.is_empty()
        && key.len() <= 256
        && key.iter().filter(|&&b| b == b'@').count() <= 1
        && key
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b));
    let value_ok = !value.is_empty()
        && value.len() <= 256
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
    key_ok && value_ok
}

fn hex(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
        out[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 0xf)];
    }
}

/// `N` bytes from `2 * N` lowercase hex digits (uppercase is invalid in a `traceparent`).
fn unhex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn digit(d: u8) -> Option<u8> {
        match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// A thread's random numbers: SplitMix64 seeded once per thread from the OS, so an id costs
/// a few instructions rather than a system call per request.
fn next_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            if getrandom::fill(&mut seed).is_err() {
                use std::hash::{BuildHasher, Hasher};
                seed = std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
                    .to_le_bytes();
            }
            u64::from_le_bytes(seed)
        });
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&next_random().to_be_bytes());
        id[8..].copy_from_slice(&next_random().to_be_bytes());
        if id != [0; 16] {
            return id;
        }
    }
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id = next_random().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// A valid `traceparent` keeps its trace id and flags; the backend's parent id is
    /// wsgate's new span id, and the `tracestate` goes along.
    #[test]
    fn a_valid_traceparent_is_continued_with_a_new_parent_id() {
        let t = TraceContext::from_headers(&headers(&[
            ("traceparent", VALID),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]));
        let out = t.traceparent();
        let out = out.to_str().unwrap();
        assert_eq!(&out[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-");
        assert_eq!(t.trace_id_hex().as_str(), &out[3..35]);
        assert_ne!(&out[36..52], "00f067aa0ba902b7");
        assert_eq!(&out[52..], "-01");
        assert_eq!(t.parent_id, Some(0x00f0_67aa_0ba9_02b7u64.to_be_bytes()));
        assert_eq!(
            t.tracestate.unwrap(),
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        );
    }

    /// Absent, malformed or doubled: a new trace; any `tracestate` is dropped.
    #[test]
    fn an_absent_or_malformed_traceparent_starts_a_new_trace() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for v in bad {
            let t = TraceContext::from_headers(&headers(&[
                ("traceparent", v),
                ("tracestate", "rojo=1"),
            ]));
            assert_eq!(t.parent_id, None, "{v}");
            assert_eq!(t.tracestate, None, "{v}");
            assert_ne!(
                &t.traceparent().to_str().unwrap()[3..35],
                &VALID[3..35],
                "{v}"
            );
        }
        let doubled =
            TraceContext::from_headers(&headers(&[("traceparent", VALID), ("traceparent", VALID)]));
        assert_eq!(doubled.parent_id, None);
        let absent = TraceContext::from_headers(&HeaderMap::new());
        assert_eq!(absent.flags, SAMPLED);
        assert_ne!(absent.trace_id, [0; 16]);
        assert_ne!(absent.trace_id, TraceContext::start().trace_id);
    }

    /// A later version is read by its version-00 fields (longer, with a `-` after them),
    /// passed on as version 00, and only the sampled flag survives.
    #[test]
    fn a_later_version_is_read_as_version_00() {
        let t = TraceContext::from_headers(&headers(&[(
            "traceparent",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-whatever",
        )]));
        let out = t.traceparent();
        assert!(out
            .to_str()
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.to_str().unwrap().ends_with("-01"));
    }

    /// A malformed `tracestate` with a valid `traceparent` is dropped, the trace kept.
    #[test]
    fn a_malformed_tracestate_is_dropped() {
        for bad in ["no-equals", "UPPER=1", "k=a,b=", "k=v=w"] {
            let t = TraceContext::from_headers(&headers(&[
                ("traceparent", VALID),
                ("tracestate", bad),
            ]));
            assert_eq!(t.tracestate, None, "{bad}");
            assert!(t.parent_id.is_some());
        }
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let t =
            TraceContext::from_headers(&headers(&[("traceparent", VALID), ("tracestate", &many)]));
        assert_eq!(t.tracestate, None);
    }
}
