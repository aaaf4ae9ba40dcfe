use http::Method;
use proptest::prelude::*;

use super::tests::{build, route, RouteBuilder};
use super::*;

#[derive(Clone, Debug)]
enum Seg {
    Literal(String),
    Placeholder,
    /// `lit{name}`
    Prefixed(String),
    /// `{name}-lit`
    Suffixed(String),
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        "[a-z]{1,6}".prop_map(Seg::Literal),
        Just(Seg::Placeholder),
        "[a-z]{1,3}".prop_map(Seg::Prefixed),
        "[a-z]{1,3}".prop_map(|l| Seg::Suffixed(format!("-{l}"))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Rendering a template with random values and matching the result gives the values
    /// back, and the downstream path carries them unchanged.
    #[test]
    fn captures_round_trip_through_upstream_and_downstream(
        segs in prop::collection::vec(seg(), 0..5),
        values in prop::collection::vec("[A-Za-z0-9%._~-]{1,8}", 5),
        catch_all in proptest::option::of("[A-Za-z0-9%._~/-]{0,16}"),
        query_value in proptest::option::of("[A-Za-z0-9%._~=-]{0,8}"),
    ) {
        let mut upstream = String::new();
        let mut request = String::new();
        let mut downstream = String::from("/out");
        let mut expected = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let (name, value) = (format!("p{i}"), values[i].clone());
            let (template, text) = match s {
                Seg::Literal(l) => (l.clone(), l.to_ascii_uppercase()),
                Seg::Placeholder => (format!("{{{name}}}"), value.clone()),
                Seg::Prefixed(l) => (format!("{l}{{{name}}}"), format!("{l}{value}")),
                Seg::Suffixed(l) => (format!("{{{name}}}{l}"), format!("{value}{l}")),
            };
            upstream.push_str(&format!("/{template}"));
            request.push_str(&format!("/{text}"));
            if !matches!(s, Seg::Literal(_)) {
                downstream.push_str(&format!("/{{{name}}}"));
                expected.push((name, value));
            }
        }
        if let Some(rest) = &catch_all {
            upstream.push_str("/{rest}");
            request.push_str(&format!("/{rest}"));
            downstream.push_str("/{rest}");
            expected.push(("rest".to_string(), rest.clone()));
        }
        if upstream.is_empty() {
            upstream.push('/');
            request.push('/');
        }
        let mut query = String::from("a=1&b=2");
        if let Some(v) = &query_value {
            upstream.push_str("?k={q}");
            downstream.push_str("?got={q}");
            query = format!("a=1&k={v}&b=2");
            expected.push(("q".to_string(), v.clone()));
        }

        let (table, problems) = build(&[route("r", 0, &upstream, &downstream)]);
        prop_assert!(problems.is_empty(), "{:?}", problems);
        let m = table.find(None, &request, Some(&query), &Method::GET);
        prop_assert!(m.is_some(), "{} did not match {}", request, upstream);
        let m = m.unwrap();
        for (name, value) in &expected {
            prop_assert_eq!(m.capture(name), Some(value.as_str()), "{}", name);
        }

        let mut want = String::from("/out");
        for (name, value) in &expected {
            if name != "q" {
                want.push_str(&format!("/{value}"));
            }
        }
        match &query_value {
            Some(v) => want.push_str(&format!("?got={v}&{query}")),
            None => want.push_str(&format!("?{query}")),
        }
        prop_assert_eq!(m.downstream_path_and_query(), want);
    }
}

const HOSTS: [Option<&str>; 4] = [
    None,
    Some("a.example.com"),
    Some("a.example.com:8080"),
    Some("*.example.com"),
];
const TEMPLATES: [&str; 8] = [
    "/chat/{room}",
    "/chat/{r}/x",
    "/Chat/lobby",
    "/{everything}",
    "/chat?room={room}",
    "/a/v{x}",
    "/a/{y}",
    "/",
];

fn routes() -> impl Strategy<Value = Vec<Route>> {
    prop::collection::vec(
        (
            0..HOSTS.len(),
            0..TEMPLATES.len(),
            0..3usize,
            0..3i32,
            any::<bool>(),
        ),
        1..14,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (h, t, m, priority, cs))| {
                let mut r = route(&format!("r{i}"), i as u64 * 10, TEMPLATES[t], "/d")
                    .with_priority(priority)
                    .with_methods(match m {
                        0 => &[],
                        1 => &[Method::GET],
                        _ => &[Method::POST],
                    });
                if let Some(host) = HOSTS[h] {
                    r = r.with_host(host);
                }
                if cs {
                    r = r.case_sensitive();
                }
                r
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// With distinct orders, the table, its problems and every match are the same whatever
    /// the order routes are listed in.
    #[test]
    fn compile_ignores_input_order(
        (listed, shuffled) in routes().prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
    ) {
        let (a, pa) = build(&listed);
        let (b, pb) = build(&shuffled);
        prop_assert_eq!(pa, pb);
        let ids = |t: &RouteTable| t.routes().iter().map(|r| r.route.id.0.clone()).collect::<Vec<_>>();
        prop_assert_eq!(ids(&a), ids(&b));
        let hosts = [None, Some("a.example.com"), Some("A.example.com:8080"), Some("b.example.com")];
        let targets = [
            ("/chat/1", None), ("/chat/lobby", None), ("/CHAT/LOBBY", None), ("/chat/1/x", None),
            ("/", None), ("/chat", Some("room=2")), ("/a/v1", None), ("/x/y", Some("q=1")),
        ];
        for host in hosts {
            for (path, query) in targets {
                for method in [Method::GET, Method::POST] {
                    let found = |t: &RouteTable| {
                        t.find(host, path, query, &method)
                            .map(|m| (m.route.route.id.0.clone(), m.downstream_path_and_query()))
                    };
                    prop_assert_eq!(found(&a), found(&b), "{:?} {} {:?} {}", host, path, query, method);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// A table compiled from a previous generation (any previous route set, sharing ids)
    /// has the same routes, problems and answers as one compiled from scratch.
    #[test]
    fn compile_from_previous_answers_like_compile_from_scratch(
        before in routes(),
        after in routes(),
    ) {
        let g = super::tests::Generations::new();
        let (previous, _) = g.compile(&before, &RouteTable::empty());
        let (reused, pr) = g.compile(&after, &previous);
        let (fresh, pf) = build(&after);
        prop_assert_eq!(pr, pf);
        let ids = |t: &RouteTable| t.routes().iter().map(|r| (r.route.id.0.clone(), r.route.order)).collect::<Vec<_>>();
        prop_assert_eq!(ids(&reused), ids(&fresh));
        let hosts = [None, Some("a.example.com"), Some("A.example.com:8080"), Some("b.example.com")];
        let targets = [
            ("/chat/1", None), ("/chat/lobby", None), ("/CHAT/LOBBY", None), ("/chat/1/x", None),
            ("/", None), ("/chat", Some("room=2")), ("/a/v1", None), ("/x/y", Some("q=1")),
        ];
        for host in hosts {
            for (path, query) in targets {
                for method in [Method::GET, Method::POST] {
                    let found = |t: &RouteTable| {
                        t.find(host, path, query, &method)
                            .map(|m| (m.route.route.id.0.clone(), m.downstream_path_and_query()))
                    };
                    prop_assert_eq!(found(&reused), found(&fresh), "{:?} {} {:?} {}", host, path, query, method);
                }
            }
        }
    }
}
