//! Tidy test (in the manner of rust-analyzer's `xtask/src/tidy.rs`): the crate's top-level
//! modules import only downward.
//!
//! api, telemetry (and echo, a leaf) < model < balance < table < proxy, source < app;
//! proxy and source never import each other; `lib.rs` and `main.rs` sit above everything.
//! A path counts where `crate::X` appears in code (comments are ignored), including
//! `use crate::{X::a, Y::b}` groups. Each violation prints as
//! `src/file.rs:LINE: layer X imports higher layer Y`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules and their rank: a module may import modules of a lower rank only.
/// Modules of equal rank never import each other.
const LAYERS: &[(&str, u8)] = &[
    ("api", 0),
    ("telemetry", 0),
    // The echo backend (`wsgate echo`, tests) stands alone: it imports nothing of the crate.
    ("echo", 0),
    ("model", 1),
    ("balance", 2),
    ("table", 3),
    ("proxy", 4),
    ("source", 4),
    ("app", 5),
    // Entry points for fuzz/ and tests/fuzz_regressions.rs into proxy, source and table: at
    // the top with app; nothing imports it.
    ("fuzzing", 5),
];

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The top-level module a file under `src/` belongs to; `None` for `lib.rs` and `main.rs`.
fn top_module(relative: &Path) -> Option<String> {
    let mut parts = relative.components();
    let first = parts.next()?.as_os_str().to_str()?.to_string();
    if parts.next().is_some() {
        return Some(first);
    }
    match first.strip_suffix(".rs") {
        Some("lib" | "main") | None => None,
        Some(m) => Some(m.to_string()),
    }
}

/// The text with every `//` comment (doc comments included) blanked, lines kept, so
/// prose that names a module is not an import.
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| match find_comment(line) {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where a `//` comment starts on a line, outside string literals.
fn find_comment(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every top-level module named by a `crate::` path in `code`, with its 1-based line.
fn imported_modules(code: &str) -> Vec<(usize, String)> {
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].bytes().filter(|&b| b == b'\n').count() + 1;
    let ident_at = |mut at: usize| {
        let start = at;
        while at < bytes.len() && is_ident(bytes[at]) {
            at += 1;
        }
        &code[start..at]
    };
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = code[from..].find("crate::") {
        let at = from + offset;
        from = at + "crate::".len();
        // `$crate::` (macros) and `wsgate_crate::`-like identifiers are not this crate.
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'$') {
            continue;
        }
        let mut next = from;
        while next < bytes.len() && bytes[next].is_ascii_whitespace() {
            next += 1;
        }
        if bytes.get(next) != Some(&b'{') {
            found.push((line_of(at), ident_at(next).to_string()));
            continue;
        }
        // `crate::{a::X, b::{Y, Z}}`: the first identifier of each item at depth 1.
        let mut depth = 0usize;
        let mut expect_item = true;
        let mut i = next;
        while i < bytes.len() {
            match bytes[i] {
                b'{' => {
                    depth += 1;
                    expect_item = depth == 1;
                }
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b',' if depth == 1 => expect_item = true,
                b if expect_item && depth == 1 && is_ident(b) => {
                    found.push((line_of(i), ident_at(i).to_string()));
                    expect_item = false;
                }
                _ => {}
            }
            i += 1;
        }
    }
    found
}

/// The layer violations of one file of module `module`, as report lines.
fn violations(shown: &str, module: &str, text: &str) -> Vec<String> {
    let Some(own) = rank(module) else {
        return vec![format!(
            "{shown}:1: top-level module `{module}` has no layer; add it to LAYERS in tests/layers.rs"
        )];
    };
    let mut out = Vec::new();
    for (line, imported) in imported_modules(&without_comments(text)) {
        if imported == module || imported == "self" {
            continue;
        }
        // Items of lib.rs itself (none today) and unknown names are not layers.
        let Some(theirs) = rank(&imported) else {
            continue;
        };
        if theirs > own {
            out.push(format!(
                "{shown}:{line}: layer {module} imports higher layer {imported}"
            ));
        } else if theirs == own {
            out.push(format!(
                "{shown}:{line}: layer {module} imports higher layer {imported} ({module} and {imported} are siblings: neither may import the other)"
            ));
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every file under `src/` imports only modules of lower layers.
#[test]
fn layers_import_only_downward() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    let mut report = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(&src).expect("under src");
        let Some(module) = top_module(relative) else {
            continue;
        };
        let text = std::fs::read_to_string(path).expect("read source file");
        let shown = format!("src/{}", relative.display());
        report.extend(violations(&shown, &module, &text));
        *checked.entry(module).or_default() += 1;
    }
    // A walk that found nothing would pass vacuously.
    for (module, _) in LAYERS {
        assert!(
            checked.contains_key(*module),
            "no file of layer `{module}` under src/ (checked: {checked:?})"
        );
    }
    assert!(
        report.is_empty(),
        "{} layer violation(s):\n{}",
        report.len(),
        report.join("\n")
    );
}

/// The scanner finds plain, grouped and multi-line paths, and ignores comments, `$crate`
/// and downward imports.
#[test]
fn scanner_reports_upward_imports_only() {
    let text = "\
//! Docs may name crate::app freely.
use crate::model::Route; // crate::app in a comment
use crate::proxy::tls::UpstreamTls;
use crate::{
    balance::Balancer,
    source::{file, kube},
};
fn f() { let _ = crate::app::run; let _ = $crate::app::x; }
";
    assert_eq!(
        violations("src/table/x.rs", "table", text),
        [
            "src/table/x.rs:3: layer table imports higher layer proxy",
            "src/table/x.rs:6: layer table imports higher layer source",
            "src/table/x.rs:8: layer table imports higher layer app",
        ]
    );
    assert_eq!(
        violations("src/proxy/x.rs", "proxy", "use crate::source::kube;\n"),
        ["src/proxy/x.rs:1: layer proxy imports higher layer source (proxy and source are siblings: neither may import the other)"]
    );
    assert!(violations("src/app/x.rs", "app", text).is_empty());
    assert_eq!(
        violations("src/newmod.rs", "newmod", ""),
        ["src/newmod.rs:1: top-level module `newmod` has no layer; add it to LAYERS in tests/layers.rs"]
    );
}
