//! The generated CRD schema rejects what the API server can check on its own. CEL rules are
//! evaluated client-side with kube's CEL validator (the same rules an API server runs).

use kube::CustomResourceExt;
use serde_json::{json, Value};
use wsgate::api::WsRoute;

fn schema() -> Value {
    let crd = WsRoute::crd();
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("schema is JSON")
}

fn route(spec: Value) -> Value {
    json!({
        "apiVersion": "wsgate.io/v1alpha1",
        "kind": "WsRoute",
        "metadata": {"name": "chat", "namespace": "apps"},
        "spec": spec,
    })
}

fn cel_errors(spec: Value) -> Vec<String> {
    match kube::core::cel::Validator::new().validate(&schema(), &route(spec), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.to_string().lines().map(str::to_string).collect(),
    }
}

/// A route with a Service and port passes every CEL rule.
#[test]
fn service_route_passes_cel_rules() {
    let errors = cel_errors(json!({
        "upstreamPathTemplate": "/chat/{room}",
        "downstreamPathTemplate": "/{room}",
        "serviceName": "chat",
        "servicePort": "http",
    }));
    assert!(errors.is_empty(), "{errors:?}");
}

/// A route with static backends and no Service passes every CEL rule.
#[test]
fn static_route_passes_cel_rules() {
    let errors = cel_errors(json!({
        "upstreamPathTemplate": "/chat",
        "downstreamPathTemplate": "/chat",
        "downstreamHostAndPorts": [{"host": "10.0.0.7", "port": 5001}],
    }));
    assert!(errors.is_empty(), "{errors:?}");
}

/// Both `serviceName` and `downstreamHostAndPorts` is rejected.
#[test]
fn service_and_static_backends_together_are_rejected() {
    let errors = cel_errors(json!({
        "upstreamPathTemplate": "/chat",
        "downstreamPathTemplate": "/chat",
        "serviceName": "chat",
        "servicePort": 80,
        "downstreamHostAndPorts": [{"host": "10.0.0.7", "port": 5001}],
    }));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("exactly one of serviceName and downstreamHostAndPorts")),
        "{errors:?}"
    );
}

/// Neither `serviceName` nor `downstreamHostAndPorts` is rejected.
#[test]
fn route_without_backends_is_rejected() {
    let errors = cel_errors(json!({
        "upstreamPathTemplate": "/chat",
        "downstreamPathTemplate": "/chat",
    }));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("exactly one of serviceName and downstreamHostAndPorts")),
        "{errors:?}"
    );
}

/// `serviceName` without `servicePort` is rejected.
#[test]
fn service_without_port_is_rejected() {
    let errors = cel_errors(json!({
        "upstreamPathTemplate": "/chat",
        "downstreamPathTemplate": "/chat",
        "serviceName": "chat",
    }));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("serviceName and servicePort go together")),
        "{errors:?}"
    );
}

/// A `servicePort` number outside 1-65535 is rejected; so is a malformed port name.
#[test]
fn service_port_out_of_range_or_malformed_is_rejected() {
    for port in [json!(0), json!(70000), json!("Not_A_Name")] {
        let errors = cel_errors(json!({
            "upstreamPathTemplate": "/chat",
            "downstreamPathTemplate": "/chat",
            "serviceName": "chat",
            "servicePort": port,
        }));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("servicePort is a port number")),
            "{port}: {errors:?}"
        );
    }
}

/// Structural rules: templates start with `/`, enums for scheme and balancer, port ranges.
#[test]
fn schema_carries_patterns_enums_and_port_ranges() {
    let s = schema();
    let spec = &s["properties"]["spec"]["properties"];
    assert_eq!(spec["upstreamPathTemplate"]["pattern"], "^/");
    assert_eq!(spec["downstreamPathTemplate"]["pattern"], "^/");
    let schemes = spec["downstreamScheme"]["enum"].as_array().expect("enum");
    assert!(schemes.contains(&json!("ws")) && schemes.contains(&json!("wss")));
    assert_eq!(
        spec["loadBalancerOptions"]["properties"]["type"]["enum"],
        json!([
            "NoLoadBalancer",
            "RoundRobin",
            "LeastConnection",
            "CookieStickySessions",
            "ConsistentHash"
        ])
    );
    let port = &spec["downstreamHostAndPorts"]["items"]["properties"]["port"];
    assert_eq!(port["minimum"].as_f64(), Some(1.0));
    assert_eq!(port["maximum"].as_f64(), Some(65535.0));
}

/// `kubectl get wsr` shows host, path, backend, ready endpoints, programmed and age.
#[test]
fn printer_columns_show_host_path_backend_ready_programmed_age() {
    let crd = WsRoute::crd();
    let names: Vec<_> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["Host", "Path", "Backend", "Ready", "Programmed", "Age"]
    );
}

/// `tls` names a Secret or a cert/key file pair, never both and never half a pair;
/// `backendTls` takes at most one CA source.
#[test]
fn tls_blocks_reject_mixed_or_partial_references() {
    let base = |tls: Value, backend: Value| {
        json!({
            "upstreamPathTemplate": "/chat",
            "downstreamPathTemplate": "/chat",
            "serviceName": "chat",
            "servicePort": 80,
            "tls": tls,
            "backendTls": backend,
        })
    };
    assert!(cel_errors(base(
        json!({"secretName": "chat-tls"}),
        json!({"caSecretName": "ca"})
    ))
    .is_empty());
    for (tls, backend) in [
        (
            json!({"secretName": "x", "certFile": "c", "keyFile": "k"}),
            json!({}),
        ),
        (json!({"certFile": "c"}), json!({})),
        (json!({}), json!({})),
        (
            json!({"secretName": "x"}),
            json!({"caSecretName": "a", "caFile": "b"}),
        ),
    ] {
        assert!(
            !cel_errors(base(tls.clone(), backend.clone())).is_empty(),
            "{tls} / {backend} must be rejected"
        );
    }
}

/// `limits.messageBurst` needs `messagesPerSecond`; enabled rate limiting needs `period`
/// and `limit`; `enableRateLimiting: false` needs neither.
#[test]
fn limits_and_rate_limit_options_reject_half_settings() {
    let base = |limits: Value, rate: Value| {
        json!({
            "upstreamPathTemplate": "/chat",
            "downstreamPathTemplate": "/chat",
            "serviceName": "chat",
            "servicePort": 80,
            "limits": limits,
            "rateLimitOptions": rate,
        })
    };
    let ok = [
        (
            json!({"maxMessageBytes": 1048576, "messagesPerSecond": 50, "messageBurst": 100,
                   "maxConnections": 10000, "maxConnectionsPerClient": 20}),
            json!({"enableRateLimiting": true, "period": "1s", "limit": 5, "periodTimespan": 1,
                   "clientWhitelist": ["10.0.0.1"]}),
        ),
        (json!({}), json!({"enableRateLimiting": false})),
        (json!({}), json!({"period": "1d", "limit": 1})),
    ];
    for (limits, rate) in ok {
        let errors = cel_errors(base(limits.clone(), rate.clone()));
        assert!(errors.is_empty(), "{limits} / {rate}: {errors:?}");
    }
    let bad = [
        (
            json!({"messageBurst": 100}),
            json!({"enableRateLimiting": false}),
        ),
        (
            json!({}),
            json!({"enableRateLimiting": true, "period": "1s"}),
        ),
        (json!({}), json!({"limit": 5})),
    ];
    for (limits, rate) in bad {
        assert!(
            !cel_errors(base(limits.clone(), rate.clone())).is_empty(),
            "{limits} / {rate} must be rejected"
        );
    }
}

/// `authenticationOptions.jwt` names exactly one key source, and the claim fields need
/// `authenticationOptions`.
#[test]
fn authentication_rejects_two_or_no_key_sources_and_claims_without_it() {
    let base = || {
        json!({
            "upstreamPathTemplate": "/chat",
            "downstreamPathTemplate": "/chat",
            "serviceName": "chat",
            "servicePort": 80,
        })
    };
    let with = |auth: Value, extra: &[(&str, Value)]| {
        let mut s = base();
        if !auth.is_null() {
            s["authenticationOptions"] = auth;
        }
        for (k, v) in extra {
            s[*k] = v.clone();
        }
        cel_errors(s)
    };
    let ok = with(
        json!({"jwt": {"issuer": "https://id", "jwksSecretName": "chat-jwks", "leeway": "30s"},
               "allowedScopes": ["chat"], "closeOnTokenExpiry": true}),
        &[
            ("routeClaimsRequirement", json!({"role": "admin"})),
            (
                "addHeadersToRequest",
                json!({"X-User-Id": "Claims[sub] > value"}),
            ),
        ],
    );
    assert!(ok.is_empty(), "{ok:?}");
    let both = with(
        json!({"jwt": {"jwksSecretName": "k", "jwksFile": "f.json"}}),
        &[],
    );
    assert!(
        both.iter().any(|e| e.contains("jwksSecretName")),
        "{both:?}"
    );
    let none = with(json!({"jwt": {"issuer": "https://id"}}), &[]);
    assert!(
        none.iter().any(|e| e.contains("jwksSecretName")),
        "{none:?}"
    );
    let claims = with(
        Value::Null,
        &[("routeClaimsRequirement", json!({"role": "admin"}))],
    );
    assert!(
        claims
            .iter()
            .any(|e| e.contains("need authenticationOptions")),
        "{claims:?}"
    );
}

/// `allowedOrigins` entries are scheme://host[:port]: good ones pass, one with a path or
/// another scheme is rejected at apply time.
#[test]
fn allowed_origins_are_origins() {
    let with = |origins: Value| {
        cel_errors(json!({
            "upstreamPathTemplate": "/chat",
            "downstreamPathTemplate": "/chat",
            "downstreamHostAndPorts": [{"host": "10.0.0.7", "port": 5001}],
            "allowedOrigins": origins,
        }))
    };
    let good = with(json!([
        "https://app.example.com",
        "https://*.example.com",
        "http://localhost:3000"
    ]));
    assert!(good.is_empty(), "{good:?}");
    for bad in [
        "https://app.example.com/",
        "ftp://app.example.com",
        "app.example.com",
    ] {
        let errors = with(json!(["https://ok.example.com", bad]));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("each origin is scheme://host[:port]")),
            "{bad}: {errors:?}"
        );
    }
}
