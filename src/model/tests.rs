use super::*;
use crate::api::{HostAndPort, LoadBalancerOptions, RouteTimeouts, WsRouteSpec};

fn spec() -> WsRouteSpec {
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

#[test]
fn host_patterns() {
    for ok in [
        "chat.example.com",
        "*.example.com",
        "chat.example.com:8080",
        "*.a.b:443",
    ] {
        let mut s = spec();
        s.upstream_host = Some(ok.into());
        assert!(
            route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).is_ok(),
            "{ok}"
        );
    }
    for bad in ["", "a.*.com", "chat.example.com:0", "chat example", "**.x"] {
        let mut s = spec();
        s.upstream_host = Some(bad.into());
        let errs = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap_err();
        assert_eq!(fields(errs), vec!["spec.upstreamHost"], "{bad}");
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
