//! Request-target normalization (src/proxy/target.rs): what every request path goes through
//! before routing.
//!
//! Input: any bytes, read as UTF-8 with invalid bytes replaced; a leading `/` is added when
//! the input has none half of the time (low bit of the first byte), so most inputs are
//! origin-form paths.
//! Checks: nothing panics; a path that is normalized starts with `/`, has no `.` or `..`
//! segment (plain or percent-encoded), no encoded slash or backslash, no `//`, no control
//! character or byte outside ASCII, only upper-case escapes; normalizing it again gives it
//! back unchanged and borrowed (idempotent, recognised as normal); a path that is already
//! normal comes back borrowed as it was.

use std::borrow::Cow;

use wsgate::fuzzing::{downstream_has_dot_segment, normalize_path};

/// One input: panics when a property does not hold.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = match data.first() {
        Some(b) if b & 1 == 1 && !text.starts_with('/') => format!("/{text}"),
        _ => text.into_owned(),
    };
    let _ = downstream_has_dot_segment(&path);
    let Ok(normal) = normalize_path(&path) else {
        return;
    };
    if let Cow::Borrowed(same) = &normal {
        assert_eq!(*same, path, "a borrowed answer is the input");
    }
    assert!(normal.starts_with('/'), "{normal:?}");
    assert!(
        !downstream_has_dot_segment(&normal),
        "dot segment in {normal:?}"
    );
    assert!(!normal.contains("//"), "`//` in {normal:?}");
    let upper = normal.to_ascii_uppercase();
    for bad in ["%2E", "%2F", "%5C", "\\"] {
        assert!(!upper.contains(bad), "{bad} in {normal:?}");
    }
    assert!(
        normal.bytes().all(|b| (0x21..0x7f).contains(&b)),
        "a byte outside visible ASCII in {normal:?}"
    );
    for escape in normal.split('%').skip(1) {
        let hex = escape.get(..2).unwrap_or("");
        assert!(
            hex.len() == 2 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
            "escape `%{hex}` in {normal:?}"
        );
    }
    let again = normalize_path(&normal).expect("a normal path is accepted");
    assert!(
        matches!(again, Cow::Borrowed(p) if p == normal),
        "not idempotent: {path:?} → {normal:?} → {again:?}"
    );
}
