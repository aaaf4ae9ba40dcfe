//! The kube source against an in-process fake API server, through the real kube client:
//! routes appear, endpoint changes reach the table, status is written once per change,
//! and an API outage leaves the last table serving.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use wsgate::model::{Endpoint, Route};
use wsgate::source::kube::{run, KubeConfig, KubeMetrics, PatchOutcome, Resource, RoutePublisher};

use support::fake_apiserver::FakeApiServer;

const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`; relists behind backoff need a longer deadline
/// than the support default.
async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    support::eventually_async(what, DEADLINE, check).await
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "apps", "name": "chat"},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(ips: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "apps", "name": "chat-a",
            "labels": {"kubernetes.io/service-name": "chat"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>()})
}

fn route() -> Value {
    json!({"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute",
        "metadata": {"namespace": "apps", "name": "chat"},
        "spec": {"upstreamPathTemplate": "/chat/{everything}", "downstreamPathTemplate": "/{everything}",
                 "serviceName": "chat", "servicePort": 80}})
}

/// The last published route set and how many publishes there were.
type Published = watch::Receiver<(u64, Vec<Route>)>;

/// Records every published route set; generation = publish count.
fn recording_publisher() -> (Arc<dyn RoutePublisher>, Published) {
    let (tx, rx) = watch::channel((0u64, Vec::new()));
    let publish = move |routes: &[Route]| {
        let mut generation = 0;
        tx.send_modify(|(g, r)| {
            *g += 1;
            generation = *g;
            *r = routes.to_vec();
        });
        wsgate::table::Published {
            generation,
            problems: Vec::new(),
        }
    };
    (Arc::new(publish), rx)
}

fn endpoints(rx: &Published) -> Option<Vec<Endpoint>> {
    rx.borrow()
        .1
        .iter()
        .find(|r| r.id.0 == "apps/chat")
        .map(|r| r.endpoints.clone())
}

fn condition(route: &Value, type_: &str) -> Option<(String, String)> {
    route["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").into(),
                c["reason"].as_str().unwrap_or("").into(),
            )
        })
}

/// Routes appear after the first sync; scaling changes the table and the status once per
/// change (endpoint churn that changes nothing visible writes nothing); an outage keeps
/// the last table; after it, changes flow again; deleting the route empties the table.
#[tokio::test]
async fn controller_publishes_routes_writes_status_once_per_change_and_survives_outage() {
    let fake = FakeApiServer::start().await;
    fake.apply(service()).await;
    fake.apply(slice(&["10.0.0.1"])).await;
    fake.apply(route()).await;

    let config = kube::Config::new(fake.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let mut cfg = KubeConfig::new("wsgate-0", "wsgate-system");
    cfg.debounce = Duration::from_millis(20);
    if let Some(lease) = cfg.lease.as_mut() {
        lease.renew_every = Duration::from_millis(200);
        lease.duration = Duration::from_secs(2);
    }
    let (publisher, published) = recording_publisher();
    let metrics = Arc::new(KubeMetrics::default());
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(
        cfg,
        client,
        publisher,
        metrics.clone(),
        ready_tx,
        async {
            let _ = stop_rx.await;
        },
    ));

    tokio::time::timeout(DEADLINE, ready_rx.wait_for(|r| *r))
        .await
        .expect("ready in time")
        .expect("readiness sender alive");
    assert_eq!(
        endpoints(&published),
        Some(vec![Endpoint::new("10.0.0.1", 8080)])
    );

    // The Lease holder writes status: accepted, resolved, programmed, one ready endpoint.
    let status = eventually("first status", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (condition(&r, "Programmed")? == ("True".into(), "Programmed".into())).then_some(r)
    })
    .await;
    assert_eq!(status["status"]["readyEndpoints"], 1);
    assert_eq!(
        condition(&status, "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    assert_eq!(
        condition(&status, "ResolvedRefs"),
        Some(("True".into(), "ResolvedRefs".into()))
    );
    assert_eq!(status["status"]["observedGeneration"], 1);
    let lease = fake
        .get("Lease", "wsgate-system", "wsgate-status")
        .await
        .expect("lease created");
    assert_eq!(lease["spec"]["holderIdentity"], "wsgate-0");
    assert_eq!(fake.status_patches("WsRoute", "apps", "chat").await, 1);
    assert!(
        !fake.events().await.is_empty(),
        "transitions recorded as Events"
    );

    // Churn that changes nothing a route shows: a new publish, no status write.
    let before = published.borrow().0;
    let mut churn = slice(&["10.0.0.1"]);
    churn["endpoints"]
        .as_array_mut()
        .expect("endpoints")
        .push(json!({"addresses": ["10.0.0.9"], "conditions": {"ready": false, "serving": false}}));
    fake.apply(churn).await;
    eventually("publish after churn", || async {
        (published.borrow().0 > before).then_some(())
    })
    .await;

    // Scale up: the table and the status follow, with exactly one more status write.
    fake.apply(slice(&["10.0.0.1", "10.0.0.2"])).await;
    eventually("two endpoints", || async {
        (endpoints(&published)?.len() == 2).then_some(())
    })
    .await;
    eventually("status with two ready", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (r["status"]["readyEndpoints"] == 2).then_some(())
    })
    .await;
    // The fake stores the patch before the writer sees the response and counts it.
    eventually("the second write counted", || async {
        (metrics.status_patches(PatchOutcome::Written) >= 2).then_some(())
    })
    .await;
    assert_eq!(fake.status_patches("WsRoute", "apps", "chat").await, 2);
    assert_eq!(metrics.status_patches(PatchOutcome::Written), 2);

    // Outage: every call fails, watches drop; the last table stays published.
    let generation = published.borrow().0;
    fake.set_down(true);
    eventually("watch errors counted", || async {
        (metrics.watch_errors(Resource::WsRoute) > 0).then_some(())
    })
    .await;
    assert_eq!(
        published.borrow().0,
        generation,
        "no publish while the API is away"
    );
    assert_eq!(endpoints(&published).map(|e| e.len()), Some(2));

    // Back: a change made after the outage reaches the table.
    fake.set_down(false);
    fake.apply(slice(&["10.0.0.3"])).await;
    eventually("endpoints after outage", || async {
        (endpoints(&published)? == vec![Endpoint::new("10.0.0.3", 8080)]).then_some(())
    })
    .await;

    // Deleting the route removes it from the table.
    fake.delete("WsRoute", "apps", "chat").await;
    eventually("route removed", || async {
        endpoints(&published).is_none().then_some(())
    })
    .await;

    stop_tx.send(()).expect("controller running");
    tokio::time::timeout(DEADLINE, controller)
        .await
        .expect("controller stops in time")
        .expect("controller task")
        .expect("controller result");
    // Shutdown releases the Lease for the next replica.
    let lease = fake
        .get("Lease", "wsgate-system", "wsgate-status")
        .await
        .expect("lease");
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

/// A route `apps/{name}` on `path` with static backends (no Service needed).
fn static_route(name: &str, path: &str) -> Value {
    json!({"apiVersion": "wsgate.io/v1alpha1", "kind": "WsRoute",
        "metadata": {"namespace": "apps", "name": name},
        "spec": {"upstreamPathTemplate": path, "downstreamPathTemplate": "/",
                 "downstreamHostAndPorts": [{"host": "10.9.9.9", "port": 9000}]}})
}

fn route_ids(rx: &Published) -> Vec<String> {
    rx.borrow().1.iter().map(|r| r.id.0.clone()).collect()
}

/// Starts the controller without a status writer against `fake`; returns once ready.
async fn start_reader(
    fake: &FakeApiServer,
) -> (
    Published,
    Arc<KubeMetrics>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), wsgate::source::kube::Error>>,
) {
    let config = kube::Config::new(fake.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let mut cfg = KubeConfig::new("wsgate-0", "wsgate-system");
    cfg.debounce = Duration::from_millis(20);
    cfg.lease = None;
    let (publisher, published) = recording_publisher();
    let metrics = Arc::new(KubeMetrics::default());
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(run(
        cfg,
        client,
        publisher,
        metrics.clone(),
        ready_tx,
        async {
            let _ = stop_rx.await;
        },
    ));
    tokio::time::timeout(DEADLINE, ready_rx.wait_for(|r| *r))
        .await
        .expect("ready in time")
        .expect("readiness sender alive");
    (published, metrics, stop_tx, controller)
}

/// A watch resumed from a compacted resourceVersion gets an ERROR event with code 410; the
/// reflectors list again (counted as relists, not watch failures) and the table matches the
/// API afterwards, including a deletion that no watch event ever reported.
#[tokio::test]
async fn watch_410_gone_forces_relist_and_table_matches_the_api() {
    let fake = FakeApiServer::start().await;
    fake.apply(service()).await;
    fake.apply(slice(&["10.0.0.1"])).await;
    fake.apply(route()).await;
    fake.apply(static_route("other", "/other")).await;
    let (published, metrics, stop_tx, controller) = start_reader(&fake).await;
    assert_eq!(route_ids(&published), ["apps/chat", "apps/other"]);

    // Compaction alone: every watch ends, resumes from its old resourceVersion, gets 410.
    fake.compact().await;
    eventually("a 410 for each watched resource", || async {
        (metrics.relists(Resource::WsRoute) >= 1
            && metrics.relists(Resource::Service) >= 1
            && metrics.relists(Resource::EndpointSlice) >= 1)
            .then_some(())
    })
    .await;
    assert!(fake.gone_responses().await >= 3);
    assert_eq!(metrics.watch_errors(Resource::WsRoute), 0);
    // After the relist, watches deliver changes again.
    fake.apply(slice(&["10.0.0.2"])).await;
    eventually("endpoints after the relist", || async {
        (endpoints(&published)? == vec![Endpoint::new("10.0.0.2", 8080)]).then_some(())
    })
    .await;

    // Missed events: while the API server is unreachable a route is deleted and the slice
    // changes, then the log is compacted, so only a list can show them.
    fake.set_down(true);
    eventually("the outage noticed", || async {
        (metrics.watch_errors(Resource::WsRoute) > 0).then_some(())
    })
    .await;
    fake.delete("WsRoute", "apps", "other").await;
    fake.apply(slice(&["10.0.0.3"])).await;
    fake.compact().await;
    let gone_before = fake.gone_responses().await;
    fake.set_down(false);
    eventually("the table matches the API after the relist", || async {
        (route_ids(&published) == ["apps/chat"]
            && endpoints(&published)? == vec![Endpoint::new("10.0.0.3", 8080)])
        .then_some(())
    })
    .await;
    assert!(fake.gone_responses().await > gone_before);

    stop_tx.send(()).expect("controller running");
    tokio::time::timeout(DEADLINE, controller)
        .await
        .expect("controller stops in time")
        .expect("controller task")
        .expect("controller result");
}

/// A WsRoute with a field of the wrong type does not fail the list: the other routes are
/// published, the bad one is counted, and once fixed it joins the table.
#[tokio::test]
async fn undeserializable_route_is_counted_and_does_not_stall_the_others() {
    let fake = FakeApiServer::start().await;
    fake.apply(service()).await;
    fake.apply(slice(&["10.0.0.1"])).await;
    fake.apply(route()).await;
    let mut bad = static_route("bad", "/bad");
    bad["spec"]["downstreamHostAndPorts"][0]["port"] = json!("not a number");
    fake.apply(bad).await;
    let (published, metrics, stop_tx, controller) = start_reader(&fake).await;
    assert_eq!(route_ids(&published), ["apps/chat"]);
    assert_eq!(metrics.invalid_routes.get(), 1);
    assert_eq!(metrics.watch_errors(Resource::WsRoute), 0);

    // Watch events for the other routes keep flowing.
    fake.apply(static_route("other", "/other")).await;
    eventually("the other route", || async {
        (route_ids(&published) == ["apps/chat", "apps/other"]).then_some(())
    })
    .await;

    fake.apply(static_route("bad", "/bad")).await;
    eventually("the fixed route", || async {
        (route_ids(&published) == ["apps/bad", "apps/chat", "apps/other"]).then_some(())
    })
    .await;
    assert_eq!(metrics.invalid_routes.get(), 0);

    stop_tx.send(()).expect("controller running");
    tokio::time::timeout(DEADLINE, controller)
        .await
        .expect("controller stops in time")
        .expect("controller task")
        .expect("controller result");
}
