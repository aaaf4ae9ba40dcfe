//! Translation tests: watcher events drive real reflector stores; assertions are on the
//! routes handed to the table and the status computed for each WsRoute.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;

use super::*;
use crate::api::conditions::{accepted, programmed, resolved_refs, status as cstatus};
use crate::api::{HostAndPort, WsRoute, WsRouteSpec, WsRouteStatus};
use crate::model::{Endpoint, EndpointState, Route, RouteId};
use crate::model::{ProblemReason, RouteProblem};

/// Writers for one namespace-less (all namespaces) watch of each kind.
struct World {
    routes: Writer<GuardedRoute>,
    services: Writer<Service>,
    slices: Writer<EndpointSlice>,
    secrets: Writer<Secret>,
}

impl World {
    /// Stores that have seen an empty initial list of every kind.
    fn new() -> Self {
        let mut w = World {
            routes: Writer::default(),
            services: Writer::default(),
            slices: Writer::default(),
            secrets: Writer::default(),
        };
        w.secrets.apply_watcher_event(&Event::Init);
        w.secrets.apply_watcher_event(&Event::InitDone);
        w.routes.apply_watcher_event(&Event::Init);
        w.routes.apply_watcher_event(&Event::InitDone);
        w.services.apply_watcher_event(&Event::Init);
        w.services.apply_watcher_event(&Event::InitDone);
        w.slices.apply_watcher_event(&Event::Init);
        w.slices.apply_watcher_event(&Event::InitDone);
        w
    }

    fn stores(&self) -> Stores {
        Stores {
            routes: vec![self.routes.as_reader()],
            services: vec![self.services.as_reader()],
            slices: vec![self.slices.as_reader()],
            secrets: vec![self.secrets.as_reader()],
            default_certificate_secret: None,
        }
    }

    fn route(&mut self, r: WsRoute) -> &mut Self {
        self.routes.apply_watcher_event(&Event::Apply(guarded(r)));
        self
    }

    fn service(&mut self, s: Service) -> &mut Self {
        self.services.apply_watcher_event(&Event::Apply(s));
        self
    }

    fn secret(&mut self, mut s: Secret) -> &mut Self {
        strip_unusable(&mut s);
        self.secrets.apply_watcher_event(&Event::Apply(s));
        self
    }

    fn slice(&mut self, s: EndpointSlice) -> &mut Self {
        self.slices.apply_watcher_event(&Event::Apply(s));
        self
    }

    fn translate(&self) -> Translation {
        self.stores().translate()
    }

    fn endpoints(&self, id: &str) -> Vec<Endpoint> {
        self.translate()
            .routes
            .into_iter()
            .find(|r| r.id.0 == id)
            .map(|r| r.endpoints)
            .unwrap_or_else(|| panic!("route {id} is not in the table"))
    }
}

fn guarded(r: WsRoute) -> GuardedRoute {
    kube::core::DeserializeGuard(Ok(r))
}

fn meta(ns: &str, name: &str, created: i64) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        uid: Some(format!("uid-{ns}-{name}")),
        generation: Some(1),
        creation_timestamp: Some(Time(Timestamp::from_second(created).expect("valid time"))),
        ..ObjectMeta::default()
    }
}

fn spec(path: &str) -> WsRouteSpec {
    WsRouteSpec {
        upstream_path_template: path.into(),
        upstream_host: None,
        upstream_http_method: Vec::new(),
        route_is_case_sensitive: None,
        priority: None,
        downstream_path_template: "/{everything}".into(),
        downstream_scheme: None,
        service_name: None,
        service_port: None,
        downstream_host_and_ports: Vec::new(),
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

fn service_route(ns: &str, name: &str, svc: &str, port: IntOrString) -> WsRoute {
    let mut s = spec("/chat/{everything}");
    s.service_name = Some(svc.into());
    s.service_port = Some(port);
    WsRoute {
        metadata: meta(ns, name, 1_000),
        spec: s,
        status: None,
    }
}

fn service(ns: &str, name: &str, ports: &[(Option<&str>, i32)]) -> Service {
    Service {
        metadata: meta(ns, name, 1_000),
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: n.map(str::to_string),
                        port: *p,
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[derive(Clone, Copy)]
enum Pod {
    Ready,
    Terminating,
    NotReady,
}

fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    address_type: &str,
    ports: &[(Option<&str>, i32)],
    pods: &[(&str, Pod)],
) -> EndpointSlice {
    let mut m = meta(ns, name, 1_000);
    m.labels = Some(BTreeMap::from([(
        SERVICE_NAME_LABEL.to_string(),
        svc.to_string(),
    )]));
    EndpointSlice {
        metadata: m,
        address_type: address_type.into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: n.map(str::to_string),
                    port: Some(*p),
                    protocol: Some("TCP".into()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
        endpoints: pods
            .iter()
            .map(|(ip, pod)| {
                let (ready, serving, terminating) = match pod {
                    Pod::Ready => (true, true, false),
                    Pod::Terminating => (false, true, true),
                    Pod::NotReady => (false, false, false),
                };
                SliceEndpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    ..SliceEndpoint::default()
                }
            })
            .collect(),
    }
}

fn ready(ip: &str, port: u16) -> Endpoint {
    Endpoint::new(ip, port)
}

fn terminating(ip: &str, port: u16) -> Endpoint {
    Endpoint::new(ip, port).with_state(EndpointState::Terminating)
}

fn report<'a>(t: &'a Translation, id: &str) -> &'a RouteReport {
    t.reports
        .iter()
        .find(|r| r.id.0 == id)
        .unwrap_or_else(|| panic!("no report for {id}"))
}

fn now() -> Time {
    Time(Timestamp::from_second(2_000).expect("valid time"))
}

fn status_of(
    t: &Translation,
    id: &str,
    problems: &[RouteProblem],
    generation: Option<u64>,
) -> WsRouteStatus {
    let r = report(t, id);
    let mine: Vec<&RouteProblem> = problems.iter().filter(|p| p.route == r.id).collect();
    compute_status(r, &mine, generation, now())
}

fn condition<'a>(s: &'a WsRouteStatus, type_: &str) -> (&'a str, &'a str) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {s:?}"));
    (c.status.as_str(), c.reason.as_str())
}

/// A chat Service with one named port `http` (80 → pod 8080) and its slice.
fn chat_world(pods: &[(&str, Pod)]) -> World {
    let mut w = World::new();
    w.service(service("apps", "chat", &[(Some("http"), 80)]))
        .slice(slice(
            "apps",
            "chat-a",
            "chat",
            "IPv4",
            &[(Some("http"), 8080)],
            pods,
        ))
        .route(service_route("apps", "chat", "chat", IntOrString::Int(80)));
    w
}

/// Adding ready pods to the slice adds them to the route; the ready count follows.
#[test]
fn scale_up_adds_ready_endpoints() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    assert_eq!(w.endpoints("apps/chat"), vec![ready("10.0.0.1", 8080)]);
    w.slice(slice(
        "apps",
        "chat-a",
        "chat",
        "IPv4",
        &[(Some("http"), 8080)],
        &[
            ("10.0.0.1", Pod::Ready),
            ("10.0.0.2", Pod::Ready),
            ("10.0.0.3", Pod::Ready),
        ],
    ));
    let t = w.translate();
    assert_eq!(
        w.endpoints("apps/chat"),
        vec![
            ready("10.0.0.1", 8080),
            ready("10.0.0.2", 8080),
            ready("10.0.0.3", 8080)
        ]
    );
    assert_eq!(report(&t, "apps/chat").ready_endpoints, 3);
    assert_eq!(status_of(&t, "apps/chat", &[], Some(1)).ready_endpoints, 3);
}

/// Pods removed from the slice leave the route.
#[test]
fn scale_down_removes_endpoints() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready), ("10.0.0.2", Pod::Ready)]);
    w.slice(slice(
        "apps",
        "chat-a",
        "chat",
        "IPv4",
        &[(Some("http"), 8080)],
        &[("10.0.0.2", Pod::Ready)],
    ));
    assert_eq!(w.endpoints("apps/chat"), vec![ready("10.0.0.2", 8080)]);
}

/// Serving-and-terminating endpoints stay (for their connections) marked Terminating;
/// not-ready, not-serving endpoints are left out and neither counts as ready.
#[test]
fn terminating_endpoints_kept_as_terminating_and_unready_excluded() {
    let w = chat_world(&[
        ("10.0.0.1", Pod::Ready),
        ("10.0.0.2", Pod::Terminating),
        ("10.0.0.3", Pod::NotReady),
    ]);
    assert_eq!(
        w.endpoints("apps/chat"),
        vec![ready("10.0.0.1", 8080), terminating("10.0.0.2", 8080)]
    );
    assert_eq!(report(&w.translate(), "apps/chat").ready_endpoints, 1);
}

/// A `servicePort` name resolves through the Service port name to each slice's pod port.
#[test]
fn named_service_port_resolves_to_pod_port_per_slice() {
    let mut w = World::new();
    w.service(service(
        "apps",
        "chat",
        &[(Some("metrics"), 9090), (Some("ws"), 80)],
    ))
    .slice(slice(
        "apps",
        "chat-a",
        "chat",
        "IPv4",
        &[(Some("metrics"), 9090), (Some("ws"), 8080)],
        &[("10.0.0.1", Pod::Ready)],
    ))
    // A slice of pods from a rollout that moved the target port.
    .slice(slice(
        "apps",
        "chat-b",
        "chat",
        "IPv4",
        &[(Some("ws"), 8081)],
        &[("10.0.0.2", Pod::Ready)],
    ))
    .route(service_route(
        "apps",
        "chat",
        "chat",
        IntOrString::String("ws".into()),
    ));
    assert_eq!(
        w.endpoints("apps/chat"),
        vec![ready("10.0.0.1", 8080), ready("10.0.0.2", 8081)]
    );
}

/// IPv4 and IPv6 slices of one Service are merged; an address listed twice counts once.
#[test]
fn ipv4_and_ipv6_slices_merge_without_duplicates() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    w.slice(slice(
        "apps",
        "chat-v6",
        "chat",
        "IPv6",
        &[(Some("http"), 8080)],
        &[("fd00::1", Pod::Ready)],
    ))
    // The same pod while the EndpointSlice controller moves it between slices.
    .slice(slice(
        "apps",
        "chat-c",
        "chat",
        "IPv4",
        &[(Some("http"), 8080)],
        &[("10.0.0.1", Pod::Ready)],
    ));
    let eps = w.endpoints("apps/chat");
    assert_eq!(eps, vec![ready("10.0.0.1", 8080), ready("fd00::1", 8080)]);
    assert_eq!(eps[1].authority(), "[fd00::1]:8080");
    assert_eq!(report(&w.translate(), "apps/chat").ready_endpoints, 2);
}

/// A route to a missing Service stays in the table with no endpoints (503, not 404) and
/// reports ResolvedRefs False / BackendNotFound; it resolves once the Service appears.
#[test]
fn missing_service_reports_backend_not_found_until_created() {
    let mut w = World::new();
    w.route(service_route("apps", "chat", "chat", IntOrString::Int(80)));
    let t = w.translate();
    assert_eq!(w.endpoints("apps/chat"), Vec::<Endpoint>::new());
    let s = status_of(&t, "apps/chat", &[], Some(1));
    assert_eq!(
        condition(&s, resolved_refs::TYPE),
        (cstatus::FALSE, resolved_refs::BACKEND_NOT_FOUND)
    );
    assert_eq!(
        condition(&s, accepted::TYPE),
        (cstatus::TRUE, accepted::ACCEPTED)
    );
    assert_eq!(
        condition(&s, programmed::TYPE),
        (cstatus::TRUE, programmed::PROGRAMMED)
    );

    w.service(service("apps", "chat", &[(Some("http"), 80)]))
        .slice(slice(
            "apps",
            "chat-a",
            "chat",
            "IPv4",
            &[(Some("http"), 8080)],
            &[("10.0.0.1", Pod::Ready)],
        ));
    let s = status_of(&w.translate(), "apps/chat", &[], Some(2));
    assert_eq!(
        condition(&s, resolved_refs::TYPE),
        (cstatus::TRUE, resolved_refs::RESOLVED_REFS)
    );
    assert_eq!(s.ready_endpoints, 1);
}

/// A Service in another namespace does not satisfy a route: references stay in-namespace.
#[test]
fn service_in_other_namespace_is_not_found() {
    let mut w = World::new();
    w.service(service("other", "chat", &[(Some("http"), 80)]))
        .route(service_route("apps", "chat", "chat", IntOrString::Int(80)));
    let t = w.translate();
    assert!(matches!(
        report(&t, "apps/chat").backend,
        BackendRef::Unresolved(Unresolved::ServiceNotFound { .. })
    ));
}

/// A port the Service does not have (by number or by name) is PortNotFound.
#[test]
fn unknown_service_port_reports_port_not_found() {
    for port in [IntOrString::Int(81), IntOrString::String("grpc".into())] {
        let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
        w.route(service_route("apps", "chat", "chat", port.clone()));
        let s = status_of(&w.translate(), "apps/chat", &[], Some(1));
        assert_eq!(
            condition(&s, resolved_refs::TYPE),
            (cstatus::FALSE, resolved_refs::PORT_NOT_FOUND),
            "{port:?}"
        );
        assert!(s.conditions[1].message.contains("has no port"), "{s:?}");
    }
}

/// A Service without EndpointSlices is BackendNotFound.
#[test]
fn service_without_slices_reports_backend_not_found() {
    let mut w = World::new();
    w.service(service("apps", "chat", &[(Some("http"), 80)]))
        .route(service_route("apps", "chat", "chat", IntOrString::Int(80)));
    let s = status_of(&w.translate(), "apps/chat", &[], Some(1));
    assert_eq!(
        condition(&s, resolved_refs::TYPE),
        (cstatus::FALSE, resolved_refs::BACKEND_NOT_FOUND)
    );
    assert!(s.conditions[1].message.contains("no EndpointSlices"));
}

/// Routes are ordered by creation time then name, so the table's conflict rule (oldest
/// wins) picks the route created first; the loser reports Accepted False / Conflicted and
/// Programmed False, the winner stays Accepted.
#[test]
fn conflicting_routes_order_by_creation_and_loser_reports_conflicted() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut newer = service_route("apps", "a-newer", "chat", IntOrString::Int(80));
    newer.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_500).expect("time")));
    w.route(newer);
    let t = w.translate();
    let order = |id: &str| {
        t.routes
            .iter()
            .find(|r| r.id.0 == id)
            .expect("in table")
            .order
    };
    assert!(order("apps/chat") < order("apps/a-newer"));

    // What the table says about the pair.
    let problems = vec![RouteProblem {
        route: RouteId("apps/a-newer".into()),
        reason: ProblemReason::Conflicted,
        field: "spec.upstreamPathTemplate".into(),
        message: "`/chat/{everything}` is already served by apps/chat".into(),
    }];
    let loser = status_of(&t, "apps/a-newer", &problems, Some(3));
    assert_eq!(
        condition(&loser, accepted::TYPE),
        (cstatus::FALSE, accepted::CONFLICTED)
    );
    assert_eq!(
        condition(&loser, programmed::TYPE),
        (cstatus::FALSE, programmed::INVALID)
    );
    assert!(loser.conditions[0].message.contains("apps/chat"));
    let winner = status_of(&t, "apps/chat", &problems, Some(3));
    assert_eq!(
        condition(&winner, accepted::TYPE),
        (cstatus::TRUE, accepted::ACCEPTED)
    );
}

/// A template the table cannot parse reports Accepted False / InvalidTemplate; a spec
/// template without a leading `/` is caught before the table, with the field named.
#[test]
fn invalid_templates_report_invalid_template() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let problems = vec![RouteProblem {
        route: RouteId("apps/chat".into()),
        reason: ProblemReason::InvalidTemplate,
        field: "spec.upstreamPathTemplate".into(),
        message: "unclosed `{`".into(),
    }];
    let s = status_of(&w.translate(), "apps/chat", &problems, Some(1));
    assert_eq!(
        condition(&s, accepted::TYPE),
        (cstatus::FALSE, accepted::INVALID_TEMPLATE)
    );

    let mut bad = service_route("apps", "bad", "chat", IntOrString::Int(80));
    bad.spec.upstream_path_template = "chat".into();
    w.route(bad);
    let t = w.translate();
    assert!(
        t.routes.iter().all(|r| r.id.0 != "apps/bad"),
        "invalid route left out"
    );
    let s = status_of(&t, "apps/bad", &[], Some(1));
    assert_eq!(
        condition(&s, accepted::TYPE),
        (cstatus::FALSE, accepted::INVALID_TEMPLATE)
    );
    assert!(
        s.conditions[0]
            .message
            .contains("spec.upstreamPathTemplate"),
        "{s:?}"
    );
    assert_eq!(
        condition(&s, programmed::TYPE),
        (cstatus::FALSE, programmed::INVALID)
    );
}

/// Other field errors report InvalidParameters naming the field.
#[test]
fn invalid_field_reports_invalid_parameters() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    r.spec.upstream_http_method = vec!["GE T".into()];
    w.route(r);
    let s = status_of(&w.translate(), "apps/chat", &[], Some(1));
    assert_eq!(
        condition(&s, accepted::TYPE),
        (cstatus::FALSE, accepted::INVALID_PARAMETERS)
    );
    assert!(
        s.conditions[0]
            .message
            .contains("spec.upstreamHttpMethod[0]"),
        "{s:?}"
    );
}

/// A malformed `upstreamHost` reports InvalidHost with the field path `spec.upstreamHost`
/// and the host parser's message, alone or beside another field's error; a template
/// error outranks it.
#[test]
fn invalid_upstream_host_reports_invalid_host() {
    for host in [
        "*..com",
        "*.",
        "a..b",
        "x..",
        "chat.example.com:0",
        "Bücher.de",
    ] {
        let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
        let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
        r.spec.upstream_host = Some(host.into());
        w.route(r);
        let t = w.translate();
        assert!(t.routes.is_empty(), "{host}");
        let s = status_of(&t, "apps/chat", &[], Some(1));
        assert_eq!(
            condition(&s, accepted::TYPE),
            (cstatus::FALSE, accepted::INVALID_HOST),
            "{host}"
        );
        let expected = format!(
            "spec.upstreamHost: {}",
            crate::model::HostPattern::parse(host).unwrap_err()
        );
        assert_eq!(s.conditions[0].message, expected, "{host}");
        assert_eq!(
            condition(&s, programmed::TYPE),
            (cstatus::FALSE, programmed::INVALID)
        );
    }

    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    r.spec.upstream_host = Some("*..com".into());
    r.spec.upstream_http_method = vec!["GE T".into()];
    w.route(r);
    let s = status_of(&w.translate(), "apps/chat", &[], Some(1));
    assert_eq!(
        condition(&s, accepted::TYPE),
        (cstatus::FALSE, accepted::INVALID_HOST)
    );
    assert!(
        s.conditions[0]
            .message
            .contains("spec.upstreamHttpMethod[0]"),
        "{s:?}"
    );

    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    r.spec.upstream_host = Some("*..com".into());
    r.spec.upstream_path_template = "chat".into();
    w.route(r);
    let s = status_of(&w.translate(), "apps/chat", &[], Some(1));
    assert_eq!(
        condition(&s, accepted::TYPE),
        (cstatus::FALSE, accepted::INVALID_TEMPLATE)
    );
}

/// A deleted WsRoute leaves the table and has no report.
#[test]
fn deleted_route_leaves_table() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    w.routes.apply_watcher_event(&Event::Delete(guarded(r)));
    let t = w.translate();
    assert!(t.routes.is_empty());
    assert!(t.reports.is_empty());
}

/// A relist (watch restart) replaces the store whole: objects missing from it are gone.
#[test]
fn relist_drops_objects_missing_from_the_new_list() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut other = service_route("apps", "other", "chat", IntOrString::Int(80));
    other.spec.upstream_path_template = "/other".into();
    w.route(other.clone());
    assert_eq!(w.translate().routes.len(), 2);
    w.routes.apply_watcher_event(&Event::Init);
    w.routes
        .apply_watcher_event(&Event::InitApply(guarded(other)));
    // Until InitDone the old contents still serve.
    assert_eq!(w.translate().routes.len(), 2);
    w.routes.apply_watcher_event(&Event::InitDone);
    let ids: Vec<_> = w.translate().routes.into_iter().map(|r| r.id.0).collect();
    assert_eq!(ids, ["apps/other"]);
}

/// Static backends in a cluster route pass through as ready endpoints.
#[test]
fn static_backends_resolve_without_service() {
    let mut w = World::new();
    let mut s = spec("/s");
    s.downstream_host_and_ports = vec![HostAndPort {
        host: "10.1.1.1".into(),
        port: 5001,
    }];
    w.route(WsRoute {
        metadata: meta("apps", "static", 1_000),
        spec: s,
        status: None,
    });
    let t = w.translate();
    let route: &Route = &t.routes[0];
    assert_eq!(route.endpoints, vec![ready("10.1.1.1", 5001)]);
    let st = status_of(&t, "apps/static", &[], Some(1));
    assert_eq!(
        condition(&st, resolved_refs::TYPE),
        (cstatus::TRUE, resolved_refs::RESOLVED_REFS)
    );
    assert_eq!(st.ready_endpoints, 1);
}

/// Before the first publish an accepted route is Programmed False / Pending.
#[test]
fn accepted_route_is_pending_before_first_publish() {
    let w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let s = status_of(&w.translate(), "apps/chat", &[], None);
    assert_eq!(
        condition(&s, programmed::TYPE),
        (cstatus::FALSE, programmed::PENDING)
    );
}

/// Every condition carries the object's generation; unchanged conditions keep their
/// lastTransitionTime, changed ones take `now`; comparing ignores timestamps.
#[test]
fn unchanged_conditions_keep_transition_time_and_compare_equal() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    r.metadata.generation = Some(7);
    w.route(r.clone());
    let first = status_of(&w.translate(), "apps/chat", &[], Some(1));
    assert!(first
        .conditions
        .iter()
        .all(|c| c.observed_generation == Some(7)));
    assert_eq!(first.observed_generation, Some(7));

    // The object now carries that status, with an older timestamp.
    let mut old = first.clone();
    let then = Time(Timestamp::from_second(1_500).expect("time"));
    for c in &mut old.conditions {
        c.last_transition_time = then.clone();
    }
    r.status = Some(old.clone());
    w.route(r.clone());
    let again = status_of(&w.translate(), "apps/chat", &[], Some(2));
    assert!(same_ignoring_timestamps(&again, &old));
    assert!(again
        .conditions
        .iter()
        .all(|c| c.last_transition_time == then));

    // The Service disappears: only ResolvedRefs transitions.
    w.services
        .apply_watcher_event(&Event::Delete(service("apps", "chat", &[])));
    let changed = status_of(&w.translate(), "apps/chat", &[], Some(3));
    assert!(!same_ignoring_timestamps(&changed, &old));
    let times: Vec<_> = changed
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.last_transition_time.clone()))
        .collect();
    assert_eq!(
        times,
        vec![
            (accepted::TYPE, then.clone()),
            (resolved_refs::TYPE, now()),
            (programmed::TYPE, then.clone()),
        ]
    );
}

/// The writer keeps the object's lastTransitionTime for conditions that say the same thing,
/// so a rebuild with a fresh `now` does not count as a change.
#[test]
fn carried_transition_times_make_rebuilds_equal() {
    let w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let t = w.translate();
    let on_object = status_of(&t, "apps/chat", &[], Some(1));
    let r = report(&t, "apps/chat");
    let later = compute_status(
        r,
        &[],
        Some(2),
        Time(Timestamp::from_second(9_000).expect("time")),
    );
    assert_ne!(later, on_object);
    assert_eq!(carry_transition_times(&later, &on_object), on_object);
}

/// A WsRoute whose spec does not deserialize (a number where a string belongs) is left out
/// and listed as invalid; the other routes translate as before.
#[test]
fn undeserializable_route_is_listed_invalid_and_others_stay() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let bad: GuardedRoute = serde_json::from_value(serde_json::json!({
        "apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute",
        "metadata": {"namespace": "apps", "name": "bad"},
        "spec": {"upstreamPathTemplate": 5, "downstreamPathTemplate": "/"}
    }))
    .expect("the guard itself deserializes");
    assert!(bad.0.is_err());
    w.routes.apply_watcher_event(&Event::Apply(bad));
    let t = w.translate();
    let ids: Vec<_> = t.routes.iter().map(|r| r.id.0.as_str()).collect();
    assert_eq!(ids, ["apps/chat"]);
    assert!(t.reports.iter().all(|r| r.name != "bad"));
    let invalid = w.stores().invalid_routes();
    assert_eq!(invalid.len(), 1);
    assert_eq!(
        (invalid[0].namespace.as_str(), invalid[0].name.as_str()),
        ("apps", "bad")
    );
    assert!(
        invalid[0].error.contains("Expected a string"),
        "{invalid:?}"
    );
    assert!(w.stores().route("apps", "bad").is_none());
    assert!(w.stores().route("apps", "chat").is_some());
}

/// A self-signed certificate for `name` as (cert PEM, key PEM).
fn pem_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

fn secret(ns: &str, name: &str, type_: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: meta(ns, name, 1_000),
        type_: Some(type_.into()),
        data: Some(
            data.iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        k8s_openapi::ByteString(v.as_bytes().to_vec()),
                    )
                })
                .collect(),
        ),
        ..Secret::default()
    }
}

fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> Secret {
    secret(
        ns,
        name,
        TLS_SECRET_TYPE,
        &[(TLS_CERT_KEY, cert), (TLS_KEY_KEY, key)],
    )
}

/// The chat route (Service backend) with `tls.secretName: chat-tls`.
fn chat_world_with_tls(edit: impl FnOnce(&mut WsRouteSpec)) -> World {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    r.spec.upstream_host = Some("chat.example.com".into());
    r.spec.tls = Some(crate::api::TlsSpec {
        secret_name: Some("chat-tls".into()),
        ..Default::default()
    });
    edit(&mut r.spec);
    w.route(r);
    w
}

fn route_of(t: &Translation, id: &str) -> Route {
    t.routes
        .iter()
        .find(|r| r.id.0 == id)
        .cloned()
        .unwrap_or_else(|| panic!("route {id} is not in the table"))
}

/// A `kubernetes.io/tls` Secret named by `tls.secretName` becomes the route's certificate.
#[test]
fn tls_secret_resolves_into_the_route_certificate() {
    let (cert, key) = pem_pair("chat.example.com");
    let mut w = chat_world_with_tls(|_| {});
    w.secret(tls_secret("apps", "chat-tls", &cert, &key));
    let t = w.translate();
    let route = route_of(&t, "apps/chat");
    let c = route.certificate.expect("certificate resolved");
    assert_eq!(c.source(), "secret apps/chat-tls");
    let st = status_of(&t, "apps/chat", &[], Some(1));
    assert_eq!(
        condition(&st, resolved_refs::TYPE),
        (cstatus::TRUE, resolved_refs::RESOLVED_REFS)
    );
}

/// A missing, mistyped or malformed certificate Secret: ResolvedRefs False with
/// InvalidCertificateRef, the route keeps serving without it, and no message quotes the
/// Secret's contents.
#[test]
fn missing_or_malformed_tls_secret_reports_invalid_certificate_ref_and_keeps_the_route() {
    let (cert, key) = pem_pair("chat.example.com");
    let (_, other_key) = pem_pair("other.example.com");
    let garbage_key =
        "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n-----END PRIVATE KEY-----\n";
    let cases: Vec<(&str, Option<Secret>, &str)> = vec![
        ("missing", None, "not found"),
        (
            "opaque",
            Some(secret(
                "apps",
                "chat-tls",
                "Opaque",
                &[(TLS_CERT_KEY, &cert)],
            )),
            "not `kubernetes.io/tls`",
        ),
        (
            "no key",
            Some(secret(
                "apps",
                "chat-tls",
                TLS_SECRET_TYPE,
                &[(TLS_CERT_KEY, &cert)],
            )),
            "has no `tls.key`",
        ),
        (
            "wrong key",
            Some(tls_secret("apps", "chat-tls", &cert, &other_key)),
            "does not belong",
        ),
        (
            "garbage key",
            Some(tls_secret("apps", "chat-tls", &cert, garbage_key)),
            "private key",
        ),
    ];
    for (case, s, expect) in cases {
        let mut w = chat_world_with_tls(|_| {});
        if let Some(s) = s {
            w.secret(s);
        }
        let t = w.translate();
        let route = route_of(&t, "apps/chat");
        assert!(route.certificate.is_none(), "{case}");
        assert_eq!(
            route.endpoints.len(),
            1,
            "{case}: the route keeps its backends"
        );
        let st = status_of(&t, "apps/chat", &[], Some(1));
        assert_eq!(
            condition(&st, resolved_refs::TYPE),
            (cstatus::FALSE, resolved_refs::INVALID_CERTIFICATE_REF),
            "{case}"
        );
        assert_eq!(
            condition(&st, accepted::TYPE),
            (cstatus::TRUE, accepted::ACCEPTED),
            "{case}"
        );
        let message = &st
            .conditions
            .iter()
            .find(|c| c.type_ == resolved_refs::TYPE)
            .unwrap()
            .message;
        assert!(message.contains("apps/chat-tls"), "{case}: {message}");
        assert!(message.contains(expect), "{case}: {message}");
        for secret_text in [&key, &other_key, "c2VjcmV0"] {
            assert!(
                !message.contains(secret_text.trim()),
                "{case}: leaks contents"
            );
        }
    }
}

/// Secrets that are neither TLS nor carry `ca.crt` keep no data in the store.
#[test]
fn unrelated_secret_data_is_not_kept() {
    let mut s = secret("apps", "db", "Opaque", &[("password", "hunter2")]);
    strip_unusable(&mut s);
    assert!(s.data.is_none());
    let mut ca = secret("apps", "ca", "Opaque", &[(CA_KEY, "pem")]);
    strip_unusable(&mut ca);
    assert!(ca.data.is_some());
}

/// `caSecretName` resolves to the route's CA bundle; a `wss` Service backend is verified as
/// `<service>.<namespace>.svc`; the dangerous flag shows as InsecureBackendTLS.
#[test]
fn backend_ca_secret_server_name_and_insecure_condition() {
    let (ca_pem, _) = pem_pair("ca.example.com");
    let (cert, key) = pem_pair("chat.example.com");
    let mut w = chat_world_with_tls(|s| {
        s.downstream_scheme = Some(crate::api::DownstreamScheme::Wss);
        s.backend_tls = Some(crate::api::BackendTlsSpec {
            ca_secret_name: Some("chat-ca".into()),
            ..Default::default()
        });
        s.dangerous_accept_any_server_certificate_validator = Some(true);
    });
    w.secret(tls_secret("apps", "chat-tls", &cert, &key))
        .secret(secret("apps", "chat-ca", "Opaque", &[(CA_KEY, &ca_pem)]));
    let t = w.translate();
    let route = route_of(&t, "apps/chat");
    assert!(route.backend_tls.ca.is_some());
    assert_eq!(
        route.backend_tls.server_name.as_deref(),
        Some("chat.apps.svc")
    );
    let st = status_of(&t, "apps/chat", &[], Some(1));
    assert_eq!(
        condition(&st, crate::api::conditions::insecure_backend_tls::TYPE),
        (
            cstatus::TRUE,
            crate::api::conditions::insecure_backend_tls::DANGEROUS_ACCEPT_ANY
        )
    );
    assert_eq!(
        condition(&st, resolved_refs::TYPE),
        (cstatus::TRUE, resolved_refs::RESOLVED_REFS)
    );
}

/// `--default-cert-secret` resolves through the same stores.
#[test]
fn default_certificate_secret_resolves() {
    let (cert, key) = pem_pair("default.example.com");
    let mut w = World::new();
    w.secret(tls_secret("wsgate", "default-tls", &cert, &key));
    let mut stores = w.stores();
    stores.default_certificate_secret = Some(("wsgate".into(), "default-tls".into()));
    let t = stores.translate();
    assert_eq!(
        t.default_certificate.map(|c| c.source().to_string()),
        Some("secret wsgate/default-tls".into())
    );
    stores.default_certificate_secret = Some(("wsgate".into(), "missing".into()));
    let t = stores.translate();
    assert!(t.default_certificate.is_none());
    assert!(t.default_certificate_problem.unwrap().contains("not found"));
}

/// A translation that reuses the previous one's work per WsRoute equals a fresh translation
/// after every kind of change: slice scaled, Service port renamed, spec edited (even
/// without a generation bump), route added and deleted, a Secret-backed route's Secret.
#[test]
fn cached_translation_equals_fresh_translation_after_each_change() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut other = service_route("apps", "other", "chat", IntOrString::Int(80));
    other.metadata.creation_timestamp = Some(Time(Timestamp::from_second(900).expect("time")));
    other.spec.upstream_path_template = "/other/{everything}".into();
    w.route(other.clone());
    let mut cache = TranslateCache::default();
    let mut check = |w: &World, what: &str| {
        let cached = w.stores().translate_cached(&mut cache);
        assert_eq!(cached, w.translate(), "after {what}");
        cached
    };
    check(&w, "first translation");
    let t = check(&w, "nothing changed");
    assert_eq!(w.endpoints("apps/chat"), vec![ready("10.0.0.1", 8080)]);
    assert_eq!(report(&t, "apps/other").ready_endpoints, 1);

    w.slice(slice(
        "apps",
        "chat-a",
        "chat",
        "IPv4",
        &[(Some("http"), 8080)],
        &[("10.0.0.1", Pod::Ready), ("10.0.0.2", Pod::Terminating)],
    ));
    let t = check(&w, "slice change");
    assert_eq!(route_of(&t, "apps/chat").endpoints.len(), 2);

    w.service(service("apps", "chat", &[(Some("web"), 80)]));
    let t = check(&w, "Service port renamed");
    assert!(matches!(
        report(&t, "apps/chat").backend,
        BackendRef::Service
    ));
    assert!(route_of(&t, "apps/chat").endpoints.is_empty());

    other.spec.priority = Some(5);
    w.route(other.clone());
    let t = check(&w, "spec edited without a generation bump");
    assert_eq!(route_of(&t, "apps/other").priority, 5);

    let mut late = service_route("apps", "late", "chat", IntOrString::Int(80));
    late.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1).expect("time")));
    late.spec.upstream_path_template = "/late".into();
    w.route(late.clone());
    let t = check(&w, "an older route added (orders shift)");
    assert_eq!(route_of(&t, "apps/late").order, 0);
    w.routes.apply_watcher_event(&Event::Delete(guarded(late)));
    check(&w, "route deleted");

    let (cert, key) = pem_pair("chat.example.com");
    let mut w = chat_world_with_tls(|_| {});
    w.secret(tls_secret("apps", "chat-tls", &cert, &key));
    let mut cache = TranslateCache::default();
    let first = w.stores().translate_cached(&mut cache);
    assert!(route_of(&first, "apps/chat").certificate.is_some());
    w.secrets
        .apply_watcher_event(&Event::Delete(tls_secret("apps", "chat-tls", &cert, &key)));
    let t = w.stores().translate_cached(&mut cache);
    assert_eq!(t, w.translate(), "after the Secret was deleted");
    assert!(route_of(&t, "apps/chat").certificate.is_none());
}

/// The schedule: a change after a quiet period is due `coalesce` after it; one within the
/// minimum interval of the last rebuild waits for that interval; changes while a rebuild is
/// due join it.
#[test]
fn rebuild_schedule_coalesces_isolated_changes_and_rate_limits_bursts() {
    use std::time::Duration;
    use tokio::time::Instant;
    let ms = Duration::from_millis;
    let t0 = Instant::now();
    let mut s = RebuildSchedule::new(ms(5), ms(75));
    assert_eq!(s.due(), None);
    s.changed(t0);
    assert_eq!(s.due(), Some(t0 + ms(5)));
    s.changed(t0 + ms(3));
    assert_eq!(s.due(), Some(t0 + ms(5)), "a change joins the due rebuild");
    s.rebuilt(t0 + ms(5));
    s.changed(t0 + ms(10));
    assert_eq!(
        s.due(),
        Some(t0 + ms(80)),
        "within the interval: waits for it"
    );
    s.rebuilt(t0 + ms(80));
    s.changed(t0 + ms(500));
    assert_eq!(
        s.due(),
        Some(t0 + ms(505)),
        "after a quiet period: coalesce only"
    );
}

/// Driven with the real loop (paused clock): after a quiet second, one EndpointSlice change
/// is published `coalesce` (5 ms) later, not after the 75 ms window; a burst of 50 changes
/// 2 ms apart costs a handful of rebuilds, the last of which sees the last change.
#[tokio::test(start_paused = true)]
async fn isolated_change_publishes_after_coalesce_and_a_burst_rebuilds_a_few_times() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::time::Instant;

    let pods = |n: usize| -> Vec<(String, Pod)> {
        (1..=n)
            .map(|i| (format!("10.0.0.{i}"), Pod::Ready))
            .collect()
    };
    let chat_slice = |n: usize| {
        let p = pods(n);
        let p: Vec<(&str, Pod)> = p.iter().map(|(ip, pod)| (ip.as_str(), *pod)).collect();
        slice(
            "apps",
            "chat-a",
            "chat",
            "IPv4",
            &[(Some("http"), 8080)],
            &p,
        )
    };
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    // (when, endpoints of apps/chat) per publish.
    let published: Arc<Mutex<Vec<(Instant, usize)>>> = Arc::default();
    let record = published.clone();
    let publisher = move |routes: &[Route]| {
        let mut p = record.lock().expect("lock");
        let endpoints = routes
            .iter()
            .find(|r| r.id.0 == "apps/chat")
            .map_or(0, |r| r.endpoints.len());
        p.push((Instant::now(), endpoints));
        crate::table::Published {
            generation: p.len() as u64,
            problems: Vec::new(),
        }
    };
    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let (statuses, _statuses_rx) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    let (change_tx, change_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let changes = futures_util::stream::unfold(change_rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    });
    let metrics = Arc::new(KubeMetrics::default());
    let coalesce = Duration::from_millis(5);
    let controller = tokio::spawn(
        Reconcile {
            stores: w.stores(),
            schedule: RebuildSchedule::new(coalesce, Duration::from_millis(75)),
            publisher: Arc::new(publisher),
            metrics: metrics.clone(),
            readiness: ready_tx,
            statuses,
        }
        .run(changes, std::future::pending()),
    );
    let deadline = Duration::from_secs(10);
    tokio::time::timeout(deadline, ready_rx.wait_for(|r| *r))
        .await
        .expect("ready in time")
        .expect("sender alive");
    let count = || published.lock().expect("lock").len();
    let last = || *published.lock().expect("lock").last().expect("a publish");
    assert_eq!(count(), 1);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let changed_at = Instant::now();
    w.slice(chat_slice(2));
    change_tx.send(()).expect("loop alive");
    tokio::time::timeout(deadline, async {
        while count() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("published in time");
    let (at, endpoints) = last();
    assert_eq!(endpoints, 2);
    assert_eq!(
        at - changed_at,
        coalesce,
        "isolated change waits only `coalesce`"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = count();
    let mut last_change = Instant::now();
    for n in 3..53 {
        w.slice(chat_slice(n));
        change_tx.send(()).expect("loop alive");
        last_change = Instant::now();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rebuilds = count() - before;
    assert!(
        (2..=3).contains(&rebuilds),
        "{rebuilds} rebuilds for 50 changes over 100 ms (at most one per 75 ms)"
    );
    let (at, endpoints) = last();
    assert_eq!(endpoints, 52, "the last rebuild sees the last change");
    assert!(at >= last_change);
    assert_eq!(metrics.rebuilds.get(), count() as u64);
    controller.abort();
}

/// A rebuild compiles the route set once, through the real `Publisher`, and the statuses
/// it computes carry exactly the problems of the table it swapped in.
#[test]
fn rebuild_compiles_once_and_reports_the_published_tables_problems() {
    use crate::telemetry::Metrics;
    use std::sync::Arc;

    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut newer = service_route("apps", "a-newer", "chat", IntOrString::Int(80));
    newer.metadata.creation_timestamp = Some(Time(Timestamp::from_second(1_500).expect("time")));
    w.route(newer);
    let metrics = Arc::new(Metrics::new());
    let publisher = crate::table::Publisher::new(metrics.clone());

    let compiles = crate::table::compiles_on_this_thread();
    let desired = super::controller::rebuild(
        &w.stores(),
        &mut Default::default(),
        &publisher,
        &KubeMetrics::default(),
        &mut Default::default(),
    );
    assert_eq!(crate::table::compiles_on_this_thread() - compiles, 1);

    let table = publisher.current();
    assert_eq!(table.generation(), 1);
    let served: Vec<&str> = table
        .routes()
        .iter()
        .map(|r| r.route.id.0.as_str())
        .collect();
    assert_eq!(served, ["apps/chat"]);
    assert!(metrics.encode().contains("wsgate_route_problems 1"));
    let loser = desired
        .iter()
        .find(|d| d.name == "a-newer")
        .expect("status of the loser");
    let accepted = &loser.status.conditions[0];
    assert_eq!(accepted.reason, accepted::CONFLICTED);
    // The message is the table's own problem, not one from another compile.
    let again = publisher.prepare(&w.translate().routes);
    let problem = &again.problems()[0];
    assert_eq!(
        accepted.message,
        format!("{}: {}", problem.field, problem.message)
    );
}

mod auth;
/// A WsRoute's bad `allowedOrigins` or `securityOptions` entry leaves it out with
/// InvalidParameters naming the field and index; good ones reach the model.
#[test]
fn access_fields_reach_the_status_and_the_model() {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    r.spec.allowed_origins = Some(vec!["https://app.example.com".into(), "app".into()]);
    w.route(r);
    let t = w.translate();
    assert!(t.routes.is_empty());
    let s = status_of(&t, "apps/chat", &[], Some(1));
    assert_eq!(
        condition(&s, accepted::TYPE),
        (cstatus::FALSE, accepted::INVALID_PARAMETERS)
    );
    assert!(
        s.conditions[0].message.contains("spec.allowedOrigins[1]"),
        "{s:?}"
    );

    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    r.spec.allowed_origins = Some(vec!["https://*.example.com".into()]);
    r.spec.security_options = Some(crate::api::SecurityOptions {
        ip_blocked_list: vec!["10.9.0.0/16".into()],
        ..Default::default()
    });
    w.route(r);
    let t = w.translate();
    let route = &t.routes[0];
    assert!(route.allowed_origins.as_ref().unwrap()[0].matches(b"https://a.example.com"));
    assert!(!route
        .ip_rules
        .as_ref()
        .unwrap()
        .allows("10.9.1.1".parse().unwrap()));
}
