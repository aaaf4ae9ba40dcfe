//! Ocelot path templates (src/table/template.rs): parsing, matching and rendering.
//!
//! Input: lines (UTF-8, invalid bytes replaced). The first byte's low bit makes the
//! template case-sensitive; the rest of the first line is an upstream template, the second
//! a downstream template, each further line a request target (`path?query`).
//! Checks: nothing panics; a match has one capture per placeholder, each a range of the
//! request's path or query on character boundaries; a rendered downstream target starts
//! with `/`; a template without placeholders matches its own text.

use wsgate::fuzzing::{Downstream, Template};

/// One input: panics when a property does not hold.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let upstream = lines.next().unwrap_or("");
    let downstream = lines.next().unwrap_or("/");
    let Ok(template) = Template::parse(upstream, flags & 1 == 1) else {
        return;
    };
    if !upstream.contains(['{', '}']) {
        let (path, query) = split_target(upstream);
        assert!(
            template.matches(path, query).is_some(),
            "`{upstream}` does not match itself"
        );
    }
    let downstream = Downstream::parse(downstream, &template).ok();
    for target in lines.take(16) {
        let (path, query) = split_target(target);
        let Some(caps) = template.matches(path, query) else {
            continue;
        };
        assert_eq!(caps.len(), template.names().len());
        for c in &caps {
            let source = if c.in_query {
                query.unwrap_or("")
            } else {
                path
            };
            assert!(
                source.get(c.start..c.end).is_some(),
                "capture {c:?} is not a slice of {source:?}"
            );
        }
        if let Some(d) = &downstream {
            let rendered = template.render(d, path, query).expect("it matched");
            assert!(rendered.starts_with('/'), "rendered {rendered:?}");
        }
    }
}

/// A request target as the proxy splits it: the path, and the query after the first `?`.
fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}
