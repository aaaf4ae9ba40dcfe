use std::net::IpAddr;
use std::time::Duration;

use crate::api::{LimitsSpec, RateLimitOptionsSpec};
use crate::model::tests::spec;
use crate::model::{route_from_spec, AddrRange, Limits, RateLimit, RouteId, SpecBackends};

fn with_limits(l: LimitsSpec) -> Result<Limits, Vec<String>> {
    let mut s = spec();
    s.limits = Some(l);
    route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static)
        .map(|r| r.limits)
        .map_err(|e| e.into_iter().map(|e| e.field).collect())
}

fn with_rate(r: RateLimitOptionsSpec) -> Result<Option<RateLimit>, Vec<String>> {
    let mut s = spec();
    s.rate_limit_options = Some(r);
    route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static)
        .map(|r| r.rate_limit)
        .map_err(|e| e.into_iter().map(|e| e.field).collect())
}

fn rate(period: &str, limit: i64) -> RateLimitOptionsSpec {
    RateLimitOptionsSpec {
        enable_rate_limiting: Some(true),
        period: Some(period.into()),
        period_timespan: Some(1.0),
        limit: Some(limit),
        client_whitelist: vec![],
    }
}

/// Every limit the issue lists is carried into the model as written.
#[test]
fn limits_are_validated_into_the_model() {
    let l = with_limits(LimitsSpec {
        max_message_bytes: Some(1_048_576),
        messages_per_second: Some(50),
        message_burst: Some(100),
        max_connections: Some(10_000),
        max_connections_per_client: Some(20),
    })
    .unwrap();
    assert_eq!(
        l,
        Limits {
            max_message_bytes: Some(1_048_576),
            messages_per_second: Some(50),
            message_burst: Some(100),
            max_connections: Some(10_000),
            max_connections_per_client: Some(20),
        }
    );
    assert_eq!(
        with_limits(LimitsSpec::default()).unwrap(),
        Limits::default()
    );
}

/// Zero, negative and too large values are errors naming their field.
#[test]
fn zero_negative_and_oversized_limits_name_their_field() {
    let fields = with_limits(LimitsSpec {
        max_message_bytes: Some(0),
        messages_per_second: Some(-1),
        message_burst: Some(1 << 40),
        max_connections: Some(0),
        max_connections_per_client: Some(-20),
    })
    .unwrap_err();
    assert_eq!(
        fields,
        [
            "spec.limits.maxMessageBytes",
            "spec.limits.messagesPerSecond",
            "spec.limits.messageBurst",
            "spec.limits.maxConnections",
            "spec.limits.maxConnectionsPerClient",
        ]
    );
}

/// A burst is the size of a rate's bucket: alone it means nothing.
#[test]
fn message_burst_without_messages_per_second_is_an_error() {
    let fields = with_limits(LimitsSpec {
        message_burst: Some(10),
        ..LimitsSpec::default()
    })
    .unwrap_err();
    assert_eq!(fields, ["spec.limits.messageBurst"]);
}

/// Ocelot's fields: `Period` as a duration (days included), `PeriodTimespan` in seconds
/// (fractions allowed), the whitelist as addresses and CIDR blocks.
#[test]
fn rate_limit_options_are_validated_into_the_model() {
    let mut r = rate("1d", 5);
    r.period_timespan = Some(2.5);
    r.client_whitelist = vec![
        "10.0.0.1".into(),
        "10.1.2.3/16".into(),
        "2001:db8::/32".into(),
    ];
    let limit = with_rate(r).unwrap().unwrap();
    assert_eq!(limit.period, Duration::from_secs(86_400));
    assert_eq!(limit.wait, Duration::from_millis(2500));
    assert_eq!(limit.limit, 5);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(limit.exempt(ip("10.0.0.1")));
    assert!(!limit.exempt(ip("10.0.0.2")));
    assert!(limit.exempt(ip("10.1.200.7")));
    assert!(
        limit.exempt(ip("::ffff:10.1.0.9")),
        "IPv4-mapped IPv6 is IPv4"
    );
    assert!(limit.exempt(ip("2001:db8:1::1")));
    assert!(!limit.exempt(ip("2001:db9::1")));
    assert_eq!(
        with_rate(rate("500ms", 1)).unwrap().unwrap().period,
        Duration::from_millis(500)
    );
}

/// `enableRateLimiting: false` turns the section off; absent, the section is on.
#[test]
fn enable_rate_limiting_false_counts_nothing() {
    let mut r = rate("1s", 5);
    r.enable_rate_limiting = Some(false);
    assert_eq!(with_rate(r).unwrap(), None);
    let mut r = rate("1s", 5);
    r.enable_rate_limiting = None;
    assert!(with_rate(r).unwrap().is_some());
}

/// Every bad value of the section names its field.
#[test]
fn bad_rate_limit_options_name_their_field() {
    let r = RateLimitOptionsSpec {
        enable_rate_limiting: None,
        period: Some("1 second".into()),
        period_timespan: Some(-1.0),
        limit: Some(0),
        client_whitelist: vec![
            "10.0.0.1".into(),
            "example.com".into(),
            "10.0.0.0/33".into(),
        ],
    };
    assert_eq!(
        with_rate(r).unwrap_err(),
        [
            "spec.rateLimitOptions.period",
            "spec.rateLimitOptions.periodTimespan",
            "spec.rateLimitOptions.limit",
            "spec.rateLimitOptions.clientWhitelist[1]",
            "spec.rateLimitOptions.clientWhitelist[2]",
        ]
    );
    let mut r = rate("1s", 1);
    r.client_whitelist = vec!["10.0.0.1".into(); 1025];
    assert_eq!(
        with_rate(r).unwrap_err(),
        ["spec.rateLimitOptions.clientWhitelist"]
    );
    let r = RateLimitOptionsSpec {
        period: Some("0s".into()),
        ..RateLimitOptionsSpec::default()
    };
    assert_eq!(
        with_rate(r).unwrap_err(),
        [
            "spec.rateLimitOptions.period",
            "spec.rateLimitOptions.limit"
        ]
    );
}

#[test]
fn addr_range_masks_and_matches_by_family() {
    let r = AddrRange::parse("192.168.7.9/24").unwrap();
    assert!(r.contains("192.168.7.200".parse().unwrap()));
    assert!(!r.contains("192.168.8.1".parse().unwrap()));
    let all4 = AddrRange::parse("0.0.0.0/0").unwrap();
    assert!(all4.contains("8.8.8.8".parse().unwrap()));
    assert!(!all4.contains("::1".parse().unwrap()));
    assert!(AddrRange::parse("::1/129").is_err());
    assert!(AddrRange::parse("1.2.3").is_err());
}
