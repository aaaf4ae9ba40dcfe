//! Replays the fuzz targets' committed inputs (fuzz/corpus/<target>/ and
//! fuzz/regressions/<target>/) through the same checks the targets run (fuzz/checks/), so a
//! crash once found and fixed stays fixed under a plain `cargo test`, without cargo-fuzz or
//! a nightly toolchain. The checks call the parsers through `wsgate::fuzzing`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/frame_tracker.rs"]
mod frame_tracker;
#[path = "../fuzz/checks/http_head.rs"]
mod http_head;
#[path = "../fuzz/checks/jwt_token.rs"]
mod jwt_token;
#[path = "../fuzz/checks/path_normalizer.rs"]
mod path_normalizer;
#[path = "../fuzz/checks/relay_machine.rs"]
mod relay_machine;
#[path = "../fuzz/checks/routes.rs"]
mod routes;
#[path = "../fuzz/checks/template.rs"]
mod template;
#[path = "../fuzz/checks/upstream_response.rs"]
mod upstream_response;

/// Every file of the target's corpus and regressions, sorted; at least one seed.
fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        files.iter().any(|f| f.starts_with(fuzz.join("corpus"))),
        "no seeds in fuzz/corpus/{target}"
    );
    files
}

/// Runs `check` on every input and names each one that panics.
fn replay(target: &str, check: fn(&[u8])) {
    let mut failed = Vec::new();
    let files = inputs(target);
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {target} fail: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn http_head_inputs_pass() {
    replay("http_head", http_head::check);
}

#[test]
fn upstream_response_inputs_pass() {
    replay("upstream_response", upstream_response::check);
}

#[test]
fn frame_tracker_inputs_pass() {
    replay("frame_tracker", frame_tracker::check);
}

#[test]
fn relay_machine_inputs_pass() {
    replay("relay_machine", relay_machine::check);
}

#[test]
fn template_inputs_pass() {
    replay("template", template::check);
}

#[test]
fn routes_yaml_inputs_pass() {
    replay("routes_yaml", routes::routes_yaml);
}

#[test]
fn ocelot_json_inputs_pass() {
    replay("ocelot_json", routes::ocelot_json);
}

#[test]
fn jwt_token_inputs_pass() {
    replay("jwt_token", jwt_token::check);
}

/// The jwt_token seeds reach past the signature check: the valid ones are accepted (so the
/// fuzzer starts from tokens that verify), and the query one reaches the backend without
/// its token.
#[test]
fn jwt_token_seeds_include_accepted_requests() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/jwt_token");
    let parts = |name: &str| {
        let data = std::fs::read(fuzz.join(name)).unwrap();
        let text = String::from_utf8(data).unwrap();
        let mut it = text.splitn(3, "\n\n").map(String::from);
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    };
    let (auth, query, jwks) = parts("valid_header");
    let got = wsgate::fuzzing::authenticate(jwks.as_bytes(), Some(auth.as_bytes()), &query);
    assert_eq!(got, Ok("/hub?id=1".to_string()));
    let (_, query, jwks) = parts("valid_query");
    let got = wsgate::fuzzing::authenticate(jwks.as_bytes(), None, &query);
    assert_eq!(got, Ok("/hub?id=1&x=2".to_string()));
    let (auth, query, jwks) = parts("no_scope");
    let got = wsgate::fuzzing::authenticate(jwks.as_bytes(), Some(auth.as_bytes()), &query);
    assert_eq!(got, Err(403));
}

#[test]
fn path_normalizer_inputs_pass() {
    replay("path_normalizer", path_normalizer::check);
}
