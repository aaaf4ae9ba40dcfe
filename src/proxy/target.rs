//! Request-target normalization, on for every request (WebSocket handshakes and plain
//! HTTP, on both request paths) before the route lookup: routes match the normalized path
//! and the downstream path is rendered from it, so a backend never receives a `.` or `..`
//! segment, plain or percent-encoded, and a route meant to expose `/public/...` cannot be
//! walked out of with `/api/../admin` (docs/security.md).
//!
//! `normalize` is a pure function of the path (the part of the request target before `?`;
//! the query is never touched):
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded, every other
//!   escape keeps its byte with upper-case hex (RFC 3986 §6.2.2.1, §6.2.2.2);
//! - a raw byte that RFC 3986 does not allow in a path (`"`, `<`, `>`, `[`, `]`, `^`, `` ` ``,
//!   `{`, `|`, `}`, `#`) is percent-encoded;
//! - empty segments are dropped (`//` is `/`, as nginx's default `merge_slashes` and most
//!   ingresses do), then `.` and `..` segments are resolved (RFC 3986 §5.2.4) after
//!   decoding, so `%2e%2e` and `.%2E` are `..`; a final `.` or `..` leaves a trailing `/`;
//! - refused (400): a path that climbs above the root, `%2F` or `%5C` (an encoded `/` or `\`,
//!   which some backends decode into a separator after routing), a raw `\` (a separator on
//!   some backends), a raw or encoded control character (NUL included), a raw byte outside
//!   ASCII, a malformed escape, a dot segment with parameters (`..;x`, read as `..` by some
//!   servlet containers), and a path that does not start with `/`.
//!
//! Imports no sibling: the bottom layer of `proxy`.

use std::borrow::Cow;

/// Why a request path was refused (400, counted as `RefusalReason::Path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotOriginForm,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
    #[error("the path contains an encoded slash (`%2F`)")]
    EncodedSlash,
    #[error("the path contains an encoded backslash (`%5C`)")]
    EncodedBackslash,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a control character")]
    ControlCharacter,
    #[error("the path contains a byte outside ASCII (percent-encode it)")]
    NonAscii,
    #[error("the path contains a `%` not followed by two hex digits")]
    BadPercentEncoding,
    #[error("the path contains a dot segment with parameters (`..;`)")]
    DotSegmentParameters,
    /// The route's downstream template put a dot segment into the rendered path.
    #[error("the downstream path would contain a `.` or `..` segment")]
    DownstreamDotSegment,
}

/// The normalized form of `path` (see the module's doc); borrowed when `path` is already
/// normal, which is the common case and costs one pass over its bytes.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path.as_bytes()) {
        Ok(Cow::Borrowed(path))
    } else {
        rewrite(path.as_bytes()).map(Cow::Owned)
    }
}

/// Whether a rendered downstream target (path and query) has a `.` or `..` segment in its
/// path, plain or percent-encoded. A normalized request path has none; this catches one
/// made by the route's own downstream template (a literal `..`, or placeholders embedded
/// in one segment that join into `..`).
pub fn has_dot_segment(target: &str) -> bool {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    path.split('/').any(|segment| {
        let segment = segment.split_once(';').map_or(segment, |(s, _)| s);
        let mut dots = 0;
        let mut rest = segment.as_bytes();
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3
                && rest[0] == b'%'
                && rest[1] == b'2'
                && rest[2] | 0x20 == b'e'
            {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

/// A byte that may stand in a normalized path as it is: `/` and RFC 3986's `pchar`
/// without `%` (unreserved, sub-delims, `:`, `@`).
fn is_plain(b: u8) -> bool {
    matches!(b,
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        | b':' | b'@' | b'/')
}

fn is_unreserved(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~')
}

/// One pass: only plain bytes, no `//`, no segment that is `.` or `..` or starts with `.;`
/// or `..;`. Anything else takes `rewrite`, which also finds the refusals.
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut segment_start = 1;
    let mut i = 1;
    while i <= path.len() {
        let b = path.get(i).copied();
        if b.is_some_and(|b| b != b'/' && is_plain(b)) {
            i += 1;
            continue;
        }
        if b == Some(b'%') {
            if !is_normal_escape(path.get(i + 1..i + 3)) {
                return false;
            }
            i += 3;
            continue;
        }
        if b.is_some_and(|b| b != b'/') {
            return false;
        }
        let segment = &path[segment_start..i];
        // An empty segment is `//` unless it is the one after a trailing slash (or `/`).
        if segment.is_empty() && b.is_some() {
            return false;
        }
        let name = segment.split(|&b| b == b';').next().unwrap_or(segment);
        if name == b"." || name == b".." {
            return false;
        }
        segment_start = i + 1;
        i += 1;
    }
    true
}

/// Whether the two bytes after a `%` are what `rewrite` leaves: upper-case hex of a byte
/// that is kept escaped.
fn is_normal_escape(hex: Option<&[u8]>) -> bool {
    let Some(&[hi, lo]) = hex else {
        return false;
    };
    let upper = |b: u8| matches!(b, b'0'..=b'9' | b'A'..=b'F');
    let (Some(h), Some(l)) = (hex_value(hi), hex_value(lo)) else {
        return false;
    };
    if !upper(hi) || !upper(lo) {
        return false;
    }
    let byte = h << 4 | l;
    !(is_unreserved(byte) || byte == b'/' || byte == b'\\' || byte < 0x20 || byte == 0x7f)
}

/// The slow path of `normalize`: decode, check, resolve.
fn rewrite(path: &[u8]) -> Result<String, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut out = String::with_capacity(path.len());
    // Where each segment kept in `out` starts (its `/`), so `..` can drop the last one.
    let mut starts: Vec<usize> = Vec::new();
    let mut segment = String::new();
    let mut trailing_slash = false;
    for raw in path[1..].split(|&b| b == b'/') {
        segment.clear();
        decode_segment(raw, &mut segment)?;
        let name = segment.split(';').next().unwrap_or("");
        match (name, segment.len() == name.len()) {
            ("", true) => trailing_slash = true,
            (".", true) => trailing_slash = true,
            ("..", true) => {
                let start = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(start);
                trailing_slash = true;
            }
            (".", false) | ("..", false) => return Err(PathError::DotSegmentParameters),
            _ => {
                starts.push(out.len());
                out.push('/');
                out.push_str(&segment);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Appends `raw` (one segment, no `/`) to `out` in normal form.
fn decode_segment(raw: &[u8], out: &mut String) -> Result<(), PathError> {
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    raw.get(i + 1).copied().and_then(hex_value),
                    raw.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadPercentEncoding);
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    _ if decoded < 0x20 || decoded == 0x7f => {
                        return Err(PathError::ControlCharacter)
                    }
                    _ if is_unreserved(decoded) => out.push(char::from(decoded)),
                    _ => push_escaped(out, decoded),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            _ if b >= 0x80 => return Err(PathError::NonAscii),
            _ if is_plain(b) => out.push(char::from(b)),
            _ => push_escaped(out, b),
        }
        i += 1;
    }
    Ok(())
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
