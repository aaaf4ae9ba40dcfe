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

    let Replica {
        published,
        metrics,
        stop: stop_tx,
        task: controller,
        ..
    } = Replica::start(&fake, "wsgate-0").await;
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
    // Events are created after the status patch, by the same writer: wait for them.
    eventually("transitions recorded as Events", || async {
        (!fake.events().await.is_empty()).then_some(())
    })
    .await;

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
/// After a long outage the watches are back within 2 s of the API server (issue 21): the
/// retry delay is capped at about 1 s, where kube-runtime's default backoff would have grown
/// past 3 s after six seconds away. The age of the last watch event grows meanwhile.
#[tokio::test]
async fn watches_resume_within_two_seconds_after_a_long_outage() {
    let fake = FakeApiServer::start().await;
    fake.apply(service()).await;
    fake.apply(slice(&["10.0.0.1"])).await;
    fake.apply(route()).await;
    let Replica {
        published,
        metrics,
        stop,
        task,
        ..
    } = Replica::start(&fake, "wsgate-0").await;
    assert_eq!(
        endpoints(&published),
        Some(vec![Endpoint::new("10.0.0.1", 8080)])
    );
    let age = metrics
        .watch_event_age(Resource::EndpointSlice)
        .expect("the first list is an event");
    assert!(age < 5.0, "age after the first list: {age}");

    fake.set_down(true);
    eventually("watch errors counted", || async {
        (metrics.watch_errors(Resource::EndpointSlice) > 0).then_some(())
    })
    .await;
    // The outage's length is the subject (not a wait for something): the watches' backoff
    // grows for this long.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let age = metrics.watch_event_age(Resource::EndpointSlice).unwrap();
    assert!(
        age >= 6.0,
        "the event age grows while the API is away: {age}"
    );

    fake.set_down(false);
    let back = std::time::Instant::now();
    fake.apply(slice(&["10.0.0.9"])).await;
    eventually("endpoints after the outage", || async {
        (endpoints(&published)? == vec![Endpoint::new("10.0.0.9", 8080)]).then_some(())
    })
    .await;
    let resumed = back.elapsed();
    assert!(
        resumed < Duration::from_secs(2),
        "a change after the API server's return took {resumed:?} to reach the table"
    );
    eprintln!("watch resumed {resumed:?} after the API server came back from a 6 s outage");
    let age = metrics.watch_event_age(Resource::EndpointSlice).unwrap();
    assert!(age < 2.0, "age after the change: {age}");

    let _ = stop.send(());
    let _ = task.await;
}

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
    let mut cfg = KubeConfig::new("wsgate-0", "wsgate-system");
    cfg.debounce = Duration::from_millis(20);
    cfg.lease = None;
    let r = Replica::start_with(fake, "wsgate-0", cfg).await;
    (r.published, r.metrics, r.stop, r.task)
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

/// One replica with a status writer, as a pod of the gateway's Deployment runs it.
struct Replica {
    identity: &'static str,
    published: Published,
    metrics: Arc<KubeMetrics>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), wsgate::source::kube::Error>>,
}

impl Replica {
    /// Starts a controller named `identity` against `fake`, renewing the Lease every
    /// 200 ms for 2 s; returns once it is ready.
    async fn start(fake: &FakeApiServer, identity: &'static str) -> Replica {
        let mut cfg = KubeConfig::new(identity, "wsgate-system");
        cfg.debounce = Duration::from_millis(20);
        let lease = cfg.lease.as_mut().expect("a status writer by default");
        lease.renew_every = Duration::from_millis(200);
        lease.duration = Duration::from_secs(2);
        Self::start_with(fake, identity, cfg).await
    }

    /// Starts a controller with `cfg` against `fake`; returns once it is ready.
    async fn start_with(fake: &FakeApiServer, identity: &'static str, cfg: KubeConfig) -> Replica {
        let config = kube::Config::new(fake.url().parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let (publisher, published) = recording_publisher();
        let metrics = Arc::new(KubeMetrics::default());
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
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
            .unwrap_or_else(|_| panic!("{identity} ready in time"))
            .expect("readiness sender alive");
        Replica {
            identity,
            published,
            metrics,
            stop,
            task,
        }
    }

    /// Status patches this replica attempted, whatever their outcome.
    fn patches(&self) -> u64 {
        [
            PatchOutcome::Written,
            PatchOutcome::Failed,
            PatchOutcome::TimedOut,
        ]
        .into_iter()
        .map(|o| self.metrics.status_patches(o))
        .sum()
    }

    fn leads(&self) -> bool {
        self.metrics.leader.get() == 1
    }

    /// Waits until this replica's table shows `n` endpoints for apps/chat.
    async fn sees_endpoints(&self, n: usize) {
        eventually(
            &format!("{} publishes {n} endpoints", self.identity),
            || async { (endpoints(&self.published)?.len() == n).then_some(()) },
        )
        .await;
    }

    /// Ends it as a killed pod ends: no shutdown, so a held Lease is not released.
    async fn kill(self) {
        self.task.abort();
        let ended = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("an aborted controller ends at once");
        assert!(
            ended.is_err_and(|e| e.is_cancelled()),
            "{} was cancelled",
            self.identity
        );
    }

    /// Stops it as SIGTERM does (the holder releases the Lease) and waits for the end.
    async fn stop(self) {
        self.stop.send(()).expect("controller running");
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("controller stops in time")
            .expect("controller task")
            .expect("controller result");
    }
}

/// The Lease's holder as the API server has it.
async fn lease_holder(fake: &FakeApiServer) -> Option<String> {
    let lease = fake.get("Lease", "wsgate-system", "wsgate-status").await?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// Sets the Lease as a replica outside the test would: `holder` (None = released), renewed
/// far in the future so it never expires by itself.
async fn set_lease(fake: &FakeApiServer, holder: Option<&str>) {
    fake.apply(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"namespace": "wsgate-system", "name": "wsgate-status"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": "2099-01-01T00:00:00.000000Z"}}),
    )
    .await;
}

/// Two replicas against one API server: while a third holds the Lease neither writes
/// status, though both see it missing; when the Lease is released exactly one takes it and
/// writes, the other writes none through a further change; when the holder stops, the other
/// takes the Lease over and writes the next change.
#[tokio::test]
async fn two_replicas_only_the_lease_holder_writes_status_and_the_other_takes_over() {
    let fake = FakeApiServer::start().await;
    fake.apply(service()).await;
    fake.apply(slice(&["10.0.0.1"])).await;
    fake.apply(route()).await;
    set_lease(&fake, Some("another-gateway")).await;

    let a = Replica::start(&fake, "wsgate-0").await;
    let b = Replica::start(&fake, "wsgate-1").await;
    // Both have a status to write (the route has none) and a table that says what.
    a.sees_endpoints(1).await;
    b.sees_endpoints(1).await;
    // A change after start-up: each replica's writer gets a second desired status, so a
    // writer that ignored the Lease would have written by the time both tables show it.
    fake.apply(slice(&["10.0.0.1", "10.0.0.2"])).await;
    a.sees_endpoints(2).await;
    b.sees_endpoints(2).await;
    assert_eq!(
        lease_holder(&fake).await.as_deref(),
        Some("another-gateway")
    );
    assert_eq!(
        (a.patches(), b.patches()),
        (0, 0),
        "followers write nothing"
    );
    assert!(!a.leads() && !b.leads());
    assert_eq!(fake.status_patches("WsRoute", "apps", "chat").await, 0);

    // Released: both try to take it over with a conditional replace; one wins and writes.
    set_lease(&fake, None).await;
    let holder = eventually("a replica takes the released Lease", || async {
        lease_holder(&fake)
            .await
            .filter(|h| h == "wsgate-0" || h == "wsgate-1")
    })
    .await;
    let (holder, other) = if holder == a.identity {
        (a, b)
    } else {
        assert_eq!(holder, b.identity);
        (b, a)
    };
    eventually("the holder writes the status", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (r["status"]["readyEndpoints"] == 2).then_some(())
    })
    .await;
    eventually("the holder counts its write", || async {
        (holder.patches() >= 1).then_some(())
    })
    .await;
    // One more change while the holder holds: it writes again, the other still writes nothing.
    fake.apply(slice(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
        .await;
    other.sees_endpoints(3).await;
    eventually("the holder writes the change", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (r["status"]["readyEndpoints"] == 3).then_some(())
    })
    .await;
    eventually("the holder counts both writes", || async {
        (holder.metrics.status_patches(PatchOutcome::Written) == 2).then_some(())
    })
    .await;
    assert!(holder.leads(), "{} leads", holder.identity);
    assert!(!other.leads(), "{} follows", other.identity);
    assert_eq!(other.patches(), 0, "{} wrote status", other.identity);
    assert_eq!(fake.status_patches("WsRoute", "apps", "chat").await, 2);
    let reporters: std::collections::BTreeSet<String> = fake
        .events()
        .await
        .iter()
        .filter_map(|e| e["reportingInstance"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        reporters,
        [holder.identity.to_string()].into(),
        "only the holder records Events"
    );

    // The holder stops (and releases the Lease): the other takes over and writes.
    let first = holder.identity;
    holder.stop().await;
    eventually("the other replica takes the Lease over", || async {
        (lease_holder(&fake).await.as_deref() == Some(other.identity)).then_some(())
    })
    .await;
    fake.apply(slice(&["10.0.0.4"])).await;
    eventually("the new holder writes the status", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (r["status"]["readyEndpoints"] == 1).then_some(())
    })
    .await;
    eventually("the new holder counts its write", || async {
        (other.metrics.status_patches(PatchOutcome::Written) == 1).then_some(())
    })
    .await;
    assert!(other.leads());
    assert_eq!(fake.status_patches("WsRoute", "apps", "chat").await, 3);
    assert_ne!(first, other.identity);
    other.stop().await;
    assert_eq!(lease_holder(&fake).await, None, "released at shutdown");
}

/// A Lease's `spec.<field>` time.
async fn lease_time(fake: &FakeApiServer, field: &str) -> k8s_openapi::jiff::Timestamp {
    let lease = fake
        .get("Lease", "wsgate-system", "wsgate-status")
        .await
        .expect("lease");
    lease["spec"][field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("spec.{field} is a time: {lease}"))
}

/// A holder that dies without releasing the Lease (a killed pod): the other replica, which
/// wrote nothing while following, takes the Lease over only once it has expired (its last
/// renewal plus its duration, 2 s here) and then writes status.
#[tokio::test]
async fn a_holder_killed_without_releasing_is_taken_over_once_its_lease_expires() {
    let fake = FakeApiServer::start().await;
    fake.apply(service()).await;
    fake.apply(slice(&["10.0.0.1"])).await;
    fake.apply(route()).await;

    let a = Replica::start(&fake, "wsgate-0").await;
    eventually("wsgate-0 takes the Lease", || async {
        (lease_holder(&fake).await.as_deref() == Some("wsgate-0")).then_some(())
    })
    .await;
    let b = Replica::start(&fake, "wsgate-1").await;
    fake.apply(slice(&["10.0.0.1", "10.0.0.2"])).await;
    b.sees_endpoints(2).await;
    eventually("the holder writes the status", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (r["status"]["readyEndpoints"] == 2).then_some(())
    })
    .await;
    eventually("the holder counts its writes", || async {
        (a.metrics.status_patches(PatchOutcome::Written) >= 1).then_some(())
    })
    .await;
    assert_eq!(b.patches(), 0, "the follower wrote status");
    assert!(!b.leads());

    a.kill().await;
    // Any renewal the killed holder had on the wire is in by now or lost; the one read here
    // is at most its last, so the takeover must come at least a duration after it.
    let last_renewal = lease_time(&fake, "renewTime").await;
    assert_eq!(
        lease_holder(&fake).await.as_deref(),
        Some("wsgate-0"),
        "a killed holder does not release"
    );
    eventually("wsgate-1 takes the expired Lease over", || async {
        (lease_holder(&fake).await.as_deref() == Some("wsgate-1")).then_some(())
    })
    .await;
    let acquired = lease_time(&fake, "acquireTime").await;
    assert!(
        acquired >= last_renewal + std::time::Duration::from_secs(2),
        "taken over at {acquired}, before the Lease renewed at {last_renewal} expired"
    );
    fake.apply(slice(&["10.0.0.3"])).await;
    eventually("the new holder writes the status", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (r["status"]["readyEndpoints"] == 1).then_some(())
    })
    .await;
    eventually("the new holder counts its write", || async {
        (b.metrics.status_patches(PatchOutcome::Written) == 1).then_some(())
    })
    .await;
    assert!(b.leads());
    b.stop().await;
}

/// A Secret with `jwks.json` as the API server serves it (base64 data).
fn jwks_secret(keys: &[&support::jwt::TestKey]) -> Value {
    use base64::Engine;
    let jwks = support::jwt::jwks(keys);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"namespace": "apps", "name": "chat-jwks"},
        "data": {"jwks.json": base64::engine::general_purpose::STANDARD.encode(jwks)}})
}

fn authenticated_route() -> Value {
    let mut r = route();
    r["spec"]["authenticationOptions"] = json!({
        "jwt": {"issuer": support::jwt::ISSUER, "jwksSecretName": "chat-jwks"}
    });
    r
}

/// Whether the published chat route verifies tokens signed by `key`.
fn verifies(rx: &Published, key: &support::jwt::TestKey) -> Option<bool> {
    let routes = rx.borrow();
    let auth = routes
        .1
        .iter()
        .find(|r| r.id.0 == "apps/chat")?
        .authentication
        .clone()?;
    Some(
        auth.jwks
            .as_ref()
            .is_ok_and(|j| j.select(Some(&key.kid), key.alg).is_some()),
    )
}

/// `jwksSecretName` through the real kube client: the route is published with the Secret's
/// key set and `ResolvedRefs` True; replacing the Secret (a rotation) publishes the new key
/// set; deleting it keeps the route (refusing every request) and writes `ResolvedRefs`
/// False with `InvalidAuthRef`.
#[tokio::test]
async fn jwks_secret_resolves_rotates_and_reports_invalid_auth_ref_when_gone() {
    let old = support::jwt::TestKey::ec("ec-old", jsonwebtoken::Algorithm::ES256);
    let new = support::jwt::TestKey::ed25519("ed-new");
    let fake = FakeApiServer::start().await;
    fake.apply(service()).await;
    fake.apply(slice(&["10.0.0.1"])).await;
    fake.apply(jwks_secret(&[&old])).await;
    fake.apply(authenticated_route()).await;
    let replica = Replica::start(&fake, "wsgate-0").await;
    let published = replica.published.clone();
    eventually("the old key set published", || async {
        (verifies(&published, &old) == Some(true)).then_some(())
    })
    .await;
    eventually("ResolvedRefs True", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (condition(&r, "ResolvedRefs")? == ("True".into(), "ResolvedRefs".into())).then_some(())
    })
    .await;

    fake.apply(jwks_secret(&[&new])).await;
    eventually("the rotated key set published", || async {
        (verifies(&published, &new) == Some(true) && verifies(&published, &old) == Some(false))
            .then_some(())
    })
    .await;

    fake.delete("Secret", "apps", "chat-jwks").await;
    eventually("the route kept without keys", || async {
        (verifies(&published, &new) == Some(false)).then_some(())
    })
    .await;
    let r = eventually("ResolvedRefs InvalidAuthRef", || async {
        let r = fake.get("WsRoute", "apps", "chat").await?;
        (condition(&r, "ResolvedRefs")? == ("False".into(), "InvalidAuthRef".into())).then_some(r)
    })
    .await;
    assert_eq!(
        condition(&r, "Accepted"),
        Some(("True".into(), "Accepted".into()))
    );
    replica.stop().await;
}
