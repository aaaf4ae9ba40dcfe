//! The controller loop: reflectors over WsRoutes, Services and EndpointSlices feed stores;
//! bursts of changes coalesce into one translate + publish; statuses go to the writer.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future;
use futures_util::stream::{self, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::WatchBackoff;
use super::index::{GuardedRoute, Stores, TranslateCache};
use super::lease::{run_lease, LeaseConfig};
use super::metrics::{KubeMetrics, Resource as Kind};
use super::publish::RoutePublisher;
use super::resolve::SERVICE_NAME_LABEL;
use super::secrets::strip_unusable;
use super::status::compute_status;
use super::writer::{DesiredStatus, DesiredStatuses, StatusWriter};
use crate::model::RouteProblem;

/// How the Kubernetes source runs.
#[derive(Clone, Debug)]
pub struct KubeConfig {
    /// Namespaces to watch; empty = all namespaces.
    pub namespaces: Vec<String>,
    /// Label selector on WsRoutes (`app=chat,tier!=test`); Services and slices are not filtered
    /// by it.
    pub label_selector: Option<String>,
    /// The least time between the end of one rebuild and the start of the next: a change
    /// arriving sooner waits until this much has passed, so a burst of changes (a rollout,
    /// a relist) costs at most one rebuild per `debounce` however long it lasts.
    pub debounce: Duration,
    /// How long a change after a quiet period waits for companions (the other slices and
    /// the Service of one rollout step) before the rebuild; small, since it is added to
    /// every isolated change's propagation.
    pub coalesce: Duration,
    /// `controller` in Events and the prefix of the Lease name.
    pub controller_name: String,
    /// Leader election for the status writer; `None` = never write status.
    pub lease: Option<LeaseConfig>,
    /// `--default-cert-secret`: a `kubernetes.io/tls` Secret `(namespace, name)`.
    pub default_certificate_secret: Option<(String, String)>,
}

impl KubeConfig {
    /// All namespaces, no selector, rebuilds 5 ms after an isolated change and at most one
    /// per 75 ms under churn, status written by the holder of Lease
    /// `wsgate-status` in `lease_namespace`, as `identity` (the pod name).
    pub fn new(identity: impl Into<String>, lease_namespace: impl Into<String>) -> Self {
        KubeConfig {
            namespaces: Vec::new(),
            label_selector: None,
            debounce: Duration::from_millis(75),
            coalesce: Duration::from_millis(5),
            controller_name: "wsgate".into(),
            lease: Some(LeaseConfig {
                namespace: lease_namespace.into(),
                name: "wsgate-status".into(),
                identity: identity.into(),
                duration: Duration::from_secs(15),
                renew_every: Duration::from_secs(5),
            }),
            default_certificate_secret: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a watch stream ended; the reflector stores are gone")]
    WatchEnded,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::WatchEnded => "watch_ended",
        }
    }
}

type Changes = Pin<Box<dyn Stream<Item = Change> + Send>>;

/// What a watch stream item means for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// The store changed in a way that can change routes.
    Routes,
    /// Nothing for the table (relist in progress, status-only update, error).
    Nothing,
}

/// A reflector for `K` over `api` feeding `writer`, mapped to `Change`s. Errors are logged
/// and counted; the watcher retries with backoff (`WatchBackoff`: at most about 1 s) while the
/// store keeps its contents.
fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    kind: Kind,
    metrics: Arc<KubeMetrics>,
    prepare: fn(&mut K),
) -> Changes
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    // WsRoutes are compared by generation so our own status writes do not rebuild the table.
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    let stream = watcher(api, config)
        .backoff(WatchBackoff::new())
        .modify(move |o: &mut K| {
            o.managed_fields_mut().clear();
            prepare(o);
        });
    let stream = reflector::reflector(writer, stream).map(move |item| match item {
        Ok(event) => {
            metrics.watch_event(kind);
            match event {
                watcher::Event::Apply(o) if kind == Kind::WsRoute => {
                    let uid = o.uid().unwrap_or_default();
                    let generation = o.meta().generation;
                    match generations.insert(uid, generation) {
                        Some(old) if old == generation => Change::Nothing,
                        _ => Change::Routes,
                    }
                }
                watcher::Event::Delete(o) => {
                    generations.remove(&o.uid().unwrap_or_default());
                    Change::Routes
                }
                watcher::Event::Apply(_) | watcher::Event::InitDone => Change::Routes,
                watcher::Event::InitApply(o) => {
                    if kind == Kind::WsRoute {
                        generations.insert(o.uid().unwrap_or_default(), o.meta().generation);
                    }
                    Change::Nothing
                }
                watcher::Event::Init => {
                    // A relist: objects deleted meanwhile never get a Delete event.
                    generations.clear();
                    Change::Nothing
                }
            }
        }
        // The API server no longer has our resourceVersion (compaction, watch-cache restart):
        // the watcher lists again and the store is replaced whole at InitDone. Routine, and
        // the API server is there, so it is not a watch failure.
        Err(watcher::Error::WatchError(status)) if status.code == 410 => {
            metrics.relist(kind);
            tracing::info!(resource = ?kind, message = %status.message, "resourceVersion expired; listing again");
            Change::Nothing
        }
        Err(e) => {
            metrics.watch_error(kind);
            tracing::warn!(resource = ?kind, error = %e, "watch failed; serving the last route table, retrying with backoff");
            Change::Nothing
        }
    });
    Box::pin(stream)
}

/// Runs the Kubernetes source until `shutdown`: watches, publishes route sets through
/// `publisher`, sets `readiness` once every store has listed and the first table is
/// published, and (while holding the Lease) writes status. API outages leave the last table
/// serving.
pub async fn run(
    config: KubeConfig,
    client: Client,
    publisher: Arc<dyn RoutePublisher>,
    metrics: Arc<KubeMetrics>,
    readiness: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut route_cfg = watcher::Config::default();
    if let Some(sel) = &config.label_selector {
        route_cfg = route_cfg.labels(sel);
    }
    let slice_cfg = watcher::Config::default().labels(SERVICE_NAME_LABEL);

    let scopes: Vec<Option<&str>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut stores = Stores::default();
    let mut changes: Vec<Changes> = Vec::new();
    for ns in scopes {
        let routes = Writer::<GuardedRoute>::default();
        stores.routes.push(routes.as_reader());
        changes.push(reflect(
            api(&client, ns),
            route_cfg.clone(),
            routes,
            Kind::WsRoute,
            metrics.clone(),
            |_| {},
        ));
        let services = Writer::<Service>::default();
        stores.services.push(services.as_reader());
        changes.push(reflect(
            api(&client, ns),
            watcher::Config::default(),
            services,
            Kind::Service,
            metrics.clone(),
            |_| {},
        ));
        let slices = Writer::<EndpointSlice>::default();
        stores.slices.push(slices.as_reader());
        changes.push(reflect(
            api(&client, ns),
            slice_cfg.clone(),
            slices,
            Kind::EndpointSlice,
            metrics.clone(),
            |_| {},
        ));
        // Certificates: every Secret of the scope is listed, but only TLS Secrets and ones
        // with `ca.crt` keep their data in the store.
        let secrets = Writer::<Secret>::default();
        stores.secrets.push(secrets.as_reader());
        changes.push(reflect(
            api(&client, ns),
            watcher::Config::default(),
            secrets,
            Kind::Secret,
            metrics.clone(),
            strip_unusable,
        ));
    }
    stores.default_certificate_secret = config.default_certificate_secret.clone();
    if let Some((ns, name)) = &config.default_certificate_secret {
        if !config.namespaces.is_empty() && !config.namespaces.contains(ns) {
            // The default Secret lives outside the watched namespaces (usually the
            // gateway's own): watch that one Secret.
            let secrets = Writer::<Secret>::default();
            stores.secrets.push(secrets.as_reader());
            changes.push(reflect(
                Api::namespaced(client.clone(), ns),
                watcher::Config::default().fields(&format!("metadata.name={name}")),
                secrets,
                Kind::Secret,
                metrics.clone(),
                strip_unusable,
            ));
        }
    }
    let changes = stream::select_all(changes);

    let (desired_tx, desired_rx) = watch::channel::<DesiredStatuses>(Arc::new(Vec::new()));
    let (leader_tx, leader_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(lease) = config.lease.clone() {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: config.controller_name.clone(),
                instance: Some(lease.identity.clone()),
            },
        );
        tasks.spawn(run_lease(
            client.clone(),
            lease,
            leader_tx,
            metrics.clone(),
            stopped(),
        ));
        let writer = StatusWriter {
            client: client.clone(),
            recorder,
            stores: stores.clone(),
            metrics: metrics.clone(),
        };
        tasks.spawn(writer.run(desired_rx, leader_rx, stopped()));
    }

    let changes = changes.filter_map(|c| future::ready((c == Change::Routes).then_some(())));
    let result = Reconcile {
        stores,
        schedule: RebuildSchedule::new(config.coalesce, config.debounce),
        publisher,
        metrics,
        readiness,
        statuses: desired_tx,
    }
    .run(changes, shutdown)
    .await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    result
}

/// When to rebuild the table after store changes. A change after a quiet period is
/// rebuilt `coalesce` later; a change within `min_interval` of the end of the last rebuild
/// waits until `min_interval` has passed since it. Changes arriving while a rebuild is due
/// join it.
#[derive(Clone, Debug)]
pub struct RebuildSchedule {
    coalesce: Duration,
    min_interval: Duration,
    last: Option<Instant>,
    due: Option<Instant>,
}

impl RebuildSchedule {
    pub fn new(coalesce: Duration, min_interval: Duration) -> Self {
        RebuildSchedule {
            coalesce,
            min_interval,
            last: None,
            due: None,
        }
    }

    /// A store changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        if self.due.is_none() {
            let earliest = self.last.map_or(now, |last| last + self.min_interval);
            self.due = Some((now + self.coalesce).max(earliest));
        }
    }

    /// Rebuild as soon as possible (the stores have just listed).
    pub fn now(&mut self, now: Instant) {
        self.due = Some(now);
    }

    /// When the next rebuild is due; `None` = nothing changed since the last one.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// A rebuild finished at `now`.
    pub fn rebuilt(&mut self, now: Instant) {
        self.last = Some(now);
        self.due = None;
    }
}

/// The controller loop over stores that reflectors (or a test) keep current: waits until
/// every store has listed, then rebuilds and publishes on the `schedule` after each change,
/// sends the statuses every rebuild wants and sets readiness after the first.
pub struct Reconcile {
    pub stores: Stores,
    pub schedule: RebuildSchedule,
    pub publisher: Arc<dyn RoutePublisher>,
    pub metrics: Arc<KubeMetrics>,
    pub readiness: watch::Sender<bool>,
    /// The desired status of every WsRoute after each rebuild, for the status writer.
    pub statuses: watch::Sender<DesiredStatuses>,
}

impl Reconcile {
    /// Runs until `shutdown`. Each item of `changes` says a store changed in a way that can
    /// change routes; the stream ending means the stores are no longer kept current.
    pub async fn run(
        mut self,
        changes: impl Stream<Item = ()>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let ready_stores = self.stores.clone();
        let all_listed = async move { ready_stores.wait_until_ready().await.is_ok() };
        tokio::pin!(all_listed, shutdown, changes);
        let mut listed = false;
        let mut invalid_reported = HashMap::new();
        let mut cache = TranslateCache::default();
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                ok = &mut all_listed, if !listed => {
                    if !ok {
                        return Err(Error::WatchEnded);
                    }
                    listed = true;
                    self.schedule.now(Instant::now());
                }
                change = changes.next() => match change {
                    None => return Err(Error::WatchEnded),
                    Some(()) if listed => self.schedule.changed(Instant::now()),
                    Some(()) => {}
                },
                _ = sleep_until_opt(self.schedule.due()) => {
                    let desired = rebuild(
                        &self.stores,
                        &mut cache,
                        self.publisher.as_ref(),
                        &self.metrics,
                        &mut invalid_reported,
                    );
                    // Measured from the end, so churn leaves the runtime idle for at least
                    // `debounce` between rebuilds however long one takes.
                    self.schedule.rebuilt(Instant::now());
                    self.statuses.send_replace(desired);
                    self.readiness.send_replace(true);
                }
            }
        }
    }
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Translate the stores, publish, and compute every route's status. WsRoutes that do not
/// deserialize are logged once per distinct error (`reported`) and counted.
pub(super) fn rebuild(
    stores: &Stores,
    cache: &mut TranslateCache,
    publisher: &dyn RoutePublisher,
    metrics: &KubeMetrics,
    reported: &mut HashMap<(String, String), String>,
) -> DesiredStatuses {
    let invalid = stores.invalid_routes();
    metrics
        .invalid_routes
        .set(i64::try_from(invalid.len()).unwrap_or(i64::MAX));
    let mut still = HashMap::with_capacity(invalid.len());
    for r in invalid {
        let key = (r.namespace, r.name);
        if reported.get(&key) != Some(&r.error) {
            tracing::warn!(
                route = %format!("{}/{}", key.0, key.1),
                error = %r.error,
                "WsRoute does not deserialize; left out of the route table (other routes are unaffected)"
            );
        }
        still.insert(key, r.error);
    }
    *reported = still;
    let translation = stores.translate_cached(cache);
    if let Some((ns, name)) = &stores.default_certificate_secret {
        match (
            &translation.default_certificate,
            &translation.default_certificate_problem,
        ) {
            (Some(cert), _) => publisher.set_default_certificate(Some(cert.clone())),
            (None, Some(problem)) => {
                tracing::warn!(secret = %format!("{ns}/{name}"), problem = %problem, "default certificate Secret unusable; keeping the last good default certificate")
            }
            (None, None) => {}
        }
    }
    for report in &translation.reports {
        let flagged_before = report.previous.as_ref().is_some_and(|p| {
            p.conditions
                .iter()
                .any(|c| c.type_ == crate::api::conditions::insecure_backend_tls::TYPE)
        });
        if report.insecure_backend_tls && !flagged_before {
            tracing::warn!(route = %report.id, "route skips verification of its backends' certificates (dangerousAcceptAnyServerCertificateValidator); anyone on the network path can read and change its traffic");
        }
        for problem in &report.certificate_problems {
            tracing::warn!(route = %report.id, problem = %problem, "certificate reference not resolved (ResolvedRefs: InvalidCertificateRef)");
        }
        for problem in &report.auth_problems {
            tracing::warn!(route = %report.id, problem = %problem, "key set not resolved; the route refuses every request (ResolvedRefs: InvalidAuthRef)");
        }
    }
    let outcome = publisher.publish(&translation.routes);
    metrics.rebuilds.inc();
    tracing::info!(
        routes = translation.routes.len(),
        generation = outcome.generation,
        problems = outcome.problems.len(),
        "published routes from the API server"
    );
    let now = Time(Timestamp::now());
    let desired = translation
        .reports
        .iter()
        .map(|report| {
            let problems: Vec<&RouteProblem> = outcome
                .problems
                .iter()
                .filter(|p| p.route == report.id)
                .collect();
            DesiredStatus {
                namespace: report.namespace.clone(),
                name: report.name.clone(),
                uid: report.uid.clone(),
                status: compute_status(report, &problems, Some(outcome.generation), now.clone()),
            }
        })
        .collect();
    Arc::new(desired)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
