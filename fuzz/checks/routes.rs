//! The routes-file targets: a file's bytes as a reload reads them (src/source/file: WsRoute
//! YAML documents or ocelot.json, told apart by content), then the routes it kept compiled
//! into a table, as standalone mode does.

use wsgate::balance::BalanceState;
use wsgate::fuzzing::load_routes_file;
use wsgate::source::file::FileError;
use wsgate::table::{compile, BackendRoots, CompileContext};
use wsgate::telemetry::Metrics;

/// The `routes_yaml` target: a file named `.yaml`. Relative to a directory that does not
/// exist, so TLS files the routes name are not found.
pub fn routes_yaml(data: &[u8]) {
    check("/nonexistent-wsgate-fuzz/routes.yaml", data);
}

/// The `ocelot_json` target: a file named `ocelot.json` (so text that is not JSON is an
/// ocelot.json syntax error).
pub fn ocelot_json(data: &[u8]) {
    check("/nonexistent-wsgate-fuzz/ocelot.json", data);
}

/// Nothing panics; the only file-level error is text that is not UTF-8; problems name lines
/// of the file; loading is deterministic; every route kept compiles or is reported.
fn check(name: &str, bytes: &[u8]) {
    let loaded = match load_routes_file(name, bytes) {
        Ok(loaded) => loaded,
        Err(FileError::NotUtf8 { offset, .. }) => {
            let valid = std::str::from_utf8(bytes).expect_err("valid UTF-8 refused");
            assert_eq!(offset, valid.valid_up_to());
            return;
        }
        Err(e) => panic!("unexpected file error: {e}"),
    };
    let text = std::str::from_utf8(bytes).expect("invalid UTF-8 accepted");
    // The lines of the file, and one more: libyaml reports an error at the end of the text
    // on a line of its own when the last line has no line break.
    let lines = line_breaks(text) + 2;
    for p in &loaded.problems {
        let shown = p.to_string();
        assert!(!shown.is_empty());
        if let Some(line) = p.line {
            assert!(
                line >= 1 && line <= lines,
                "line {line} of {lines}: {shown}"
            );
        }
    }
    assert_eq!(
        load_routes_file(name, bytes).ok().as_ref(),
        Some(&loaded),
        "a second load of the same bytes differs"
    );
    let metrics = Metrics::new();
    let balance = BalanceState::default();
    let roots = BackendRoots::none();
    let ctx = CompileContext {
        metrics: &metrics,
        balance: &balance,
        backend_roots: &roots,
    };
    let (table, problems) = compile(1, &loaded.routes, &ctx);
    assert!(table.routes().len() <= loaded.routes.len());
    for route in &loaded.routes {
        assert!(
            table.routes().iter().any(|c| c.route.id == route.id)
                || problems.iter().any(|p| p.route == route.id),
            "{} was neither compiled nor reported",
            route.id
        );
    }
}

/// Line breaks as YAML 1.1 (libyaml) counts them, the most generous reader of the two
/// formats: CR LF, CR, LF, NEL, LS and PS each end a line.
fn line_breaks(text: &str) -> usize {
    let mut chars = text.chars().peekable();
    let mut breaks = 0;
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                breaks += 1;
            }
            '\n' | '\u{85}' | '\u{2028}' | '\u{2029}' => breaks += 1,
            _ => {}
        }
    }
    breaks
}
