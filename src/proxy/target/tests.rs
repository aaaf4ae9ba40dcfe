use proptest::prelude::*;

use super::*;

fn ok(path: &str) -> String {
    normalize(path)
        .unwrap_or_else(|e| panic!("{path:?} refused: {e}"))
        .into_owned()
}

fn refused(path: &str) -> PathError {
    normalize(path).expect_err(path)
}

/// A normal path is returned as it is, without a copy.
#[test]
fn normal_paths_are_borrowed_unchanged() {
    for path in [
        "/",
        "/api/chat",
        "/api/chat/",
        "/a/b.c/..d/.e/d..",
        "/a;b=c/d@e:f/~x_y-z",
        "/!$&'()*+,;=",
        "/a%20b/%C3%A9%3F",
    ] {
        assert!(
            matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path),
            "{path}"
        );
    }
}

/// RFC 3986 §5.2.4's examples and the tricks of issue 20, each with its normal form.
#[test]
fn dot_segments_are_resolved_after_decoding() {
    for (path, want) in [
        ("/a/b/c/./../../g", "/a/g"),
        ("/mid/content=5/../6", "/mid/6"),
        ("/api/../admin", "/admin"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/%2E%2e/admin", "/admin"),
        ("/api/.%2E/admin", "/admin"),
        ("/api/%2e/admin", "/api/admin"),
        ("/api/./admin", "/api/admin"),
        ("/api/x/..", "/api/"),
        ("/api/x/.", "/api/x/"),
        ("/api/x/%2e", "/api/x/"),
        ("/..a/b..", "/..a/b.."),
        ("/a/.../b", "/a/.../b"),
    ] {
        assert_eq!(ok(path), want, "{path}");
    }
}

/// `//` is `/`, wherever it stands; empty segments never reach `..`.
#[test]
fn empty_segments_collapse() {
    for (path, want) in [
        ("//", "/"),
        ("//api//chat", "/api/chat"),
        ("/api/chat//", "/api/chat/"),
        ("/a//../b", "/b"),
        ("///", "/"),
    ] {
        assert_eq!(ok(path), want, "{path}");
    }
}

/// Unreserved escapes are decoded, the rest keep their byte with upper-case hex, and raw
/// bytes RFC 3986 does not allow in a path are escaped.
#[test]
fn escapes_are_normalized() {
    for (path, want) in [
        ("/%61%62%7E%2d%5F", "/ab~-_"),
        ("/a%3fb", "/a%3Fb"),
        ("/a%25b", "/a%25b"),
        ("/a%3Fb%20", "/a%3Fb%20"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a%20b", "/a%20b"),
        (
            "/a\"b<c>{d}|e^f`g[h]#",
            "/a%22b%3Cc%3E%7Bd%7D%7Ce%5Ef%60g%5Bh%5D%23",
        ),
    ] {
        assert_eq!(ok(path), want, "{path}");
    }
}

/// Each refusal names its cause.
#[test]
fn tricks_are_refused_with_their_cause() {
    for (path, want) in [
        ("/..", PathError::AboveRoot),
        ("/api/../..", PathError::AboveRoot),
        ("/%2e%2e/x", PathError::AboveRoot),
        ("/api/..%2fadmin", PathError::EncodedSlash),
        ("/api/..%2Fadmin", PathError::EncodedSlash),
        ("/a%2fb", PathError::EncodedSlash),
        ("/a%5cb", PathError::EncodedBackslash),
        ("/a%5Cb", PathError::EncodedBackslash),
        ("/a\\b", PathError::Backslash),
        ("/a%00b", PathError::ControlCharacter),
        ("/a%0d%0ab", PathError::ControlCharacter),
        ("/a%7fb", PathError::ControlCharacter),
        ("/a\u{1}b", PathError::ControlCharacter),
        ("/a\tb", PathError::ControlCharacter),
        ("/café", PathError::NonAscii),
        ("/a%", PathError::BadPercentEncoding),
        ("/a%2", PathError::BadPercentEncoding),
        ("/a%zzb", PathError::BadPercentEncoding),
        ("/a/..;/b", PathError::DotSegmentParameters),
        ("/a/%2e;x/b", PathError::DotSegmentParameters),
        ("*", PathError::NotOriginForm),
        ("", PathError::NotOriginForm),
        ("api", PathError::NotOriginForm),
    ] {
        assert_eq!(refused(path), want, "{path}");
    }
}

/// A rendered downstream target is checked for dot segments in its path only.
#[test]
fn dot_segments_in_rendered_targets_are_found() {
    for target in [
        "/a/../b",
        "/a/./b",
        "/a/%2e%2E",
        "/.",
        "/a/..;x",
        "/a/.?q=1",
    ] {
        assert!(has_dot_segment(target), "{target}");
    }
    for target in ["/", "/a/b", "/a/.../b", "/a/..b", "/a?x=/../", "/a/%2e%2f"] {
        assert!(!has_dot_segment(target), "{target}");
    }
}

/// What a request path is made of, tricks included.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/", "a", "b", "Z", ".", "..", "%2e", "%2E", "%2e%2E", "%2f", "%2F", "%5c", "\\", "%00",
        "%41", "%7e", "%3f", "%3F", "%c3", ";", "..;", "~", "%", "%g", "\u{7f}", "é", "\"", "#",
        "-", "_", "@", ":",
    ])
}

/// A path of plain segments and dot segments, plain or encoded, and its normal form computed
/// the simple way: decode each segment, drop empty ones, resolve dots with a stack.
fn dotted_path() -> impl Strategy<Value = (String, Option<String>)> {
    let segment = prop::sample::select(vec![
        "a", "bc", ".", "..", "%2e", "%2E%2e", ".%2e", "", "%41",
    ]);
    (prop::collection::vec(segment, 0..12), any::<bool>()).prop_map(|(segments, trailing)| {
        let mut path = String::new();
        for s in &segments {
            path.push('/');
            path.push_str(s);
        }
        if trailing || path.is_empty() {
            path.push('/');
        }
        let mut stack: Vec<String> = Vec::new();
        let mut slash = true;
        for s in &segments {
            let decoded = s
                .replace("%2e", ".")
                .replace("%2E", ".")
                .replace("%41", "A");
            match decoded.as_str() {
                "" | "." => slash = true,
                ".." => {
                    if stack.pop().is_none() {
                        return (path, None);
                    }
                    slash = true;
                }
                _ => {
                    stack.push(decoded);
                    slash = false;
                }
            }
        }
        if trailing {
            slash = true;
        }
        let mut want = String::new();
        for s in &stack {
            want.push('/');
            want.push_str(s);
        }
        if slash || want.is_empty() {
            want.push('/');
        }
        (path, Some(want))
    })
}

proptest! {
    /// Normalizing twice changes nothing more, and a normal path has no dot segment, no
    /// encoded dot, slash or backslash, no `//`, and only bytes allowed in a path.
    #[test]
    fn normal_form_is_idempotent_and_clean(pieces in prop::collection::vec(piece(), 0..24)) {
        let path: String = std::iter::once("/").chain(pieces).collect();
        if let Ok(normal) = normalize(&path) {
            let again = normalize(&normal).expect("a normal path is accepted");
            prop_assert_eq!(&again, &normal);
            prop_assert!(matches!(again, Cow::Borrowed(_)), "normal form is recognised");
            prop_assert!(normal.starts_with('/'));
            prop_assert!(!has_dot_segment(&normal), "{normal}");
            prop_assert!(!normal.contains("//"), "{normal}");
            let upper = normal.to_ascii_uppercase();
            for bad in ["%2E", "%2F", "%5C", "%00", "\\"] {
                prop_assert!(!upper.contains(bad), "{normal} has {bad}");
            }
            prop_assert!(normal.bytes().all(|b| is_plain(b) || b == b'%'), "{normal}");
        }
    }

    /// Dot segments resolve as RFC 3986 §5.2.4 says (after decoding and dropping empty
    /// segments); climbing above the root is refused.
    #[test]
    fn dot_segments_resolve_like_a_stack((path, want) in dotted_path()) {
        match want {
            Some(want) => prop_assert_eq!(ok(&path), want),
            None => prop_assert_eq!(refused(&path), PathError::AboveRoot),
        }
    }

    /// Any string: an answer, never a panic.
    #[test]
    fn any_input_gets_an_answer(path in ".{0,64}") {
        let _ = normalize(&path);
        let _ = has_dot_segment(&path);
    }
}
