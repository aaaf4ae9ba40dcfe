use super::*;
use crate::api::{HostAndPort, LoadBalancerOptions, RouteTimeouts, WsRouteSpec};

/// A valid spec with one static backend (other modules' tests start from it too).
pub(crate) fn spec() -> WsRouteSpec {
    WsRouteSpec {
        upstream_path_template: "/chat/{room}".into(),
        upstream_host: None,
        upstream_http_method: vec![],
        route_is_case_sensitive: None,
        priority: None,
        downstream_path_template: "/ws/{room}".into(),
        downstream_scheme: None,
        service_name: None,
        service_port: None,
        downstream_host_and_ports: vec![HostAndPort {
            host: "127.0.0.1".into(),
            port: 9000,
        }],
        load_balancer_options: None,
        dangerous_accept_any_server_certificate_validator: None,
        timeouts: None,
        tls: None,
        backend_tls: None,
        limits: None,
        rate_limit_options: None,
        authentication_options: None,
        route_claims_requirement: Default::default(),
        add_headers_to_request: Default::default(),
        allowed_origins: None,
        security_options: None,
        drain: None,
        rebalance: None,
        keepalive: None,
    }
}

fn fields(errors: Vec<FieldError>) -> Vec<String> {
    errors.into_iter().map(|e| e.field).collect()
}

/// A minimal static spec gets Ocelot's defaults.
#[test]
fn minimal_spec_gets_ocelot_defaults() {
    let r = route_from_spec(RouteId("r".into()), 0, &spec(), SpecBackends::Static).unwrap();
    assert_eq!(r.priority, 1);
    assert!(!r.case_sensitive);
    assert_eq!(r.scheme, Scheme::Ws);
    assert_eq!(r.load_balancer, LoadBalancer::NoLoadBalancer);
    assert_eq!(r.endpoints[0].addr, Some("127.0.0.1:9000".parse().unwrap()));
    assert_eq!(r.timeouts, Timeouts::default());
}

/// Every bad field is reported at once, each by its path.
#[test]
fn every_bad_field_is_reported_by_path() {
    let mut s = spec();
    s.upstream_path_template = "chat".into();
    s.upstream_http_method = vec!["GE T".into()];
    s.downstream_host_and_ports.push(HostAndPort {
        host: "x".into(),
        port: 70000,
    });
    s.load_balancer_options = Some(LoadBalancerOptions {
        kind: Some("Random".into()),
        ..Default::default()
    });
    s.timeouts = Some(RouteTimeouts {
        connect: Some("5 parsecs".into()),
        ..Default::default()
    });
    let errs = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap_err();
    assert_eq!(
        fields(errs),
        vec![
            "spec.upstreamPathTemplate",
            "spec.upstreamHttpMethod[0]",
            "spec.downstreamHostAndPorts[1].port",
            "spec.loadBalancerOptions.type",
            "spec.timeouts.connect",
        ]
    );
}

/// Standalone mode cannot resolve a Service and says so.
#[test]
fn service_name_in_standalone_mode_is_an_error() {
    let mut s = spec();
    s.service_name = Some("chat".into());
    let errs = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap_err();
    assert_eq!(fields(errs), vec!["spec.serviceName"]);
}

/// Names, wildcards, ports, IP literals and punycode labels are host patterns; the pattern
/// is lower-cased and a trailing dot dropped.
#[test]
fn host_patterns_that_parse() {
    let exact = |name: &str, port| HostPattern::Exact {
        name: name.into(),
        port,
    };
    let wildcard = |suffix: &str, port| HostPattern::Wildcard {
        suffix: suffix.into(),
        port,
    };
    for (text, parsed) in [
        ("chat.example.com", exact("chat.example.com", None)),
        ("Chat.EXAMPLE.com", exact("chat.example.com", None)),
        ("chat.example.com.", exact("chat.example.com", None)),
        (" chat.example.com ", exact("chat.example.com", None)),
        (
            "chat.example.com:8080",
            exact("chat.example.com", Some(8080)),
        ),
        ("localhost:65535", exact("localhost", Some(65535))),
        ("*.example.com", wildcard(".example.com", None)),
        ("*.A.b:443", wildcard(".a.b", Some(443))),
        (
            "xn--bcher-kva.example",
            exact("xn--bcher-kva.example", None),
        ),
        (
            "*.xn--80ak6aa92e.com",
            wildcard(".xn--80ak6aa92e.com", None),
        ),
        ("a-b.c1", exact("a-b.c1", None)),
        ("10.0.0.1:80", exact("10.0.0.1", Some(80))),
        ("[::1]:8080", exact("[::1]", Some(8080))),
        ("[::1]", exact("[::1]", None)),
    ] {
        assert_eq!(HostPattern::parse(text), Ok(parsed), "{text}");
    }
}

/// Each malformed pattern fails with the error that names its mistake.
#[test]
fn host_patterns_that_do_not_parse_say_why() {
    use HostPatternError as E;
    let long_label = format!("{}.com", "a".repeat(64));
    let long_name = format!("{}.com", ["abcdefghij"; 25].join("."));
    /// Whether the error is the expected variant.
    type IsExpected = fn(&E) -> bool;
    let cases: Vec<(&str, IsExpected)> = vec![
        ("", |e| matches!(e, E::Empty { .. })),
        (".", |e| matches!(e, E::Empty { .. })),
        ("*..com", |e| matches!(e, E::EmptyLabel { .. })),
        ("a..b", |e| matches!(e, E::EmptyLabel { .. })),
        (".example.com", |e| matches!(e, E::EmptyLabel { .. })),
        ("example.com..", |e| matches!(e, E::EmptyLabel { .. })),
        ("*.", |e| matches!(e, E::Wildcard { .. })),
        ("*", |e| matches!(e, E::Wildcard { .. })),
        ("**.x", |e| matches!(e, E::Wildcard { .. })),
        ("*x.com", |e| matches!(e, E::Wildcard { .. })),
        ("a.*.com", |e| matches!(e, E::Wildcard { .. })),
        ("chat.example.com:0", |e| matches!(e, E::PortZero { .. })),
        ("chat.example.com:70000", |e| matches!(e, E::Port { .. })),
        ("chat.example.com:", |e| {
            matches!(e, E::Character { character: ':', .. })
        }),
        ("chat.example.com:http", |e| {
            matches!(e, E::Character { character: ':', .. })
        }),
        ("chat example", |e| {
            matches!(e, E::Character { character: ' ', .. })
        }),
        ("chat_room.example", |e| {
            matches!(e, E::Character { character: '_', .. })
        }),
        ("bücher.example", |e| {
            matches!(
                e,
                E::Character {
                    character: 'ü', ..
                }
            )
        }),
        ("-chat.example", |e| matches!(e, E::Hyphen { .. })),
        ("chat-.example", |e| matches!(e, E::Hyphen { .. })),
        (&long_label, |e| matches!(e, E::LabelTooLong { .. })),
        (&long_name, |e| matches!(e, E::TooLong { .. })),
        ("[::g]:80", |e| matches!(e, E::Ipv6 { .. })),
    ];
    for (text, expected) in cases {
        let e = HostPattern::parse(text).expect_err(text);
        assert!(expected(&e), "{text}: {e:?}");
    }
}

/// A port that does not parse keeps the parse error as its source.
#[test]
fn host_pattern_port_error_keeps_its_source() {
    let e = HostPattern::parse("chat.example.com:70000").unwrap_err();
    let source = std::error::Error::source(&e).expect("a source");
    assert_eq!(
        source.to_string(),
        "70000".parse::<u16>().unwrap_err().to_string()
    );
    assert_eq!(
        e.to_string(),
        "`chat.example.com:70000`: `70000` is not a port (1-65535)"
    );
}

/// Validation reports a bad `upstreamHost` as `InvalidHost` on `spec.upstreamHost`, with
/// the parser's message; good patterns pass.
#[test]
fn bad_upstream_host_is_an_invalid_host_field_error() {
    for ok in [
        "chat.example.com",
        "*.example.com",
        "chat.example.com:8080",
        "*.a.b:443",
    ] {
        let mut s = spec();
        s.upstream_host = Some(ok.into());
        let route = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static)
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        assert_eq!(
            route.upstream_host.as_deref(),
            Some(ok.to_ascii_lowercase().as_str())
        );
    }
    for bad in [
        "",
        "*..com",
        "*.",
        "a..b",
        "a.*.com",
        "chat.example.com:0",
        "chat example",
        "**.x",
        "bücher.de",
    ] {
        let mut s = spec();
        s.upstream_host = Some(bad.into());
        let errs = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap_err();
        let expected = FieldError::with_reason(
            "spec.upstreamHost",
            ProblemReason::InvalidHost,
            HostPattern::parse(bad).unwrap_err().to_string(),
        );
        assert_eq!(errs, vec![expected], "{bad}");
    }
}

#[test]
fn durations() {
    assert_eq!(
        parse_duration("250ms").unwrap(),
        std::time::Duration::from_millis(250)
    );
    assert_eq!(
        parse_duration("2m").unwrap(),
        std::time::Duration::from_secs(120)
    );
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("1.5s").is_err());
}

fn with_lb(
    kind: &str,
    key: Option<&str>,
    expiry: Option<i64>,
    hash_on: Option<&str>,
) -> WsRouteSpec {
    let mut s = spec();
    s.load_balancer_options = Some(LoadBalancerOptions {
        kind: Some(kind.into()),
        key: key.map(Into::into),
        expiry,
        hash_on: hash_on.map(Into::into),
        pin_signalr_connections: None,
    });
    s
}

fn lb(s: &WsRouteSpec) -> Result<LoadBalancer, Vec<String>> {
    route_from_spec(RouteId("r".into()), 0, s, SpecBackends::Static)
        .map(|r| r.load_balancer)
        .map_err(fields)
}

/// CookieStickySessions takes Ocelot's key and expiry (ms), with a one-hour default; a
/// missing or malformed cookie name and a negative expiry are errors on their field.
#[test]
fn cookie_sticky_sessions_options() {
    use std::time::Duration;
    assert_eq!(
        lb(&with_lb(
            "CookieStickySessions",
            Some("sid"),
            Some(1500),
            None
        )),
        Ok(LoadBalancer::CookieStickySessions {
            key: "sid".into(),
            expiry: Duration::from_millis(1500)
        })
    );
    assert_eq!(
        lb(&with_lb("CookieStickySessions", Some("sid"), None, None)),
        Ok(LoadBalancer::CookieStickySessions {
            key: "sid".into(),
            expiry: Duration::from_secs(3600)
        })
    );
    for (key, expiry, field) in [
        (None, None, "spec.loadBalancerOptions.key"),
        (Some("bad name;"), None, "spec.loadBalancerOptions.key"),
        (Some("sid"), Some(-5), "spec.loadBalancerOptions.expiry"),
    ] {
        assert_eq!(
            lb(&with_lb("CookieStickySessions", key, expiry, None)),
            Err(vec![field.to_string()]),
            "{key:?} {expiry:?}"
        );
    }
}

/// ConsistentHash needs hashOn (and a name unless clientIp); hashOn with another type is
/// an error, while Ocelot's key/expiry on other types are ignored.
#[test]
fn consistent_hash_options() {
    assert_eq!(
        lb(&with_lb(
            "ConsistentHash",
            Some("X-User"),
            None,
            Some("header")
        )),
        Ok(LoadBalancer::ConsistentHash {
            on: HashOn::Header(http::HeaderName::from_static("x-user"))
        })
    );
    assert_eq!(
        lb(&with_lb("ConsistentHash", None, None, Some("clientIp"))),
        Ok(LoadBalancer::ConsistentHash {
            on: HashOn::ClientIp
        })
    );
    assert_eq!(
        lb(&with_lb(
            "ConsistentHash",
            Some("room"),
            None,
            Some("query")
        )),
        Ok(LoadBalancer::ConsistentHash {
            on: HashOn::Query("room".into())
        })
    );
    for (key, hash_on, field) in [
        (Some("x"), None, "spec.loadBalancerOptions.hashOn"),
        (None, Some("cookie"), "spec.loadBalancerOptions.key"),
        (
            Some("bad header"),
            Some("header"),
            "spec.loadBalancerOptions.key",
        ),
        (Some("x"), Some("body"), "spec.loadBalancerOptions.hashOn"),
    ] {
        assert_eq!(
            lb(&with_lb("ConsistentHash", key, None, hash_on)),
            Err(vec![field.to_string()]),
            "{key:?} {hash_on:?}"
        );
    }
    assert_eq!(
        lb(&with_lb("RoundRobin", None, None, Some("clientIp"))),
        Err(vec!["spec.loadBalancerOptions.hashOn".to_string()])
    );
    assert_eq!(
        lb(&with_lb("RoundRobin", Some("sid"), Some(5), None)),
        Ok(LoadBalancer::RoundRobin)
    );
}

/// pinSignalRConnections goes with any balancer and defaults to off.
#[test]
fn pin_signalr_connections_flag() {
    let mut s = with_lb("LeastConnection", None, None, None);
    let r = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap();
    assert!(!r.pin_signalr_connections);
    if let Some(o) = s.load_balancer_options.as_mut() {
        o.pin_signalr_connections = Some(true);
    }
    let r = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap();
    assert!(r.pin_signalr_connections);
    assert_eq!(r.load_balancer, LoadBalancer::LeastConnection);
}

/// `allowedOrigins` and `securityOptions` are parsed into the route; each bad entry is
/// named by its index, and an empty origin list is a mistake.
#[test]
fn access_fields_are_parsed_and_each_bad_entry_named() {
    let mut s = spec();
    s.allowed_origins = Some(vec![
        "https://app.example.com".into(),
        "https://*.example.com".into(),
    ]);
    s.security_options = Some(crate::api::SecurityOptions {
        ip_allowed_list: vec!["10.0.0.0/8".into(), "2001:db8::1".into()],
        ip_blocked_list: vec!["10.1.0.0/16".into()],
        exclude_allowed_from_blocked: Some(true),
    });
    let r = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap();
    let origins = r.allowed_origins.unwrap();
    assert!(origins[1].matches(b"https://a.example.com"));
    let rules = r.ip_rules.unwrap();
    assert!(rules.exclude_allowed_from_blocked);
    assert!(rules.allows("10.2.3.4".parse().unwrap()));
    assert!(!rules.allows("192.0.2.1".parse().unwrap()));

    s.allowed_origins = Some(vec![
        "https://app.example.com".into(),
        "app.example.com".into(),
        "https://x.example.com/path".into(),
    ]);
    s.security_options = Some(crate::api::SecurityOptions {
        ip_allowed_list: vec!["10.0.0.0/8".into()],
        ip_blocked_list: vec!["10.0.0.1".into(), "10.0.0.0/40".into()],
        exclude_allowed_from_blocked: None,
    });
    let errors = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap_err();
    assert_eq!(
        fields(errors.clone()),
        [
            "spec.allowedOrigins[1]",
            "spec.allowedOrigins[2]",
            "spec.securityOptions.ipBlockedList[1]"
        ]
    );
    assert!(errors[0]
        .message
        .contains("must start with `http://` or `https://`"));
    assert!(errors[2].message.contains("prefix length 40"));

    s.allowed_origins = Some(vec![]);
    s.security_options = Some(crate::api::SecurityOptions::default());
    let errors = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap_err();
    assert_eq!(fields(errors), ["spec.allowedOrigins"]);
    s.allowed_origins = None;
    let r = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap();
    assert_eq!(
        r.ip_rules, None,
        "empty lists leave the route open, as in Ocelot"
    );
}

// ---- spec.keepalive ----------------------------------------------------------------------

fn keepalive(
    interval: Option<&str>,
    timeout: Option<&str>,
) -> Result<Option<Keepalive>, Vec<String>> {
    let mut s = spec();
    s.keepalive = Some(crate::api::KeepaliveSpec {
        ping_interval: interval.map(Into::into),
        pong_timeout: timeout.map(Into::into),
    });
    route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static)
        .map(|r| r.keepalive)
        .map_err(fields)
}

/// Off unless asked; given, each duration is checked and named by its field.
#[test]
fn keepalive_is_off_by_default_and_validated_field_by_field() {
    use std::time::Duration;
    let r = route_from_spec(RouteId("r".into()), 0, &spec(), SpecBackends::Static).unwrap();
    assert_eq!(r.keepalive, None);
    let secs = Duration::from_secs;
    assert_eq!(
        keepalive(Some("30s"), Some("10s")),
        Ok(Some(Keepalive {
            ping_interval: secs(30),
            pong_timeout: secs(10)
        }))
    );
    // Defaults: 30 s and 10 s, the timeout never longer than the interval.
    assert_eq!(
        keepalive(None, None),
        Ok(Some(Keepalive {
            ping_interval: secs(30),
            pong_timeout: secs(10)
        }))
    );
    assert_eq!(
        keepalive(Some("5s"), None),
        Ok(Some(Keepalive {
            ping_interval: secs(5),
            pong_timeout: secs(5)
        }))
    );
    assert_eq!(
        keepalive(Some("200ms"), Some("200ms")).map(|k| k.map(|k| k.pong_timeout)),
        Ok(Some(Duration::from_millis(200)))
    );
    assert_eq!(
        keepalive(Some("0s"), Some("soon")),
        Err(vec![
            "spec.keepalive.pingInterval".to_string(),
            "spec.keepalive.pongTimeout".to_string()
        ])
    );
    assert_eq!(
        keepalive(Some("10s"), Some("0ms")),
        Err(vec!["spec.keepalive.pongTimeout".to_string()])
    );
    assert_eq!(
        keepalive(Some("10s"), Some("11s")),
        Err(vec!["spec.keepalive.pongTimeout".to_string()])
    );
}
