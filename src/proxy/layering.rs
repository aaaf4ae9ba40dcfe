//! A test that keeps the modules of `proxy/` free of import cycles: each module's
//! non-test code may name only siblings that do not, directly or not, name it back
//! (the order is in `proxy/mod.rs`'s doc comment).

use std::collections::{BTreeMap, BTreeSet};

/// Each module of `proxy/` (its `name.rs`, not its sub-folder) and the siblings its code
/// before `#[cfg(test)]` names as `super::sibling` or `crate::proxy::sibling`.
fn sibling_imports() -> BTreeMap<String, BTreeSet<String>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy");
    let modules: BTreeMap<String, String> = std::fs::read_dir(&dir)
        .expect("src/proxy is readable")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let name = path.file_stem()?.to_str()?.to_string();
            (path.extension()? == "rs" && name != "mod")
                .then(|| (name, std::fs::read_to_string(&path).unwrap_or_default()))
        })
        .collect();
    modules
        .iter()
        .map(|(name, text)| {
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let named = modules
                .keys()
                .filter(|other| *other != name)
                .filter(|other| {
                    [format!("super::{other}"), format!("crate::proxy::{other}")]
                        .iter()
                        .any(|path| names(code, path))
                        || grouped_names(code, other)
                })
                .cloned()
                .collect();
            (name.clone(), named)
        })
        .collect()
}

/// Whether `code` contains `path` as a whole path segment (not a prefix of a longer name).
fn names(code: &str, path: &str) -> bool {
    code.match_indices(path).any(|(at, _)| {
        !code[at + path.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })
}

/// Whether `code` names `module` inside a `use super::{...}` group.
fn grouped_names(code: &str, module: &str) -> bool {
    code.match_indices("super::{").any(|(at, _)| {
        let group = &code[at + 8..];
        let group = &group[..group.find('}').unwrap_or(group.len())];
        group
            .split(',')
            .any(|item| item.split([':', ' ', '\n']).find(|w| !w.is_empty()) == Some(module))
    })
}

/// No module of `proxy/` reaches itself through the siblings it imports.
#[test]
fn proxy_modules_import_without_cycles() {
    let imports = sibling_imports();
    assert!(imports.len() > 10, "found {imports:?}");
    assert!(imports["websocket"].contains("upgrade"), "{imports:?}");
    for start in imports.keys() {
        let mut stack: Vec<Vec<&str>> = vec![vec![start.as_str()]];
        while let Some(path) = stack.pop() {
            let last = path[path.len() - 1];
            for next in &imports[last] {
                assert_ne!(next, start, "import cycle: {} -> {next}", path.join(" -> "));
                if !path.contains(&next.as_str()) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push(longer);
                }
            }
        }
    }
}
