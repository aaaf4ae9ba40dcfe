use super::*;
use crate::model::{LoadBalancer, Scheme};

/// Builds an ocelot.json with the given route objects.
fn ocelot(routes: &[&str]) -> String {
    format!("{{\n  \"Routes\": [\n{}\n  ]\n}}\n", routes.join(",\n"))
}

const WS: &str = r#"    {
      "UpstreamPathTemplate": "/chat",
      "DownstreamPathTemplate": "/ws",
      "DownstreamScheme": "ws",
      "DownstreamHostAndPorts": [ { "Host": "localhost", "Port": 5001 } ]
    }"#;

/// The routes of Ocelot's WebSockets documentation load as they mean in Ocelot.
#[test]
fn websockets_doc_example_maps_to_routes() {
    let loaded = load(&[fixture("ocelot.json")]).unwrap();
    assert_eq!(loaded.problems, vec![]);
    assert_eq!(
        ids(&loaded),
        ["ocelot.json#Routes[0]", "ocelot.json#Routes[1]"]
    );
    let r = &loaded.routes[1];
    assert_eq!(r.upstream_path_template, "/gateway/{catchAll}");
    assert_eq!(r.downstream_path_template, "/{catchAll}");
    assert_eq!(r.scheme, Scheme::Ws);
    assert_eq!(r.endpoints[0].authority(), "localhost:5001");
    assert_eq!(r.priority, 1);
    assert!(!r.case_sensitive);
    assert!(r.methods.is_empty());
}

/// Keys match case-insensitively and scalars convert like .NET's binder; comments and
/// trailing commas are allowed.
#[test]
fn keys_are_case_insensitive_and_scalars_convert() {
    let route = r#"    {
      // a comment, /* and another */
      "upstreampathtemplate": "/chat/{room}",
      "DOWNSTREAMPATHTEMPLATE": "/ws/{room}",
      "DownstreamScheme": "WSS",
      "UpstreamHttpMethod": [ "Get", "Post" ],
      "UpstreamHost": "chat.example.com",
      "Priority": "2",
      "RouteIsCaseSensitive": "True",
      "DangerousAcceptAnyServerCertificateValidator": true,
      "LoadBalancerOptions": { "type": "LeastConnection", "Key": "", "Expiry": 2147483647 },
      "DownstreamHostAndPorts": [ { "host": "10.0.0.7", "port": "5001" }, ],
    }"#;
    let loaded = load_str("ocelot.json", &ocelot(&[route]));
    // The only problem is the warning that comes with the dangerous flag.
    assert_eq!(
        summary(&loaded),
        vec![(
            Severity::Warning,
            None,
            "Routes[0].DangerousAcceptAnyServerCertificateValidator"
        )]
    );
    let r = &loaded.routes[0];
    assert_eq!(r.scheme, Scheme::Wss);
    assert_eq!(r.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(r.upstream_host.as_deref(), Some("chat.example.com"));
    assert_eq!(r.priority, 2);
    assert!(r.case_sensitive);
    assert!(r.insecure_skip_verify);
    assert_eq!(r.load_balancer, LoadBalancer::LeastConnection);
    assert_eq!(r.endpoints[0].addr, Some("10.0.0.7:5001".parse().unwrap()));
}

/// Unsupported Ocelot keys are warnings naming the key; the route is kept. Keys left at
/// their empty defaults are accepted silently.
#[test]
fn unsupported_keys_warn_and_keep_the_route() {
    let route = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        r#""DownstreamScheme": "ws",
      "QoSOptions": { "ExceptionsAllowedBeforeBreaking": 3, "DurationOfBreak": 1000 },
      "RateLimitOptions": { "EnableRateLimiting": false, "Period": "1s", "Limit": 1 },
      "FileCacheOptions": { "TtlSeconds": 0, "Region": "" },
      "AuthenticationOptions": { "AuthenticationProviderKey": "", "AllowedScopes": [] },
      "DelegatingHandlers": [],
      "SwaggerKey": "chat",
      "Colour": "red","#,
    );
    let loaded = load_str("ocelot.json", &ocelot(&[&route]));
    assert_eq!(ids(&loaded), ["ocelot.json#Routes[0]"]);
    assert_eq!(
        summary(&loaded),
        [
            (Severity::Warning, None, "Routes[0].QoSOptions"),
            (Severity::Warning, None, "Routes[0].SwaggerKey"),
            (Severity::Warning, None, "Routes[0].Colour"),
        ]
    );
    let qos = &loaded.problems[0];
    assert_eq!(qos.line, Some(7));
    assert_eq!(
        qos.to_string(),
        "warning: ocelot.json:7: (/chat): Routes[0].QoSOptions: not supported by wsgate and ignored; remove it or see README"
    );
    assert!(!loaded.has_errors());
}

/// Authentication with a provider wsgate was not given (`--jwt-provider`) and header
/// routing cannot be honoured: the route is left out rather than opened.
#[test]
fn security_keys_leave_the_route_out() {
    let auth = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        r#""DownstreamScheme": "ws", "AuthenticationOptions": { "AuthenticationProviderKey": "Bearer" },"#,
    );
    let loaded = load_str("ocelot.json", &ocelot(&[&auth, WS]));
    assert_eq!(ids(&loaded), ["ocelot.json#Routes[1]"]);
    assert_eq!(
        summary(&loaded),
        [(
            Severity::Error,
            None,
            "Routes[0].AuthenticationOptions.AuthenticationProviderKey"
        )]
    );
}

/// A bad value is an error with its Ocelot path and line; neighbours are kept.
#[test]
fn bad_port_names_the_ocelot_key() {
    let bad = WS.replace("\"Port\": 5001", "\"Port\": 70000");
    let loaded = load_str("ocelot.json", &ocelot(&[WS, &bad]));
    assert_eq!(ids(&loaded), ["ocelot.json#Routes[0]"]);
    let [p] = loaded.problems.as_slice() else {
        panic!("{:?}", loaded.problems)
    };
    assert_eq!(p.field, "Routes[1].DownstreamHostAndPorts[0].Port");
    assert_eq!(p.line, Some(13));
    assert_eq!(p.message, "70000 is not a port (1-65535)");
}

/// Non-numeric ports, missing templates and wrong types are errors by key.
#[test]
fn type_errors_and_missing_keys_are_named() {
    let route = r#"    {
      "DownstreamPathTemplate": 5,
      "Priority": "high",
      "DownstreamHostAndPorts": [ { "Host": "h", "Port": "http" } ]
    }"#;
    let loaded = load_str("ocelot.json", &ocelot(&[route]));
    assert!(loaded.routes.is_empty());
    let got: Vec<_> = loaded
        .problems
        .iter()
        .map(|p| (p.field.as_str(), p.line))
        .collect();
    assert_eq!(
        got,
        [
            ("Routes[0].UpstreamPathTemplate", Some(3)),
            ("Routes[0].DownstreamPathTemplate", Some(4)),
            ("Routes[0].Priority", Some(5)),
            ("Routes[0].DownstreamHostAndPorts[0].Port", Some(6)),
        ]
    );
}

/// `http`/`https` read as `ws`/`wss` with a warning; other schemes are errors.
#[test]
fn http_schemes_map_to_ws_and_others_fail() {
    let https = WS.replace("\"ws\"", "\"https\"");
    let grpc = WS.replace("\"ws\"", "\"grpc\"");
    let loaded = load_str("ocelot.json", &ocelot(&[&https, &grpc]));
    assert_eq!(ids(&loaded), ["ocelot.json#Routes[0]"]);
    assert_eq!(loaded.routes[0].scheme, Scheme::Wss);
    assert_eq!(
        summary(&loaded),
        [
            (Severity::Warning, None, "Routes[0].DownstreamScheme"),
            (Severity::Error, None, "Routes[1].DownstreamScheme"),
        ]
    );
}

/// Older files say `ReRoutes`; route ids follow.
#[test]
fn reroutes_are_read() {
    let text = ocelot(&[WS]).replace("\"Routes\"", "\"ReRoutes\"");
    let loaded = load_str("ocelot.json", &text);
    assert_eq!(loaded.problems, vec![]);
    assert_eq!(ids(&loaded), ["ocelot.json#ReRoutes[0]"]);
}

/// ServiceName needs service discovery: an error on the Ocelot key.
#[test]
fn service_name_is_an_error() {
    let route = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        "\"ServiceName\": \"chat\",",
    );
    let loaded = load_str("ocelot.json", &ocelot(&[&route]));
    assert!(loaded.routes.is_empty());
    assert_eq!(
        summary(&loaded),
        [(Severity::Error, None, "Routes[0].ServiceName")]
    );
    assert_eq!(loaded.problems[0].line, Some(6));
}

/// Load balancer types go through the model's check, named by the Ocelot key; the old
/// `LoadBalancer` key still works with a warning.
#[test]
fn load_balancer_options_map() {
    let sticky = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        r#""LoadBalancerOptions": { "Type": "CookieStickySessions", "Key": "ASP.NET_SessionId", "Expiry": 1800000 },"#,
    );
    let legacy = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        r#""LoadBalancer": "RoundRobin","#,
    );
    let bogus = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        r#""LoadBalancerOptions": { "Type": "Random" },"#,
    );
    let loaded = load_str("ocelot.json", &ocelot(&[&sticky, &legacy, &bogus]));
    assert_eq!(
        ids(&loaded),
        ["ocelot.json#Routes[0]", "ocelot.json#Routes[1]"]
    );
    assert_eq!(
        loaded.routes[0].load_balancer,
        LoadBalancer::CookieStickySessions {
            key: "ASP.NET_SessionId".into(),
            expiry: std::time::Duration::from_millis(1_800_000),
        }
    );
    assert_eq!(loaded.routes[1].load_balancer, LoadBalancer::RoundRobin);
    assert_eq!(
        summary(&loaded),
        [
            (Severity::Warning, None, "Routes[1].LoadBalancer"),
            (Severity::Error, None, "Routes[2].LoadBalancerOptions.Type"),
        ]
    );
}

/// GlobalConfiguration: BaseUrl is ignored silently, behaviour-changing keys warn, global
/// authentication keeps every route out.
#[test]
fn global_configuration_keys() {
    let text = format!(
        "{{\"Routes\": [{WS}], \"GlobalConfiguration\": {{\"BaseUrl\": \"http://x\", \"DownstreamScheme\": \"wss\", \"RequestIdKey\": \"X-Id\", \"ServiceDiscoveryProvider\": {{\"Host\": null, \"Port\": 0}}}}}}"
    );
    let loaded = load_str("ocelot.json", &text);
    assert_eq!(loaded.routes.len(), 1);
    assert_eq!(
        summary(&loaded),
        [
            (
                Severity::Warning,
                None,
                "GlobalConfiguration.DownstreamScheme"
            ),
            (Severity::Warning, None, "GlobalConfiguration.RequestIdKey"),
        ]
    );

    let text = format!(
        "{{\"Routes\": [{WS}], \"GlobalConfiguration\": {{\"AuthenticationOptions\": {{\"AuthenticationProviderKey\": \"Bearer\"}}}}}}"
    );
    let loaded = load_str("ocelot.json", &text);
    assert!(loaded.routes.is_empty());
    assert_eq!(
        summary(&loaded),
        [
            (
                Severity::Error,
                None,
                "GlobalConfiguration.AuthenticationOptions"
            ),
            (Severity::Error, None, "Routes[0]"),
        ]
    );
}

/// A JSON syntax error is reported with its line; nothing from the file is loaded.
#[test]
fn json_syntax_error_has_a_line() {
    let text = ocelot(&[WS]).replace("\"/ws\",", "\"/ws\"");
    let loaded = load_str("ocelot.json", &text);
    assert!(loaded.routes.is_empty());
    let [p] = loaded.problems.as_slice() else {
        panic!("{:?}", loaded.problems)
    };
    assert_eq!((p.severity, p.line), (Severity::Error, Some(6)));
    assert!(
        p.message.starts_with("not valid JSON: expected `,` or `}`"),
        "{}",
        p.message
    );
}

/// A WsRoute written as JSON is not mistaken for ocelot.json.
#[test]
fn json_wsroute_is_read_as_wsroute() {
    let text = r#"{"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute", "metadata": {"name": "a"},
      "spec": {"upstreamPathTemplate": "/a", "downstreamPathTemplate": "/", "downstreamHostAndPorts": [{"host": "h", "port": 1}]}}"#;
    let loaded = load_str("route.json", text);
    assert_eq!(loaded.problems, vec![]);
    assert_eq!(ids(&loaded), ["route.json#1 (a)"]);
}

/// Comments and trailing commas are blanked without moving any byte.
#[test]
fn jsonc_stripping_keeps_offsets() {
    let text = "{\"a\": \"x // not a comment\", // comment é\n \"b\": [1, 2,], /* c\n */ }";
    let clean = super::super::json::strip_comments_and_trailing_commas(text);
    assert_eq!(clean.len(), text.len());
    assert_eq!(clean.lines().count(), text.lines().count());
    let v: serde_json::Value = serde_json::from_str(&clean).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"a": "x // not a comment", "b": [1, 2]})
    );
}

/// A route written from Ocelot's full route template (every key at its default) loads
/// with one warning, for the handler options that are actually set.
#[test]
fn full_ocelot_template_loads_quietly() {
    let route = r#"    {
      "DownstreamPathTemplate": "/",
      "UpstreamPathTemplate": "/",
      "UpstreamHttpMethod": [ "Get" ],
      "DownstreamHttpMethod": "",
      "DownstreamHttpVersion": "",
      "AddHeadersToRequest": {},
      "AddClaimsToRequest": {},
      "RouteClaimsRequirement": {},
      "AddQueriesToRequest": {},
      "RequestIdKey": "",
      "FileCacheOptions": { "TtlSeconds": 0, "Region": "" },
      "RouteIsCaseSensitive": false,
      "ServiceName": "",
      "DownstreamScheme": "ws",
      "DownstreamHostAndPorts": [ { "Host": "localhost", "Port": 51876, } ],
      "QoSOptions": { "ExceptionsAllowedBeforeBreaking": 0, "DurationOfBreak": 0, "TimeoutValue": 0 },
      "LoadBalancer": "",
      "RateLimitOptions": { "ClientWhitelist": [], "EnableRateLimiting": false, "Period": "", "PeriodTimespan": 0, "Limit": 0 },
      "AuthenticationOptions": { "AuthenticationProviderKey": "", "AllowedScopes": [] },
      "HttpHandlerOptions": { "AllowAutoRedirect": true, "UseCookieContainer": true, "UseTracing": true, "MaxConnectionsPerServer": 100 },
      "DangerousAcceptAnyServerCertificateValidator": false
    }"#;
    let loaded = load_str("ocelot.json", &ocelot(&[route]));
    assert_eq!(loaded.routes.len(), 1);
    assert_eq!(
        summary(&loaded),
        [(Severity::Warning, None, "Routes[0].HttpHandlerOptions")]
    );
}

/// A malformed `UpstreamHost` is reported on the Ocelot key with the reason a cluster's
/// status would give (`InvalidHost`); the route is left out.
#[test]
fn malformed_upstream_host_is_invalid_host() {
    let bad = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        r#""DownstreamScheme": "ws", "UpstreamHost": "*..com","#,
    );
    let loaded = load_str("ocelot.json", &ocelot(&[&bad]));
    assert!(loaded.routes.is_empty());
    let [p] = loaded.problems.as_slice() else {
        panic!("{:?}", loaded.problems)
    };
    assert_eq!(p.field, "Routes[0].UpstreamHost");
    assert_eq!(p.reason, Some(crate::model::ProblemReason::InvalidHost));
    assert!(
        p.to_string()
            .ends_with("Routes[0].UpstreamHost: InvalidHost: `*..com` has an empty label (`..`, or a dot at the start)"),
        "{p}"
    );
}

/// `SecurityOptions` (Ocelot's spelling, `IPAllowedList`) and wsgate's `AllowedOrigins`
/// are read into the route; a bad entry is an error naming its Ocelot path and line.
#[test]
fn security_options_and_allowed_origins_are_read() {
    let route = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        r#""DownstreamScheme": "ws",
      "AllowedOrigins": [ "https://app.example.com", "https://*.example.com" ],
      "SecurityOptions": { "IPAllowedList": [ "10.0.0.0/8" ], "IPBlockedList": [ "10.1.0.0/16", "10.1.2.3" ], "ExcludeAllowedFromBlocked": "true" },"#,
    );
    let loaded = load_str("ocelot.json", &ocelot(&[&route]));
    assert_eq!(loaded.problems, vec![]);
    let r = &loaded.routes[0];
    let origins = r.allowed_origins.as_ref().unwrap();
    assert!(origins[1].matches(b"https://a.example.com"));
    let rules = r.ip_rules.as_ref().unwrap();
    assert_eq!((rules.allowed.len(), rules.blocked.len()), (1, 2));
    assert!(rules.exclude_allowed_from_blocked);

    let bad = WS.replace(
        "\"DownstreamScheme\": \"ws\",",
        r#""DownstreamScheme": "ws",
      "AllowedOrigins": [ "https://app.example.com/" ],
      "SecurityOptions": { "IPBlockedList": [ "10.0.0.0/8", "10.0.0.300" ], "Extra": 1 },"#,
    );
    let loaded = load_str("ocelot.json", &ocelot(&[&bad, WS]));
    assert_eq!(ids(&loaded), ["ocelot.json#Routes[1]"]);
    assert_eq!(
        summary(&loaded),
        [
            (Severity::Warning, None, "Routes[0].SecurityOptions.Extra"),
            (Severity::Error, None, "Routes[0].AllowedOrigins[0]"),
            (
                Severity::Error,
                None,
                "Routes[0].SecurityOptions.IPBlockedList[1]"
            ),
        ]
    );
    let lines: Vec<Option<usize>> = loaded.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, [Some(8), Some(7), Some(8)]);
}

/// `SecurityOptions` in `GlobalConfiguration` is not applied to routes, so every route of
/// the file is left out rather than opened.
#[test]
fn global_security_options_leave_every_route_out() {
    let text = format!(
        "{{\"Routes\": [{WS}], \"GlobalConfiguration\": {{\"SecurityOptions\": {{\"IPBlockedList\": [\"10.0.0.1\"]}}}}}}"
    );
    let loaded = load_str("ocelot.json", &text);
    assert!(loaded.routes.is_empty());
    assert!(loaded
        .problems
        .iter()
        .any(|p| p.field == "GlobalConfiguration.SecurityOptions"
            && p.message.contains("Set SecurityOptions on each route")));
}
