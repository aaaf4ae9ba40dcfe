use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue};

use super::*;
use crate::model::Endpoint;

fn endpoints(n: u16) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint::new("10.0.0.1", 8000 + i))
        .collect()
}

const NOW: u64 = 1_700_000_000_000;

fn ctx(headers: &HeaderMap) -> PickContext<'_> {
    PickContext {
        headers,
        query: None,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        now_ms: NOW,
        secure: false,
    }
}

fn first_port(b: &Balancer) -> u16 {
    let h = HeaderMap::new();
    b.pick(&ctx(&h)).next().unwrap().endpoint.port
}

fn first_port_with(b: &Balancer, c: &PickContext<'_>) -> u16 {
    b.pick(c).next().unwrap().endpoint.port
}

fn state() -> BalanceState {
    BalanceState::new(StickyKey::new(b"0123456789abcdef-test-key").unwrap())
}

/// NoLoadBalancer always starts at the first ready endpoint and falls back in order.
#[test]
fn no_load_balancer_takes_first_then_falls_back_in_order() {
    let b = Balancer::new(&LoadBalancer::NoLoadBalancer, &endpoints(3), &state());
    let h = HeaderMap::new();
    for _ in 0..3 {
        let order: Vec<u16> = b.pick(&ctx(&h)).map(|x| x.endpoint.port).collect();
        assert_eq!(order, vec![8000, 8001, 8002]);
    }
}

/// RoundRobin spreads picks evenly.
#[test]
fn round_robin_is_even() {
    let b = Balancer::new(&LoadBalancer::RoundRobin, &endpoints(3), &state());
    let mut counts = [0; 3];
    for _ in 0..300 {
        counts[(first_port(&b) - 8000) as usize] += 1;
    }
    assert_eq!(counts, [100, 100, 100]);
}

/// LeastConnection picks the endpoint with the fewest live connections.
#[test]
fn least_connection_prefers_idle_endpoint() {
    let b = Balancer::new(&LoadBalancer::LeastConnection, &endpoints(3), &state());
    let _g1 = b.ready()[0].load.begin();
    let _g2 = b.ready()[2].load.begin();
    for _ in 0..5 {
        assert_eq!(first_port(&b), 8001);
    }
}

/// LeastConnection holding every connection it hands out keeps loads within one of each other.
#[test]
fn least_connection_held_connections_stay_level() {
    let b = Balancer::new(&LoadBalancer::LeastConnection, &endpoints(4), &state());
    let h = HeaderMap::new();
    let mut guards = Vec::new();
    for _ in 0..103 {
        let chosen = b.pick(&ctx(&h)).next().unwrap();
        guards.push(chosen.load.begin());
        let loads: Vec<usize> = b.ready().iter().map(|x| x.load.current()).collect();
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(max - min <= 1, "{loads:?}");
    }
}

/// Counts survive a rebuild with the same endpoints, and a guard's drop releases them.
#[test]
fn loads_survive_table_generations() {
    let st = state();
    let old = Balancer::new(&LoadBalancer::LeastConnection, &endpoints(2), &st);
    let guard = old.ready()[0].load.begin();
    drop(old);
    let new = Balancer::new(&LoadBalancer::LeastConnection, &endpoints(3), &st);
    assert_eq!(new.ready()[0].load.current(), 1);
    drop(guard);
    assert_eq!(new.ready()[0].load.current(), 0);
}

/// Terminating endpoints take no new connections; with none ready, pick is empty.
#[test]
fn terminating_endpoints_get_no_new_connections() {
    let eps: Vec<Endpoint> = endpoints(2)
        .into_iter()
        .map(|e| e.with_state(EndpointState::Terminating))
        .collect();
    let b = Balancer::new(&LoadBalancer::RoundRobin, &eps, &state());
    let h = HeaderMap::new();
    assert_eq!(b.pick(&ctx(&h)).count(), 0);
    assert_eq!(b.terminating(), 2);
}

fn sticky(expiry_ms: u64) -> LoadBalancer {
    LoadBalancer::CookieStickySessions {
        key: "affinity".into(),
        expiry: Duration::from_millis(expiry_ms),
    }
}

/// `name=value` out of a `Set-Cookie` header value.
fn cookie_pair(set_cookie: &HeaderValue) -> String {
    set_cookie
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn with_cookie(pair: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::COOKIE, HeaderValue::from_str(pair).unwrap());
    h
}

/// The cookie set for a pick brings every later request to the same endpoint, while
/// requests without it keep rotating.
#[test]
fn sticky_cookie_keeps_requests_on_the_first_endpoint() {
    let b = Balancer::new(&sticky(60_000), &endpoints(3), &state());
    let none = HeaderMap::new();
    let chosen = b.pick(&ctx(&none)).next().unwrap();
    let pair = cookie_pair(&b.set_cookie(chosen, &ctx(&none)).unwrap());
    let h = with_cookie(&format!("other=1; {pair}; x=y"));
    for _ in 0..10 {
        assert_eq!(first_port_with(&b, &ctx(&h)), chosen.endpoint.port);
    }
    let ports: std::collections::HashSet<u16> = (0..3).map(|_| first_port(&b)).collect();
    assert_eq!(ports.len(), 3, "requests without the cookie rotate");
}

/// The Set-Cookie carries the attributes browsers need: site-wide, HttpOnly, Lax, Max-Age,
/// and Secure only over TLS; its value does not show the endpoint address.
#[test]
fn sticky_set_cookie_attributes() {
    let b = Balancer::new(&sticky(90_000), &endpoints(1), &state());
    let none = HeaderMap::new();
    let chosen = &b.ready()[0];
    let plain = b.set_cookie(chosen, &ctx(&none)).unwrap();
    let plain = plain.to_str().unwrap();
    assert!(plain.starts_with("affinity="), "{plain}");
    assert!(
        plain.ends_with("; Path=/; Max-Age=90; HttpOnly; SameSite=Lax"),
        "{plain}"
    );
    assert!(
        !plain.contains("10.0.0.1") && !plain.contains("8000"),
        "{plain}"
    );
    let mut tls = ctx(&none);
    tls.secure = true;
    let secure = b.set_cookie(chosen, &tls).unwrap();
    assert!(secure.to_str().unwrap().ends_with("; Secure"));
}

/// A cookie past its expiry is ignored (a new pick follows); a fresh one from the same
/// response extends the session (Ocelot refreshes on use).
#[test]
fn sticky_cookie_expires_and_refreshes_on_use() {
    let b = Balancer::new(&sticky(1_000), &endpoints(3), &state());
    let none = HeaderMap::new();
    let target = &b.ready()[2];
    let pair = cookie_pair(&b.set_cookie(target, &ctx(&none)).unwrap());
    let h = with_cookie(&pair);
    let mut c = ctx(&h);
    c.now_ms = NOW + 999;
    assert_eq!(
        first_port_with(&b, &c),
        8002,
        "still valid just before expiry"
    );
    // Refreshed at NOW + 999: valid until NOW + 1999.
    let refreshed = cookie_pair(&b.set_cookie(target, &c).unwrap());
    c.now_ms = NOW + 1_000;
    let ports: std::collections::HashSet<u16> = (0..3).map(|_| first_port_with(&b, &c)).collect();
    assert_eq!(ports.len(), 3, "expired cookie is ignored: picks rotate");
    let h2 = with_cookie(&refreshed);
    let mut c2 = ctx(&h2);
    c2.now_ms = NOW + 1_998;
    for _ in 0..3 {
        assert_eq!(first_port_with(&b, &c2), 8002);
    }
}

/// Cookies with a changed endpoint, a stretched expiry, a bad MAC, another key or
/// another cookie name are all rejected.
#[test]
fn forged_sticky_cookies_are_rejected() {
    let st = state();
    let b = Balancer::new(&sticky(60_000), &endpoints(3), &st);
    let none = HeaderMap::new();
    let pair = cookie_pair(&b.set_cookie(&b.ready()[2], &ctx(&none)).unwrap());
    let value = pair.strip_prefix("affinity=").unwrap();
    let parts: Vec<&str> = value.split('.').collect();
    assert_eq!(parts.len(), 3);
    let other_ep = format!("{:016x}", b.ready()[0].cookie_id);
    let forged = [
        format!("{other_ep}.{}.{}", parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], u64::MAX, parts[2]),
        format!("{}.{}.AAAA{}", parts[0], parts[1], &parts[2][4..]),
        format!("{}.{}", parts[0], parts[1]),
        "garbage".to_string(),
    ];
    for f in &forged {
        let h = with_cookie(&format!("affinity={f}"));
        assert_eq!(b.sticky.as_ref().unwrap().read(&h, NOW), None, "{f}");
    }
    // Signed under another key.
    let other = Balancer::new(
        &sticky(60_000),
        &endpoints(3),
        &BalanceState::new(StickyKey::new(b"another key of 16+ bytes").unwrap()),
    );
    let foreign = cookie_pair(&other.set_cookie(&other.ready()[2], &ctx(&none)).unwrap());
    assert_eq!(
        b.sticky.as_ref().unwrap().read(&with_cookie(&foreign), NOW),
        None
    );
    // Same value under another cookie name is not this route's cookie.
    let renamed = Balancer::new(
        &LoadBalancer::CookieStickySessions {
            key: "other".into(),
            expiry: Duration::from_secs(60),
        },
        &endpoints(3),
        &st,
    );
    let h = with_cookie(&format!("other={value}"));
    assert_eq!(renamed.sticky.as_ref().unwrap().read(&h, NOW), None);
    // The genuine cookie passes.
    assert!(b
        .sticky
        .as_ref()
        .unwrap()
        .read(&with_cookie(&pair), NOW)
        .is_some());
}

/// Replicas sharing the key honour each other's cookies with no shared state.
#[test]
fn sticky_cookie_holds_across_replicas_with_the_same_key() {
    let a = Balancer::new(&sticky(60_000), &endpoints(3), &state());
    let b = Balancer::new(&sticky(60_000), &endpoints(3), &state());
    let none = HeaderMap::new();
    let pair = cookie_pair(&a.set_cookie(&a.ready()[1], &ctx(&none)).unwrap());
    let h = with_cookie(&pair);
    for _ in 0..5 {
        assert_eq!(first_port_with(&b, &ctx(&h)), 8001);
    }
}

/// A cookie naming an endpoint that is gone (or terminating) gets a new pick, and the
/// new cookie names the new endpoint.
#[test]
fn sticky_cookie_for_removed_endpoint_falls_back() {
    let st = state();
    let before = Balancer::new(&sticky(60_000), &endpoints(3), &st);
    let none = HeaderMap::new();
    let pair = cookie_pair(&before.set_cookie(&before.ready()[2], &ctx(&none)).unwrap());
    let mut eps = endpoints(3);
    eps[2] = eps[2].clone().with_state(EndpointState::Terminating);
    let after = Balancer::new(&sticky(60_000), &eps, &st);
    let h = with_cookie(&pair);
    let chosen = after.pick(&ctx(&h)).next().unwrap();
    assert_ne!(chosen.endpoint.port, 8002);
    let renewed = cookie_pair(&after.set_cookie(chosen, &ctx(&h)).unwrap());
    let h = with_cookie(&renewed);
    assert_eq!(first_port_with(&after, &ctx(&h)), chosen.endpoint.port);
}

fn hash_on_header() -> LoadBalancer {
    LoadBalancer::ConsistentHash {
        on: HashOn::Header(http::HeaderName::from_static("x-user")),
    }
}

fn owner(b: &Balancer, user: &str) -> u16 {
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_str(user).unwrap());
    first_port_with(b, &ctx(&h))
}

/// The same value always reaches the same endpoint, independent of endpoint order and
/// of which balancer instance (replica) answers.
#[test]
fn consistent_hash_is_stable_across_replicas_and_order() {
    let a = Balancer::new(&hash_on_header(), &endpoints(5), &state());
    let mut reversed = endpoints(5);
    reversed.reverse();
    let b = Balancer::new(&hash_on_header(), &reversed, &BalanceState::default());
    for i in 0..200 {
        let user = format!("user-{i}");
        assert_eq!(owner(&a, &user), owner(&a, &user));
        assert_eq!(owner(&a, &user), owner(&b, &user), "{user}");
    }
}

/// Values spread over the endpoints roughly evenly.
#[test]
fn consistent_hash_spreads_keys() {
    let b = Balancer::new(&hash_on_header(), &endpoints(4), &state());
    let mut counts = [0usize; 4];
    for i in 0..4000 {
        counts[(owner(&b, &format!("u{i}")) - 8000) as usize] += 1;
    }
    for c in counts {
        assert!((800..1200).contains(&c), "{counts:?}");
    }
}

/// When one of N endpoints leaves, only the keys it owned move (about 1/N of them), and
/// adding it back restores the old owners.
#[test]
fn consistent_hash_moves_only_the_leaving_endpoints_keys() {
    const N: u16 = 5;
    const KEYS: usize = 10_000;
    let full = Balancer::new(&hash_on_header(), &endpoints(N), &state());
    let mut less = endpoints(N);
    less.remove(3);
    let reduced = Balancer::new(&hash_on_header(), &less, &state());
    let mut moved = 0;
    for i in 0..KEYS {
        let user = format!("k{i}");
        let (before, after) = (owner(&full, &user), owner(&reduced, &user));
        if before != after {
            assert_eq!(before, 8003, "{user} moved though its endpoint stayed");
            moved += 1;
        }
    }
    let expected = KEYS / N as usize;
    assert!(
        moved > expected * 8 / 10 && moved < expected * 12 / 10,
        "moved {moved} of {KEYS}, expected about {expected}"
    );
}

/// Each hash source reads its own part of the request; without it, picks rotate.
#[test]
fn consistent_hash_sources() {
    let st = state();
    let on = |on: HashOn| Balancer::new(&LoadBalancer::ConsistentHash { on }, &endpoints(8), &st);
    let none = HeaderMap::new();

    let by_query = on(HashOn::Query("room".into()));
    let mut c = ctx(&none);
    c.query = Some("a=1&room=blue&b=2");
    let blue = first_port_with(&by_query, &c);
    c.query = Some("room=blue");
    assert_eq!(first_port_with(&by_query, &c), blue);

    let by_cookie = on(HashOn::Cookie("sid".into()));
    let h1 = with_cookie("x=1; sid=abc");
    let h2 = with_cookie("sid=abc");
    assert_eq!(
        first_port_with(&by_cookie, &ctx(&h1)),
        first_port_with(&by_cookie, &ctx(&h2))
    );

    let by_ip = on(HashOn::ClientIp);
    let mut c = ctx(&none);
    c.client_ip = "192.0.2.7".parse().unwrap();
    let v4 = first_port_with(&by_ip, &c);
    c.client_ip = "::ffff:192.0.2.7".parse().unwrap();
    assert_eq!(
        first_port_with(&by_ip, &c),
        v4,
        "v4-mapped v6 is the same client"
    );

    let ports: std::collections::HashSet<u16> = (0..8)
        .map(|_| first_port_with(&by_query, &ctx(&none)))
        .collect();
    assert_eq!(ports.len(), 8, "no value to hash: round robin");
}

fn pinned_route_balancer(st: &BalanceState) -> Balancer {
    let mut b = Balancer::new(&LoadBalancer::RoundRobin, &endpoints(3), st);
    b.pins = Some(st.pins_for(&RouteId("signalr".into())));
    b
}

/// A learned SignalR token sends `?id=<token>` requests to its endpoint, percent-encoded
/// or not, across table generations; unknown tokens fall to the balancer.
#[test]
fn signalr_pins_route_follow_ups_to_the_negotiating_endpoint() {
    let st = state();
    let b = pinned_route_balancer(&st);
    b.pin_signalr("tok+/=", &b.ready()[1], NOW);
    let none = HeaderMap::new();
    let mut c = ctx(&none);
    c.query = Some("id=tok%2B%2F%3D&_=1");
    for _ in 0..5 {
        assert_eq!(first_port_with(&b, &c), 8001);
    }
    let next_generation = pinned_route_balancer(&st);
    assert_eq!(first_port_with(&next_generation, &c), 8001);
    c.query = Some("id=unknown");
    let ports: std::collections::HashSet<u16> = (0..3).map(|_| first_port_with(&b, &c)).collect();
    assert_eq!(ports.len(), 3);
}

/// A pin expires after its idle time; a pin to a removed endpoint falls back.
#[test]
fn signalr_pins_expire_and_skip_gone_endpoints() {
    let map = PinMap::new(10, 1_000);
    map.insert("t", 7, NOW);
    assert_eq!(map.get("t", NOW + 999), Some(7));
    assert_eq!(map.get("t", NOW + 1_998), Some(7), "refreshed by use");
    assert_eq!(map.get("t", NOW + 2_998), None);
    assert!(map.is_empty(), "expired pin removed");

    let st = state();
    let b = pinned_route_balancer(&st);
    b.pin_signalr("t", &b.ready()[2], NOW);
    let mut two = Balancer::new(&LoadBalancer::NoLoadBalancer, &endpoints(2), &st);
    two.pins = Some(st.pins_for(&RouteId("signalr".into())));
    let none = HeaderMap::new();
    let mut c = ctx(&none);
    c.query = Some("id=t");
    assert_eq!(
        first_port_with(&two, &c),
        8000,
        "gone endpoint: the balancer decides"
    );
}

/// The pin map never grows past its capacity; the least recently used pins go first.
#[test]
fn signalr_pins_are_bounded() {
    let map = PinMap::new(64, 1_000_000);
    for i in 0..1000u64 {
        map.insert(&format!("t{i}"), i, NOW + i);
        assert!(map.len() <= 64);
    }
    assert_eq!(map.get("t999", NOW + 1000), Some(999));
    assert_eq!(map.get("t0", NOW + 1000), None);
}

/// Query parameters are found by exact name and decoded only when needed.
#[test]
fn query_param_and_percent_decode() {
    assert_eq!(query_param("a=1&id=x&id=y", "id"), Some("x"));
    assert_eq!(query_param("idx=1", "id"), None);
    assert_eq!(query_param("id", "id"), Some(""));
    assert!(matches!(percent_decode("plain"), Cow::Borrowed("plain")));
    assert_eq!(percent_decode("a%2Bb%zz%4"), "a+b%zz%4");
}
