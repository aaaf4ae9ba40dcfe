use std::sync::Arc;

use http::Method;

use super::*;
use crate::model::{
    Endpoint, LoadBalancer, ProblemReason, RouteId, RouteProblem, Scheme, Timeouts,
};

/// A route with one static endpoint; chain the `with_*` helpers for the rest.
pub(super) fn route(id: &str, order: u64, upstream: &str, downstream: &str) -> Route {
    Route {
        id: RouteId(id.to_string()),
        order,
        upstream_path_template: upstream.to_string(),
        upstream_host: None,
        methods: Vec::new(),
        case_sensitive: false,
        priority: 1,
        downstream_path_template: downstream.to_string(),
        scheme: Scheme::Ws,
        endpoints: vec![Endpoint::new("10.0.0.1", 8080)],
        load_balancer: LoadBalancer::NoLoadBalancer,
        pin_signalr_connections: false,
        insecure_skip_verify: false,
        timeouts: Timeouts::default(),
        certificate: None,
        backend_tls: Default::default(),
        limits: Default::default(),
        rate_limit: None,
        authentication: None,
        allowed_origins: None,
        ip_rules: None,
        drain: None,
        rebalance: None,
        keepalive: None,
    }
}

pub(super) trait RouteBuilder {
    fn with_host(self, host: &str) -> Self;
    fn with_methods(self, methods: &[Method]) -> Self;
    fn with_priority(self, priority: i32) -> Self;
    fn case_sensitive(self) -> Self;
}

impl RouteBuilder for Route {
    fn with_host(mut self, host: &str) -> Self {
        self.upstream_host = Some(host.to_string());
        self
    }
    fn with_methods(mut self, methods: &[Method]) -> Self {
        self.methods = methods.to_vec();
        self
    }
    fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    fn case_sensitive(mut self) -> Self {
        self.case_sensitive = true;
        self
    }
}

pub(super) fn build(routes: &[Route]) -> (RouteTable, Vec<RouteProblem>) {
    let metrics = Metrics::new();
    let balance = crate::balance::BalanceState::default();
    compile(
        7,
        routes,
        &CompileContext {
            metrics: &metrics,
            balance: &balance,
            backend_roots: &BackendRoots::none(),
        },
    )
}

fn table(routes: &[Route]) -> RouteTable {
    let (table, problems) = build(routes);
    assert!(problems.is_empty(), "unexpected problems: {problems:?}");
    table
}

fn split(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    }
}

/// Id of the route matching `GET host target` (`target` = path with optional `?query`).
pub(super) fn hit(table: &RouteTable, host: Option<&str>, target: &str) -> Option<String> {
    hit_method(table, host, target, &Method::GET)
}

fn hit_method(
    table: &RouteTable,
    host: Option<&str>,
    target: &str,
    method: &Method,
) -> Option<String> {
    let (path, query) = split(target);
    table.find(host, path, query, method).map(|m| {
        // Every match carries the route's position, which a relay holds instead of the route.
        assert!(
            std::ptr::eq(&table.routes()[m.index], m.route),
            "index of {target}"
        );
        m.route.route.id.0.clone()
    })
}

/// Downstream path and query for `GET target` on any host.
fn downstream(table: &RouteTable, target: &str) -> Option<String> {
    let (path, query) = split(target);
    table
        .find(None, path, query, &Method::GET)
        .map(|m| m.downstream_path_and_query())
}

fn problem_of(upstream: &str, downstream: &str) -> RouteProblem {
    let (t, mut problems) = build(&[route("r", 0, upstream, downstream)]);
    assert!(t.routes().is_empty());
    assert_eq!(problems.len(), 1, "{problems:?}");
    problems.remove(0)
}

// ---- template parsing ----

/// Unbalanced braces, empty and duplicate names, adjacent placeholders and bad query parts
/// are InvalidTemplate problems on the upstream field.
#[test]
fn malformed_upstream_templates_are_invalid_template_problems() {
    for (template, needle) in [
        ("/api/{room", "without a matching `}`"),
        ("/api/room}", "without a matching `{`"),
        ("/api/{a{b}}", "without a matching `}`"),
        ("/api/{}", "empty placeholder"),
        ("/api/{ }", "empty placeholder"),
        ("/api/{a}/{a}", "twice"),
        ("/api/{a}?a={a}", "twice"),
        ("/api/{a}{b}/x", "literal text between"),
        ("/api?room", "query part `room`"),
        ("/api?{a}&b={b}", "query part `{a}`"),
        ("/api?k=x{a}", "query part `k=x{a}`"),
        ("api/{a}", "must start with `/`"),
    ] {
        let p = problem_of(template, "/");
        assert_eq!(p.reason, ProblemReason::InvalidTemplate, "{template}");
        assert_eq!(p.field, "spec.upstreamPathTemplate", "{template}");
        assert!(p.message.contains(needle), "{template}: {}", p.message);
    }
}

/// A downstream placeholder the upstream template does not capture, or malformed braces
/// downstream, are InvalidTemplate problems on the downstream field.
#[test]
fn downstream_template_problems_name_the_downstream_field() {
    for (downstream, needle) in [
        (
            "/ws/{user}",
            "`{user}`, which the upstream template does not capture",
        ),
        ("/ws/{room", "without a matching `}`"),
        ("/ws/{}", "empty placeholder"),
        ("ws/{room}", "must start with `/`"),
    ] {
        let p = problem_of("/chat/{room}", downstream);
        assert_eq!(p.reason, ProblemReason::InvalidTemplate, "{downstream}");
        assert_eq!(p.field, "spec.downstreamPathTemplate", "{downstream}");
        assert!(p.message.contains(needle), "{downstream}: {}", p.message);
    }
}

/// A bad host pattern (in a route not built by `route_from_spec`, which refuses it first)
/// is an `InvalidHost` problem on `spec.upstreamHost` with the parser's message; the route
/// is left out.
#[test]
fn bad_host_pattern_is_an_invalid_host_problem() {
    for host in [
        "*",
        "a.*.com",
        "*.",
        "*..com",
        "a..b",
        "chat.example.com:0",
        "chat.example.com:70000",
        "bücher.de",
    ] {
        let (t, problems) = build(&[route("r", 0, "/a", "/a").with_host(host)]);
        assert!(t.routes().is_empty(), "{host}");
        assert_eq!(
            problems,
            vec![RouteProblem {
                route: RouteId("r".into()),
                reason: ProblemReason::InvalidHost,
                field: "spec.upstreamHost".into(),
                message: crate::model::HostPattern::parse(host)
                    .unwrap_err()
                    .to_string(),
            }],
            "{host}"
        );
    }
}

/// Validation and the table use one host parser: whatever `route_from_spec` accepts as
/// `upstreamHost` compiles, whatever it refuses the table refuses too.
#[test]
fn validation_and_compile_agree_on_host_patterns() {
    use crate::api::WsRouteSpec;
    use crate::model::{route_from_spec, SpecBackends};
    for host in [
        "chat.example.com",
        "*.example.com",
        "*..com",
        "*.",
        "a..b",
        "A.B:8080",
        "x:0",
        "xn--bcher-kva.de",
        "bücher.de",
        "-a.b",
        "[::1]:80",
    ] {
        let spec = WsRouteSpec {
            upstream_host: Some(host.into()),
            ..crate::model::tests::spec()
        };
        let validated = route_from_spec(RouteId("r".into()), 0, &spec, SpecBackends::Static);
        let (_, compiled) = build(&[route("r", 0, "/a", "/a").with_host(host)]);
        assert_eq!(
            validated.is_ok(),
            compiled.is_empty(),
            "{host}: {compiled:?}"
        );
    }
}

/// Invalid routes are left out and reported; the valid ones still form the table.
#[test]
fn invalid_routes_are_left_out_and_the_rest_still_serve() {
    let (t, problems) = build(&[
        route("good", 0, "/a/{x}", "/b/{x}"),
        route("bad", 1, "/c/{x", "/d"),
    ]);
    assert_eq!(t.generation(), 7);
    assert_eq!(t.routes().len(), 1);
    assert_eq!(hit(&t, None, "/a/1").as_deref(), Some("good"));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].route, RouteId("bad".into()));
    assert!(problems[0]
        .to_string()
        .starts_with("bad: spec.upstreamPathTemplate: InvalidTemplate: `/c/{x`"));
}

// ---- matching ----

/// Whole-segment placeholders capture one non-empty segment each, raw (no decoding).
#[test]
fn placeholders_capture_one_raw_segment_each() {
    let t = table(&[route(
        "r",
        0,
        "/api/{version}/{room}/join",
        "/ws/{room}/{version}",
    )]);
    let (path, query) = ("/api/v2/a%20b/join", Some("x=1"));
    let m = t.find(None, path, query, &Method::GET).expect("match");
    assert_eq!(m.capture("version"), Some("v2"));
    assert_eq!(m.capture("room"), Some("a%20b"));
    assert_eq!(m.capture("nope"), None);
    assert_eq!(m.downstream_path_and_query(), "/ws/a%20b/v2?x=1");
    let all: Vec<_> = m.captures().collect();
    assert_eq!(all, vec![("version", "v2"), ("room", "a%20b")]);
    assert_eq!(hit(&t, None, "/api//a/join"), None);
    assert_eq!(hit(&t, None, "/api/v2/a/b/join"), None);
}

/// A final `{name}` swallows the rest of the path including slashes, and may be empty.
#[test]
fn final_placeholder_is_a_catch_all_that_may_be_empty() {
    let t = table(&[route("r", 0, "/gateway/{rest}", "/up/{rest}")]);
    assert_eq!(
        downstream(&t, "/gateway/a/b/c").as_deref(),
        Some("/up/a/b/c")
    );
    assert_eq!(downstream(&t, "/gateway/a/").as_deref(), Some("/up/a/"));
    // Ocelot's empty placeholders: `/invoices` and `/invoices/` both match `/invoices/{url}`.
    assert_eq!(downstream(&t, "/gateway/").as_deref(), Some("/up/"));
    assert_eq!(downstream(&t, "/gateway").as_deref(), Some("/up"));
    assert_eq!(hit(&t, None, "/gatewayx"), None);
    assert_eq!(hit(&t, None, "/other/a"), None);
}

/// `/{everything}` matches every path, `/` included.
#[test]
fn root_catch_all_matches_every_path() {
    let t = table(&[route("all", 0, "/{everything}", "/api/{everything}")]);
    assert_eq!(downstream(&t, "/").as_deref(), Some("/api/"));
    assert_eq!(downstream(&t, "/a/b?c=d").as_deref(), Some("/api/a/b?c=d"));
}

/// Placeholders embedded in a segment capture the text between its literals.
#[test]
fn embedded_placeholders_capture_within_a_segment() {
    let t = table(&[
        route("v", 0, "/api/v{version}/rooms", "/{version}"),
        route("pair", 1, "/pair/{a}-{b}/x", "/{a}/{b}"),
        route("file", 2, "/files/{name}.json", "/{name}"),
    ]);
    assert_eq!(downstream(&t, "/api/v2/rooms").as_deref(), Some("/2"));
    assert_eq!(downstream(&t, "/API/V10/Rooms").as_deref(), Some("/10"));
    assert_eq!(hit(&t, None, "/api/v/rooms"), None);
    assert_eq!(hit(&t, None, "/api/x2/rooms"), None);
    assert_eq!(downstream(&t, "/pair/x-y-z/x").as_deref(), Some("/x/y-z"));
    assert_eq!(hit(&t, None, "/pair/-y/x"), None);
    assert_eq!(hit(&t, None, "/pair/xy/x"), None);
    assert_eq!(downstream(&t, "/files/a.b.json").as_deref(), Some("/a.b"));
    assert_eq!(hit(&t, None, "/files/.json"), None);
}

/// Trailing slash (Ocelot): a template ending in `/` matches with or without it; any other
/// template does not match an extra trailing slash; `/` matches only `/`.
#[test]
fn trailing_slash_follows_ocelot() {
    let t = table(&[
        route("plain", 0, "/api/rooms", "/rooms"),
        route("slash", 1, "/api/users/", "/users/"),
        route("root", 2, "/", "/"),
        route("ph", 3, "/p/{id}/", "/p/{id}/"),
    ]);
    assert_eq!(hit(&t, None, "/api/rooms").as_deref(), Some("plain"));
    assert_eq!(hit(&t, None, "/api/rooms/"), None);
    assert_eq!(hit(&t, None, "/api/users/").as_deref(), Some("slash"));
    assert_eq!(hit(&t, None, "/api/users").as_deref(), Some("slash"));
    // The downstream trailing slash follows the request's.
    assert_eq!(downstream(&t, "/api/users").as_deref(), Some("/users"));
    assert_eq!(downstream(&t, "/api/users/").as_deref(), Some("/users/"));
    assert_eq!(hit(&t, None, "/").as_deref(), Some("root"));
    assert_eq!(hit(&t, None, "/x"), None);
    assert_eq!(downstream(&t, "/p/7").as_deref(), Some("/p/7"));
    assert_eq!(downstream(&t, "/p/7/").as_deref(), Some("/p/7/"));
    assert_eq!(hit(&t, None, "/p/7/8"), None);
}

/// Literals compare ASCII-case-insensitively unless the route is case-sensitive; captured
/// values keep the request's case either way.
#[test]
fn case_sensitivity_applies_to_literals_only() {
    let t = table(&[
        route("ci", 0, "/Chat/{room}", "/{room}"),
        route("cs", 1, "/Strict/{room}", "/{room}").case_sensitive(),
    ]);
    assert_eq!(downstream(&t, "/cHAT/MyRoom").as_deref(), Some("/MyRoom"));
    assert_eq!(downstream(&t, "/Strict/MyRoom").as_deref(), Some("/MyRoom"));
    assert_eq!(hit(&t, None, "/strict/MyRoom"), None);
}

/// No methods means every method; otherwise the method must be listed, and a route for
/// another method is skipped in favour of one that fits.
#[test]
fn methods_restrict_routes() {
    let t = table(&[
        route("any", 0, "/any", "/"),
        route("get", 1, "/hub/{rest}", "/").with_methods(&[Method::GET]),
        route("post", 2, "/hub/negotiate", "/").with_methods(&[Method::POST]),
    ]);
    assert_eq!(
        hit_method(&t, None, "/any", &Method::DELETE).as_deref(),
        Some("any")
    );
    assert_eq!(
        hit_method(&t, None, "/hub/negotiate", &Method::POST).as_deref(),
        Some("post")
    );
    assert_eq!(
        hit_method(&t, None, "/hub/negotiate", &Method::GET).as_deref(),
        Some("get")
    );
    assert_eq!(hit_method(&t, None, "/hub/x", &Method::PUT), None);
}

// ---- query placeholders ----

/// `?room={room}` requires the parameter (anywhere in the query) and captures its raw value.
#[test]
fn query_placeholder_requires_and_captures_the_parameter() {
    let t = table(&[route("r", 0, "/chat?room={room}", "/ws/{room}")]);
    let m = t
        .find(None, "/chat", Some("a=1&room=a%2Fb&room=2"), &Method::GET)
        .expect("match");
    assert_eq!(m.capture("room"), Some("a%2Fb"));
    // Same name as the parameter: Ocelot drops the consumed `room=…` (issue 952).
    assert_eq!(m.downstream_path_and_query(), "/ws/a%2Fb?a=1&room=2");
    assert_eq!(hit(&t, None, "/chat"), None);
    assert_eq!(hit(&t, None, "/chat?rooms=1"), None);
    // An empty value leaves `/ws/`, trimmed because the request path has no trailing slash.
    assert_eq!(downstream(&t, "/chat?room=").as_deref(), Some("/ws"));
}

/// A placeholder named differently from its parameter leaves the parameter in the query
/// (Ocelot issue 473).
#[test]
fn differently_named_query_placeholder_keeps_the_parameter() {
    let t = table(&[route("r", 0, "/chat?room={r}", "/ws/{r}")]);
    assert_eq!(
        downstream(&t, "/chat?room=42&x=1").as_deref(),
        Some("/ws/42?room=42&x=1")
    );
}

/// `key=value` in the upstream query requires that exact value.
#[test]
fn query_literal_requires_the_value() {
    let t = table(&[route("r", 0, "/chat?v=2", "/ws")]);
    assert_eq!(hit(&t, None, "/chat?v=1&v=2").as_deref(), Some("r"));
    assert_eq!(hit(&t, None, "/chat?v=1"), None);
}

/// Path placeholders can feed the downstream query; the template's parameters come first,
/// then the request's others.
#[test]
fn downstream_query_template_merges_with_request_query() {
    let t = table(&[route(
        "r",
        0,
        "/api/units/{subscription}/{unit}/updates",
        "/api/subscriptions/{subscription}/updates?unitId={unit}",
    )]);
    assert_eq!(
        downstream(&t, "/api/units/s1/u2/updates?x=1&unitId=9&x=2").as_deref(),
        Some("/api/subscriptions/s1/updates?unitId=u2&x=1&x=2")
    );
    assert_eq!(
        downstream(&t, "/api/units/s1/u2/updates").as_deref(),
        Some("/api/subscriptions/s1/updates?unitId=u2")
    );
}

/// `?{everything}` captures the whole query, which may be empty (Ocelot's catch-all query).
#[test]
fn whole_query_placeholder_passes_the_query_through() {
    let t = table(&[route(
        "r",
        0,
        "/contracts?{everything}",
        "/apipath/contracts?{everything}",
    )]);
    assert_eq!(
        downstream(&t, "/contracts?$filter=a&$top=2").as_deref(),
        Some("/apipath/contracts?$filter=a&$top=2")
    );
    assert_eq!(
        downstream(&t, "/contracts").as_deref(),
        Some("/apipath/contracts")
    );
    assert_eq!(
        downstream(&t, "/contracts?").as_deref(),
        Some("/apipath/contracts")
    );
}

/// Without query placeholders, the request's query goes on byte for byte.
#[test]
fn query_passes_through_unchanged() {
    let t = table(&[route("r", 0, "/hub", "/signalr")]);
    assert_eq!(
        downstream(&t, "/hub?id=a%3D&&x").as_deref(),
        Some("/signalr?id=a%3D&&x")
    );
}

// ---- hosts ----

/// A host without port matches that host on any port; with a port, only that port; case
/// and a trailing dot do not matter.
#[test]
fn exact_hosts_match_any_port_unless_the_route_names_one() {
    let t = table(&[
        route("any-port", 0, "/a", "/").with_host("chat.example.com"),
        route("port", 1, "/b", "/").with_host("chat.example.com:8443"),
    ]);
    for host in [
        "chat.example.com",
        "Chat.Example.COM:8080",
        "chat.example.com.",
    ] {
        assert_eq!(
            hit(&t, Some(host), "/a").as_deref(),
            Some("any-port"),
            "{host}"
        );
    }
    assert_eq!(
        hit(&t, Some("chat.example.com:8443"), "/b").as_deref(),
        Some("port")
    );
    assert_eq!(
        hit(&t, Some("CHAT.example.com:8443"), "/b").as_deref(),
        Some("port")
    );
    assert_eq!(hit(&t, Some("chat.example.com:8080"), "/b"), None);
    assert_eq!(hit(&t, Some("chat.example.com"), "/b"), None);
    assert_eq!(hit(&t, Some("other.example.com"), "/a"), None);
}

/// `*.example.com` needs at least one label before `.example.com`.
#[test]
fn wildcard_hosts_need_at_least_one_label() {
    let t = table(&[route("w", 0, "/a", "/").with_host("*.example.com")]);
    assert_eq!(hit(&t, Some("a.example.com"), "/a").as_deref(), Some("w"));
    assert_eq!(
        hit(&t, Some("a.b.EXAMPLE.com:80"), "/a").as_deref(),
        Some("w")
    );
    assert_eq!(hit(&t, Some("example.com"), "/a"), None);
    assert_eq!(hit(&t, Some(".example.com"), "/a"), None);
    assert_eq!(hit(&t, Some("aexample.com"), "/a"), None);
}

/// Routes without host match any host; a request without `Host` matches only those.
#[test]
fn absent_host_matches_only_host_less_routes() {
    let t = table(&[
        route("hosted", 0, "/a", "/").with_host("chat.example.com"),
        route("free", 1, "/b", "/"),
    ]);
    assert_eq!(hit(&t, None, "/a"), None);
    assert_eq!(hit(&t, None, "/b").as_deref(), Some("free"));
    assert_eq!(hit(&t, Some("x.test"), "/b").as_deref(), Some("free"));
    assert_eq!(hit(&t, Some(""), "/b").as_deref(), Some("free"));
    assert_eq!(hit(&t, Some("[::1]:8080"), "/b").as_deref(), Some("free"));
}

/// IPv6 literal hosts keep their brackets and split off their port.
#[test]
fn ipv6_host_literals_match() {
    let t = table(&[route("v6", 0, "/a", "/").with_host("[::1]:8080")]);
    assert_eq!(hit(&t, Some("[::1]:8080"), "/a").as_deref(), Some("v6"));
    assert_eq!(hit(&t, Some("[::1]"), "/a"), None);
}

// ---- precedence ----

/// Host precision: exact with port > exact > longer wildcard > shorter wildcard > any host.
#[test]
fn host_precision_decides_first() {
    let all = [
        route("port", 0, "/x", "/").with_host("a.b.example.com:8080"),
        route("exact", 1, "/x", "/").with_host("a.b.example.com"),
        route("long-wild-port", 2, "/x", "/").with_host("*.b.example.com:8080"),
        route("long-wild", 3, "/x", "/").with_host("*.b.example.com"),
        route("short-wild", 4, "/x", "/").with_host("*.example.com"),
        route("any", 5, "/x", "/"),
    ];
    let host = Some("A.b.example.com:8080");
    for i in 0..all.len() {
        let t = table(&all[i..]);
        assert_eq!(hit(&t, host, "/x").as_deref(), Some(all[i].id.0.as_str()));
    }
}

/// A more precise host wins even when another route's path is more specific.
#[test]
fn host_precision_beats_path_specificity() {
    let t = table(&[
        route("hosted", 0, "/{everything}", "/").with_host("chat.example.com"),
        route("specific", 1, "/api/rooms", "/"),
    ]);
    assert_eq!(
        hit(&t, Some("chat.example.com"), "/api/rooms").as_deref(),
        Some("hosted")
    );
    assert_eq!(
        hit(&t, Some("other.example.com"), "/api/rooms").as_deref(),
        Some("specific")
    );
}

/// Segment by segment: literal > placeholder > catch-all, whatever the declaration order.
#[test]
fn literal_beats_placeholder_beats_catch_all() {
    let t = table(&[
        route("catch", 0, "/a/{rest}", "/"),
        route("ph", 1, "/a/{x}/c", "/"),
        route("lit", 2, "/a/b/c", "/"),
        route("embedded", 3, "/a/v{x}/c", "/"),
    ]);
    assert_eq!(hit(&t, None, "/a/b/c").as_deref(), Some("lit"));
    assert_eq!(hit(&t, None, "/a/z/c").as_deref(), Some("ph"));
    assert_eq!(hit(&t, None, "/a/z/d").as_deref(), Some("catch"));
}

/// A catch-all ranks below the end of a template: `/goods` beats `/goods/{rest}` for
/// `/goods`, and `/` beats `/{everything}` for `/` (Ocelot: catch-all has lowest priority).
#[test]
fn template_end_beats_catch_all() {
    let t = table(&[
        route("goods-all", 0, "/goods/{rest}", "/"),
        route("goods", 1, "/goods", "/"),
        route("all", 2, "/{everything}", "/"),
        route("root", 3, "/", "/"),
    ]);
    assert_eq!(hit(&t, None, "/goods").as_deref(), Some("goods"));
    assert_eq!(hit(&t, None, "/goods/").as_deref(), Some("goods-all"));
    assert_eq!(hit(&t, None, "/").as_deref(), Some("root"));
    assert_eq!(hit(&t, None, "/x").as_deref(), Some("all"));
}

/// More segments before fewer when neither side is a catch-all (checked on the ranks,
/// since such templates never match the same path).
#[test]
fn more_segments_rank_above_fewer() {
    let rank = |t: &str| template::UpstreamTemplate::parse(t, false).unwrap().rank;
    assert!(rank("/a/{x}/c") > rank("/a/{x}"));
    assert!(rank("/a/{x}/c") > rank("/a/{x}/"));
    assert!(rank("/a/b/{x}/d") > rank("/a/b/{x}/"));
    assert!(rank("/a") > rank("/a/{rest}"));
}

/// A template with query conditions beats the same template without.
#[test]
fn query_conditions_beat_none() {
    let t = table(&[
        route("plain", 0, "/chat", "/"),
        route("room", 1, "/chat?room={room}", "/"),
    ]);
    assert_eq!(hit(&t, None, "/chat?room=1").as_deref(), Some("room"));
    assert_eq!(hit(&t, None, "/chat?x=1").as_deref(), Some("plain"));
}

/// Between equally specific templates the higher priority wins, whatever the order.
#[test]
fn higher_priority_wins_among_equal_templates() {
    for (pv, pp, winner) in [(2, 1, "embedded"), (1, 2, "placeholder")] {
        let t = table(&[
            route("placeholder", 0, "/a/{y}/c", "/").with_priority(pp),
            route("embedded", 1, "/a/v{x}/c", "/").with_priority(pv),
        ]);
        assert_eq!(hit(&t, None, "/a/v1/c").as_deref(), Some(winner));
    }
}

/// At equal specificity and priority, the lower `order` wins, whatever the slice order.
#[test]
fn lower_order_wins_last() {
    let first = route("first", 3, "/a/{y}/c", "/");
    let second = route("second", 4, "/a/v{x}/c", "/");
    for routes in [[first.clone(), second.clone()], [second, first]] {
        let t = table(&routes);
        assert_eq!(hit(&t, None, "/a/v1/c").as_deref(), Some("first"));
        let ids: Vec<_> = t.routes().iter().map(|r| r.route.id.0.as_str()).collect();
        assert_eq!(ids, ["first", "second"]);
    }
}

// ---- conflicts ----

/// Same host, same template up to names and case, overlapping methods: the later route is
/// Conflicted on the upstream template, naming the winner.
#[test]
fn conflicting_routes_keep_the_first_declared() {
    let (t, problems) = build(&[
        route("late", 5, "/Chat/{b}", "/{b}").with_methods(&[Method::GET]),
        route("early", 2, "/chat/{a}", "/{a}"),
    ]);
    assert_eq!(t.routes().len(), 1);
    assert_eq!(hit(&t, None, "/chat/1").as_deref(), Some("early"));
    assert_eq!(problems.len(), 1);
    let p = &problems[0];
    assert_eq!(p.route, RouteId("late".into()));
    assert_eq!(p.reason, ProblemReason::Conflicted);
    assert_eq!(p.field, "spec.upstreamPathTemplate");
    assert!(p.message.contains("`early`"), "{}", p.message);
}

/// Disjoint methods, different hosts, or case differences between two case-sensitive
/// routes are not conflicts.
#[test]
fn distinguishable_routes_do_not_conflict() {
    let (t, problems) = build(&[
        route("get", 0, "/hub/{x}", "/").with_methods(&[Method::GET]),
        route("post", 1, "/hub/{y}", "/").with_methods(&[Method::POST]),
        route("hosted", 2, "/hub/{x}", "/").with_host("a.example.com"),
        route("cs-lower", 3, "/cs", "/").case_sensitive(),
        route("cs-upper", 4, "/CS", "/").case_sensitive(),
    ]);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(t.routes().len(), 5);
    assert_eq!(
        hit_method(&t, None, "/hub/1", &Method::POST).as_deref(),
        Some("post")
    );
    assert_eq!(hit(&t, None, "/CS").as_deref(), Some("cs-upper"));
}

/// One case-insensitive side is enough for a case-only difference to conflict.
#[test]
fn case_only_difference_conflicts_unless_both_case_sensitive() {
    let (_, problems) = build(&[
        route("a", 0, "/cs", "/").case_sensitive(),
        route("b", 1, "/CS", "/"),
    ]);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].route, RouteId("b".into()));
}

// ---- compile and publication ----

/// compile builds each route's balancer and metric handles.
#[test]
fn compile_resolves_balancer_and_metrics() {
    let metrics = Metrics::new();
    let balance = crate::balance::BalanceState::default();
    let mut r = route("ns/chat", 0, "/a", "/");
    r.endpoints.push(Endpoint::new("10.0.0.2", 8080));
    let (t, _) = compile(
        1,
        &[r],
        &CompileContext {
            metrics: &metrics,
            balance: &balance,
            backend_roots: &BackendRoots::none(),
        },
    );
    let c = &t.routes()[0];
    assert_eq!(c.balancer.ready().len(), 2);
    c.metrics.connections_total().inc();
    assert!(metrics.encode().contains("route=\"ns/chat\""));
    assert_eq!(c.placeholders(), &[] as &[String]);
}

/// The empty table has generation 0 and matches nothing.
#[test]
fn empty_table_matches_nothing() {
    let t = RouteTable::empty();
    assert_eq!(t.generation(), 0);
    assert!(t.routes().is_empty());
    assert!(t.find(Some("a"), "/", None, &Method::GET).is_none());
}

/// 10,000 routes compile without problems and each is still found by its own host and
/// path. (How fast is the benchmark's business: `cargo bench --bench control_plane`.)
#[test]
fn ten_thousand_routes_compile_and_match() {
    let routes: Vec<Route> = (0..10_000u64)
        .map(|i| {
            let r = route(&format!("r{i}"), i, &format!("/svc{i}/{{rest}}"), "/{rest}");
            match i % 3 {
                0 => r,
                1 => r.with_host(&format!("h{}.example.com", i % 100)),
                _ => r.with_host(&format!("*.w{}.example.com", i % 50)),
            }
        })
        .collect();
    let (t, problems) = build(&routes);
    assert!(problems.is_empty());
    assert_eq!(t.routes().len(), 10_000);
    assert_eq!(hit(&t, None, "/svc9999/a").as_deref(), Some("r9999"));
    assert_eq!(
        hit(&t, Some("h1.example.com"), "/svc1/a").as_deref(),
        Some("r1")
    );
    assert_eq!(
        hit(&t, Some("x.w2.example.com"), "/svc2/a/b").as_deref(),
        Some("r2")
    );
    assert_eq!(
        hit(&t, Some("x.w2.example.com"), "/svc3/a").as_deref(),
        Some("r3")
    );
    assert_eq!(hit(&t, None, "/svc10000/a"), None);
}

/// publish numbers generations, swaps the table, updates metrics and notifies subscribers;
/// an `Arc` taken before keeps its table.
#[test]
fn publish_swaps_tables_and_reports() {
    let metrics = Arc::new(Metrics::new());
    let publisher = Publisher::new(metrics.clone());
    let mut rx = publisher.subscribe();
    let before = publisher.current();
    assert_eq!(before.generation(), 0);

    let published = publisher.publish(&[route("a", 0, "/a", "/"), route("b", 1, "/b/{", "/")]);
    assert_eq!(published.generation, 1);
    assert_eq!(published.problems.len(), 1);
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 1);
    assert_eq!(before.generation(), 0);
    assert!(before.routes().is_empty());
    let now = publisher.current();
    assert_eq!(now.generation(), 1);
    assert_eq!(hit(&now, None, "/a").as_deref(), Some("a"));

    assert_eq!(publisher.publish(&[]).generation, 2);
    assert_eq!(*rx.borrow_and_update(), 2);
    let text = metrics.encode();
    assert!(text.contains("wsgate_route_table_generation 2"), "{text}");
    assert!(
        text.contains("wsgate_route_table_reloads_ok_total 2"),
        "{text}"
    );
    assert!(text.contains("wsgate_route_problems 0"), "{text}");
    // Generation 1 is still held (`now`): two generations alive until it is dropped.
    assert!(text.contains("wsgate_route_tables_alive 2"), "{text}");
    drop(now);
    assert!(
        metrics.encode().contains("wsgate_route_tables_alive 1"),
        "the old generation is freed with its last holder"
    );
}

/// `prepare` compiles once and serves nothing; `swap` serves that very table (its
/// balancers, not a recompile's) with the problems `prepare` found, numbered at the swap;
/// a dropped `Prepared` changes nothing.
#[test]
fn prepare_then_swap_serves_the_prepared_table_and_its_problems() {
    let metrics = Arc::new(Metrics::new());
    let publisher = Publisher::new(metrics.clone());
    let routes = [route("a", 0, "/a", "/"), route("b", 1, "/b/{", "/")];

    let compiles = compiles_on_this_thread();
    let discarded = publisher.prepare(&routes);
    let prepared = publisher.prepare(&routes);
    assert_eq!(compiles_on_this_thread() - compiles, 2);
    drop(discarded);
    assert_eq!(publisher.current().generation(), 0);
    let problems = prepared.problems().to_vec();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, ProblemReason::InvalidTemplate);
    let balancer = Arc::clone(&prepared.table.routes()[0].balancer);

    let compiles = compiles_on_this_thread();
    let published = publisher.swap(prepared);
    assert_eq!(compiles_on_this_thread(), compiles, "swap compiles nothing");
    assert_eq!(published.generation, 1);
    assert_eq!(published.problems, problems);
    let now = publisher.current();
    assert_eq!(now.generation(), 1);
    assert!(Arc::ptr_eq(&now.routes()[0].balancer, &balancer));
    assert!(metrics.encode().contains("wsgate_route_problems 1"));

    let compiles = compiles_on_this_thread();
    let published = publisher.publish(&routes);
    assert_eq!(
        compiles_on_this_thread() - compiles,
        1,
        "publish compiles once"
    );
    assert_eq!(published.generation, 2);
    assert_eq!(published.problems, problems);
}

/// Compiles `routes` against `previous` with the same metrics and balance state, as a
/// `Publisher` does.
pub(super) struct Generations {
    metrics: Metrics,
    balance: crate::balance::BalanceState,
}

impl Generations {
    pub(super) fn new() -> Self {
        Generations {
            metrics: Metrics::new(),
            balance: crate::balance::BalanceState::default(),
        }
    }

    pub(super) fn compile(
        &self,
        routes: &[Route],
        previous: &RouteTable,
    ) -> (RouteTable, Vec<RouteProblem>) {
        let ctx = CompileContext {
            metrics: &self.metrics,
            balance: &self.balance,
            backend_roots: &BackendRoots::none(),
        };
        compile_from(previous.generation() + 1, routes, &ctx, previous)
    }
}

fn compiled<'t>(table: &'t RouteTable, id: &str) -> &'t CompiledRoute {
    table
        .routes()
        .iter()
        .find(|r| r.route.id.0 == id)
        .unwrap_or_else(|| panic!("{id} not in the table"))
}

/// A route equal to the previous generation's keeps its compiled route (route, balancer,
/// templates), so a round-robin turn carries on; a route whose endpoints changed gets a
/// new balancer over the new endpoints.
#[test]
fn compile_from_shares_unchanged_routes_and_rebuilds_changed_ones() {
    let g = Generations::new();
    let rr = |mut r: Route| {
        r.load_balancer = LoadBalancer::RoundRobin;
        r.endpoints = vec![Endpoint::new("10.0.0.1", 80), Endpoint::new("10.0.0.2", 80)];
        r
    };
    let first = vec![
        rr(route("a", 0, "/a/{x}", "/{x}")),
        rr(route("b", 1, "/b", "/")),
    ];
    let (one, problems) = g.compile(&first, &RouteTable::empty());
    assert!(problems.is_empty(), "{problems:?}");
    let headers = http::HeaderMap::new();
    let ctx = crate::balance::PickContext {
        headers: &headers,
        query: None,
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        now_ms: 0,
        secure: false,
    };
    let first_pick = |t: &RouteTable, id: &str| {
        compiled(t, id)
            .balancer
            .pick(&ctx)
            .next()
            .map(|b| b.endpoint.clone())
    };
    let a_turn_one = first_pick(&one, "a");

    let mut second = first.clone();
    second[1].endpoints.push(Endpoint::new("10.0.0.3", 80));
    let (two, problems) = g.compile(&second, &one);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(two.generation(), 2);
    let (a1, a2) = (compiled(&one, "a"), compiled(&two, "a"));
    assert!(Arc::ptr_eq(&a1.route, &a2.route));
    assert!(Arc::ptr_eq(&a1.balancer, &a2.balancer));
    assert!(Arc::ptr_eq(&a1.parsed, &a2.parsed));
    assert_ne!(first_pick(&two, "a"), a_turn_one, "round robin carries on");
    let (b1, b2) = (compiled(&one, "b"), compiled(&two, "b"));
    assert!(!Arc::ptr_eq(&b1.balancer, &b2.balancer));
    assert_eq!(b1.balancer.ready().len(), 2);
    assert_eq!(b2.balancer.ready().len(), 3);
    assert_eq!(b2.route.endpoints.len(), 3);
    assert_eq!(hit(&two, None, "/a/1").as_deref(), Some("a"));
    assert_eq!(
        two.find(None, "/a/7", None, &Method::GET)
            .map(|m| m.downstream_path_and_query()),
        Some("/7".to_string())
    );
}

/// A route that only moved in declaration order keeps its balancer and templates but the
/// table shows its new order, and the order decides between equal matches as in a fresh
/// compile.
#[test]
fn compile_from_takes_new_order_of_an_otherwise_unchanged_route() {
    let g = Generations::new();
    let first = vec![
        route("gone", 0, "/x", "/"),
        route("a", 1, "/v{x}/z", "/"),
        route("b", 2, "/{y}/z", "/"),
    ];
    let (one, _) = g.compile(&first, &RouteTable::empty());
    assert_eq!(hit(&one, None, "/v1/z").as_deref(), Some("a"));
    let second = vec![route("b", 0, "/{y}/z", "/"), route("a", 1, "/v{x}/z", "/")];
    let (two, problems) = g.compile(&second, &one);
    assert!(problems.is_empty(), "{problems:?}");
    let (a1, a2) = (compiled(&one, "a"), compiled(&two, "a"));
    assert_eq!(a2.route.order, 1);
    assert!(Arc::ptr_eq(&a1.route, &a2.route));
    let (b1, b2) = (compiled(&one, "b"), compiled(&two, "b"));
    assert_eq!(b2.route.order, 0);
    assert!(!Arc::ptr_eq(&b1.route, &b2.route));
    assert!(Arc::ptr_eq(&b1.balancer, &b2.balancer));
    assert!(Arc::ptr_eq(&b1.parsed, &b2.parsed));
    assert_eq!(hit(&two, None, "/v1/z").as_deref(), Some("b"));
    assert_eq!(hit(&two, None, "/x/z").as_deref(), Some("b"));
}

/// A route edited into an invalid template is reported and left out even though an
/// earlier generation compiled it; editing it back compiles it again.
#[test]
fn compile_from_reports_a_route_edited_into_an_invalid_template() {
    let g = Generations::new();
    let (one, _) = g.compile(&[route("a", 0, "/a", "/")], &RouteTable::empty());
    let (two, problems) = g.compile(&[route("a", 0, "/a/{", "/")], &one);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, ProblemReason::InvalidTemplate);
    assert!(two.routes().is_empty());
    let (three, problems) = g.compile(&[route("a", 0, "/a", "/")], &two);
    assert!(problems.is_empty());
    assert_eq!(hit(&three, None, "/a").as_deref(), Some("a"));
}

/// A reload hands each route's admission state (its connection counts and clients' request
/// windows) to the next generation by id, even when the route's options changed, so a
/// reload resets no limit; a route that left the table takes its state along.
#[test]
fn compile_from_carries_admission_state_by_route_id() {
    let g = Generations::new();
    let first = vec![route("a", 0, "/a", "/"), route("b", 1, "/b", "/")];
    let (one, _) = g.compile(&first, &RouteTable::empty());
    let slot = compiled(&one, "a")
        .admission
        .try_connect(std::net::Ipv4Addr::LOCALHOST.into(), None, None)
        .unwrap();
    let mut second = vec![first[0].clone()];
    second[0].limits.max_connections = Some(1);
    let (two, problems) = g.compile(&second, &one);
    assert!(problems.is_empty(), "{problems:?}");
    let a2 = compiled(&two, "a");
    assert!(Arc::ptr_eq(&compiled(&one, "a").admission, &a2.admission));
    assert_eq!(a2.admission.connections(), 1);
    drop(slot);
    assert_eq!(a2.admission.connections(), 0);
    // `b` left and came back: a state of its own again.
    let (three, _) = g.compile(&first, &two);
    assert!(!Arc::ptr_eq(
        &compiled(&one, "b").admission,
        &compiled(&three, "b").admission
    ));
}
