//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_regressions.rs`, which
//! replays their corpora: the parsers of untrusted bytes, reached without a socket. Not an
//! API. Everything here re-exports or calls the real internals; no parsing is written
//! twice, so a fuzz target exercises exactly what a connection or a reload runs.
//!
//! Compiled always (not behind a feature) so every normal build and `clippy` keeps it in step
//! with the internals it reaches.

use std::path::PathBuf;

use crate::source::file::{FileError, LoadedRoutes};
use crate::table::template::{Captures, DownstreamTemplate, UpstreamTemplate};

/// The client's first request head (src/proxy/connection.rs): `parse_request_head` is one
/// step of the head read, `DirectUpgrade::take` decides whether it is served directly and
/// runs the handshake validation.
pub use crate::proxy::connection::{
    parse_head as parse_request_head, DirectSpans, DirectUpgrade, Head as RequestHead,
    HeadReader as RequestHeadReader, HeadStatus as RequestHeadStatus,
};

/// The backend's answer to the upgrade (src/proxy/upgrade.rs).
/// (Its 101 variant's `SwitchedHead` is not re-exported by name: its methods are usable,
/// and it stays out of the crate's public API.)
pub use crate::proxy::upgrade::{parse_head as parse_upstream_head, Head as UpstreamHead};

/// One frame tracker per direction of a relayed connection, and its rules (already public).
pub use crate::proxy::frame::{FrameRules, FrameTracker};

/// A routes file's bytes as a reload reads them (`source::file::load` after the read):
/// content decides between WsRoute YAML and ocelot.json; a `.json` name makes a file that
/// is not JSON an ocelot.json syntax error. Files the routes name (TLS PEM files) are
/// looked up relative to `name`.
pub fn load_routes_file(name: &str, bytes: &[u8]) -> Result<LoadedRoutes, FileError> {
    crate::source::file::parse_files(vec![(PathBuf::from(name), Ok(bytes.to_vec()))])
}

/// Where one captured value lies: a byte range of the request's path, or of its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capture {
    pub in_query: bool,
    pub start: usize,
    pub end: usize,
}

/// An upstream path template (src/table/template.rs) as `compile` parses it.
#[derive(Debug)]
pub struct Template(UpstreamTemplate);

impl Template {
    pub fn parse(template: &str, case_sensitive: bool) -> Result<Template, String> {
        UpstreamTemplate::parse(template, case_sensitive)
            .map(Template)
            .map_err(|e| e.to_string())
    }

    /// Placeholder names, in the order captures are reported.
    pub fn names(&self) -> &[String] {
        &self.0.names
    }

    /// `Some(captures)`, one per name, when the request matches.
    pub fn matches(&self, path: &str, query: Option<&str>) -> Option<Vec<Capture>> {
        let mut caps = Captures::new();
        self.0.matches(path, query, &mut caps).then(|| {
            caps.iter()
                .map(|s| Capture {
                    in_query: s.in_query,
                    start: s.start,
                    end: s.end,
                })
                .collect()
        })
    }

    /// Renders `downstream` for a request this template matches, as a proxied request's
    /// target is made; `None` when it does not match.
    pub fn render(
        &self,
        downstream: &Downstream,
        path: &str,
        query: Option<&str>,
    ) -> Option<String> {
        let mut caps = Captures::new();
        self.0
            .matches(path, query, &mut caps)
            .then(|| downstream.0.render(&self.0.names, &caps, path, query))
    }
}

/// A downstream path template, checked against the placeholders of an upstream one.
#[derive(Debug)]
pub struct Downstream(DownstreamTemplate);

impl Downstream {
    pub fn parse(template: &str, upstream: &Template) -> Result<Downstream, String> {
        DownstreamTemplate::parse(template, &upstream.0.names)
            .map(Downstream)
            .map_err(|e| e.to_string())
    }
}

/// A route's authentication on one request, as both request paths run it
/// (`proxy::auth::check`, then `Authorized::apply`): the route requires tokens of issuer
/// `https://id.example.com` for audience `chat` with scope `chat`, verified with the key
/// set parsed from `jwks` (as a JWKS file or Secret is, `model::Jwks::from_json`). The
/// request carries `authorization` (if any) and the query `query`. Returns the status of
/// wsgate's refusal, or the path and query the backend would receive
/// (`/hub?<query without access_token>`).
pub fn authenticate(jwks: &[u8], authorization: Option<&[u8]>, query: &str) -> Result<String, u16> {
    use crate::api::{AuthenticationOptions, JwtOptions, WsRouteSpec};
    use crate::model::{route_from_spec, Jwks, JwksUnavailable, RouteId, SpecBackends};

    let mut spec = WsRouteSpec::with_static_backends(
        "/{everything}",
        "/{everything}",
        &["127.0.0.1:1".parse().expect("an address")],
    );
    spec.authentication_options = Some(AuthenticationOptions {
        jwt: JwtOptions {
            issuer: Some("https://id.example.com".into()),
            audiences: vec!["chat".into()],
            jwks_file: Some("jwks.json".into()),
            leeway: Some("30s".into()),
            ..Default::default()
        },
        allowed_scopes: vec!["chat".into()],
        close_on_token_expiry: Some(true),
    });
    spec.add_headers_to_request
        .insert("X-User-Id".into(), "Claims[sub] > value[0] > |".into());
    let mut route = route_from_spec(RouteId("fuzz".into()), 0, &spec, SpecBackends::Static)
        .expect("the fuzz route is valid");
    if let Some(auth) = route.authentication.as_mut() {
        auth.jwks = Jwks::from_json("fuzz", jwks).map_err(|e| JwksUnavailable::new(e.to_string()));
    }
    let mut headers = http::HeaderMap::new();
    if let Some(value) = authorization.and_then(|v| http::HeaderValue::from_bytes(v).ok()) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    let query = (!query.is_empty()).then_some(query);
    match crate::proxy::auth::check(&route, &headers, query) {
        Ok(authorized) => {
            let mut downstream = match query {
                Some(q) => format!("/hub?{q}"),
                None => "/hub".to_string(),
            };
            authorized.apply(&route, &mut headers, &mut downstream);
            Ok(downstream)
        }
        Err(e) => Err(e.status().as_u16()),
    }
}

/// Request-target normalization (src/proxy/target.rs): what every request's path goes
/// through before routing, and the check of a rendered downstream target.
pub use crate::proxy::target::{
    has_dot_segment as downstream_has_dot_segment, normalize as normalize_path, PathError,
};
