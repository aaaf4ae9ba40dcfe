use super::*;

mod files;
mod limits;
mod ocelot;
mod ocelot_auth;
mod tls;
mod watch;
mod wsroute;

/// Parses `text` as the content of a file called `name` (nothing is read from disk).
fn load_str(name: &str, text: &str) -> LoadedRoutes {
    parse_files(vec![(PathBuf::from(name), Ok(text.as_bytes().to_vec()))]).unwrap()
}

fn ids(loaded: &LoadedRoutes) -> Vec<&str> {
    loaded.routes.iter().map(|r| r.id.0.as_str()).collect()
}

/// `(severity, document, field)` of every problem, for compact assertions.
fn summary(loaded: &LoadedRoutes) -> Vec<(Severity, Option<usize>, &str)> {
    loaded
        .problems
        .iter()
        .map(|p| (p.severity, p.document, p.field.as_str()))
        .collect()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/routes")
        .join(name)
}
