//! `limits` and `rateLimitOptions` from routes files and ocelot.json.

use std::time::Duration;

use super::*;

fn ocelot(route_keys: &str) -> String {
    format!(
        r#"{{ "Routes": [ {{
      "UpstreamPathTemplate": "/chat",
      "DownstreamPathTemplate": "/ws",
      "DownstreamHostAndPorts": [ {{ "Host": "localhost", "Port": 5001 }} ],
      {route_keys}
    }} ] }}"#
    )
}

/// The issue's example, as a WsRoute document, loads into the model.
#[test]
fn routes_file_reads_limits_and_rate_limit_options() {
    let yaml = r#"apiVersion: wsgate.io/v1alpha1
kind: WsRoute
metadata: {name: chat}
spec:
  upstreamPathTemplate: /chat
  downstreamPathTemplate: /ws
  downstreamHostAndPorts: [{host: 127.0.0.1, port: 9000}]
  limits:
    maxMessageBytes: 1048576
    messagesPerSecond: 50
    messageBurst: 100
    maxConnections: 10000
    maxConnectionsPerClient: 20
  rateLimitOptions:
    enableRateLimiting: true
    period: 1s
    limit: 5
    periodTimespan: 1
    clientWhitelist: [10.0.0.1]
"#;
    let loaded = load_str("routes.yaml", yaml);
    assert_eq!(loaded.problems, vec![]);
    let r = &loaded.routes[0];
    assert_eq!(r.limits.max_message_bytes, Some(1_048_576));
    assert_eq!(r.limits.messages_per_second, Some(50));
    assert_eq!(r.limits.message_burst, Some(100));
    assert_eq!(r.limits.max_connections, Some(10_000));
    assert_eq!(r.limits.max_connections_per_client, Some(20));
    let rate = r.rate_limit.as_ref().unwrap();
    assert_eq!(rate.period, Duration::from_secs(1));
    assert_eq!(rate.wait, Duration::from_secs(1));
    assert_eq!(rate.limit, 5);
    assert!(rate.exempt("10.0.0.1".parse().unwrap()));
}

/// A bad limit in a routes file names the field and its line.
#[test]
fn routes_file_names_a_bad_limit() {
    let yaml = r#"apiVersion: wsgate.io/v1alpha1
kind: WsRoute
metadata: {name: chat}
spec:
  upstreamPathTemplate: /chat
  downstreamPathTemplate: /ws
  downstreamHostAndPorts: [{host: 127.0.0.1, port: 9000}]
  limits:
    maxConnections: 0
"#;
    let loaded = load_str("routes.yaml", yaml);
    assert!(loaded.has_errors());
    let p = &loaded.problems[0];
    assert_eq!(p.field, "spec.limits.maxConnections");
    assert_eq!(p.line, Some(9));
}

/// Ocelot's `RateLimitOptions` and wsgate's `Limits` in PascalCase; .NET's binder reads
/// numeric strings; keys wsgate does not read are warnings.
#[test]
fn ocelot_reads_rate_limit_options_and_limits() {
    let text = ocelot(
        r#""RateLimitOptions": { "ClientWhitelist": [ "10.0.0.1" ], "EnableRateLimiting": true,
        "Period": "5m", "PeriodTimespan": 1.5, "Limit": "5", "ClientIdHeader": "X-Client" },
      "Limits": { "MaxConnections": 10, "MaxConnectionsPerClient": "2", "MaxMessageBytes": 65536 }"#,
    );
    let loaded = load_str("ocelot.json", &text);
    assert_eq!(
        summary(&loaded),
        [(
            Severity::Warning,
            None,
            "Routes[0].RateLimitOptions.ClientIdHeader"
        )]
    );
    let r = &loaded.routes[0];
    let rate = r.rate_limit.as_ref().unwrap();
    assert_eq!(rate.period, Duration::from_secs(300));
    assert_eq!(rate.wait, Duration::from_millis(1500));
    assert_eq!(rate.limit, 5);
    assert_eq!(r.limits.max_connections, Some(10));
    assert_eq!(r.limits.max_connections_per_client, Some(2));
    assert_eq!(r.limits.max_message_bytes, Some(65_536));
}

/// Validation errors come back under Ocelot's key names, with their line.
#[test]
fn ocelot_names_bad_values_by_their_keys() {
    let text = ocelot(
        r#""RateLimitOptions": { "EnableRateLimiting": true, "Period": "1 sec", "Limit": 5 },
      "Limits": { "MaxConnectionsPerClient": -1, "MessageBurst": "lots" }"#,
    );
    let loaded = load_str("ocelot.json", &text);
    assert!(loaded.routes.is_empty());
    let fields: Vec<_> = loaded.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["Routes[0].Limits.MessageBurst"]);
    let text = ocelot(
        r#""RateLimitOptions": { "EnableRateLimiting": true, "Period": "1 sec", "Limit": 5 },
      "Limits": { "MaxConnectionsPerClient": -1 }"#,
    );
    let loaded = load_str("ocelot.json", &text);
    let fields: Vec<_> = loaded.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "Routes[0].Limits.MaxConnectionsPerClient",
            "Routes[0].RateLimitOptions.Period"
        ]
    );
    assert_eq!(loaded.problems[1].line, Some(5));
}

/// `Limits` is wsgate's own section: a zero there is a mistake, not Ocelot's "off".
#[test]
fn ocelot_limits_of_zero_are_errors() {
    let text = ocelot(r#""Limits": { "MaxConnectionsPerClient": 0 }"#);
    let loaded = load_str("ocelot.json", &text);
    assert!(loaded.routes.is_empty());
    let fields: Vec<_> = loaded.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["Routes[0].Limits.MaxConnectionsPerClient"]);
}
