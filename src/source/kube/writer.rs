//! The status writer: patches `WsRoute.status` when the computed status differs from what
//! the object carries (timestamps ignored), and records an Event per condition transition.
//! Only the Lease holder writes; gaining the Lease re-checks every route.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};
use tokio::sync::watch;

use super::index::Stores;
use super::metrics::{KubeMetrics, PatchOutcome};
use super::status::same_ignoring_timestamps;
use crate::api::conditions::status as cstatus;
use crate::api::{WsRoute, WsRouteStatus};

/// The status one WsRoute should carry, as computed after a publish.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub status: WsRouteStatus,
}

/// Desired statuses of every route, replaced whole after each publish.
pub type DesiredStatuses = Arc<Vec<DesiredStatus>>;

const PATCH_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct StatusWriter {
    pub client: Client,
    pub recorder: Recorder,
    pub stores: Stores,
    pub metrics: Arc<KubeMetrics>,
}

impl StatusWriter {
    /// Runs until `shutdown`. Wakes on a new desired set, a leadership change, or a retry
    /// after a failed patch.
    pub async fn run(
        self,
        mut desired: watch::Receiver<DesiredStatuses>,
        mut leader: watch::Receiver<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        // What this replica wrote last, per object: the store lags our own patches, and this
        // keeps a lagging store from causing a second identical write.
        let mut written: BTreeMap<(String, String), WsRouteStatus> = BTreeMap::new();
        let mut retry = RETRY_MIN;
        let mut retry_at: Option<tokio::time::Instant> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                changed = desired.changed() => if changed.is_err() { return },
                changed = leader.changed() => {
                    if changed.is_err() { return }
                    // A new term: what we wrote in an earlier one may have been overwritten.
                    written.clear();
                }
                _ = sleep_until_opt(retry_at) => {}
            }
            retry_at = None;
            if !*leader.borrow_and_update() {
                continue;
            }
            let snapshot = desired.borrow_and_update().clone();
            let keys: std::collections::BTreeSet<_> = snapshot
                .iter()
                .map(|d| (d.namespace.clone(), d.name.clone()))
                .collect();
            written.retain(|k, _| keys.contains(k));
            let mut failed = false;
            for want in snapshot.iter() {
                if !*leader.borrow() {
                    break;
                }
                if !self.write_one(want, &mut written).await {
                    failed = true;
                }
            }
            if failed {
                retry_at = Some(tokio::time::Instant::now() + retry);
                retry = (retry * 2).min(RETRY_MAX);
            } else {
                retry = RETRY_MIN;
            }
        }
    }

    /// Patches one route if needed; false when the patch failed.
    async fn write_one(
        &self,
        want: &DesiredStatus,
        written: &mut BTreeMap<(String, String), WsRouteStatus>,
    ) -> bool {
        let key = (want.namespace.clone(), want.name.clone());
        let current = self.current(want);
        let Some(object) = current else {
            // Deleted since the snapshot (or not yet in this store): nothing to write.
            return true;
        };
        if want.uid.is_some() && object.metadata.uid != want.uid {
            return true;
        }
        let carried = object.status.clone().unwrap_or_default();
        let status = carry_transition_times(&want.status, &carried);
        if object.status.is_some() && same_ignoring_timestamps(&status, &carried) {
            written.insert(key, status);
            return true;
        }
        if written
            .get(&key)
            .is_some_and(|w| same_ignoring_timestamps(w, &status))
        {
            return true;
        }
        let api: Api<WsRoute> = Api::namespaced(self.client.clone(), &want.namespace);
        let patch = serde_json::json!({ "status": &status });
        let result = tokio::time::timeout(
            PATCH_TIMEOUT,
            api.patch_status(&want.name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await;
        match result {
            Ok(Ok(_)) => {
                self.metrics.status_patch(PatchOutcome::Written);
                tracing::debug!(route = %format!("{}/{}", want.namespace, want.name), "status written");
                self.record_transitions(&object, &carried, &status).await;
                written.insert(key, status);
                true
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => true,
            Ok(Err(e)) => {
                self.metrics.status_patch(PatchOutcome::Failed);
                tracing::warn!(route = %format!("{}/{}", want.namespace, want.name), error = %e, "status patch failed; will retry");
                false
            }
            Err(_) => {
                self.metrics.status_patch(PatchOutcome::TimedOut);
                tracing::warn!(route = %format!("{}/{}", want.namespace, want.name), "status patch timed out; will retry");
                false
            }
        }
    }

    fn current(&self, want: &DesiredStatus) -> Option<WsRoute> {
        self.stores.route(&want.namespace, &want.name)
    }

    /// One Event per condition whose status or reason changed: Normal when it became True,
    /// Warning when False.
    async fn record_transitions(
        &self,
        object: &WsRoute,
        before: &WsRouteStatus,
        after: &WsRouteStatus,
    ) {
        let reference = object_reference(object);
        for c in &after.conditions {
            let unchanged = before
                .conditions
                .iter()
                .any(|b| b.type_ == c.type_ && b.status == c.status && b.reason == c.reason);
            if unchanged {
                continue;
            }
            let event = Event {
                type_: if c.status == cstatus::TRUE {
                    EventType::Normal
                } else {
                    EventType::Warning
                },
                reason: c.reason.clone(),
                note: Some(format!("{} {}: {}", c.type_, c.status, c.message)),
                action: format!("Set{}", c.type_),
                secondary: None,
            };
            let published =
                tokio::time::timeout(PATCH_TIMEOUT, self.recorder.publish(&event, &reference))
                    .await;
            if !matches!(published, Ok(Ok(()))) {
                self.metrics.events_failed.inc();
                tracing::debug!(reason = %c.reason, "event not recorded");
            }
        }
    }
}

fn object_reference(object: &WsRoute) -> ObjectReference {
    ObjectReference {
        api_version: Some(WsRoute::api_version(&()).into_owned()),
        kind: Some(WsRoute::kind(&()).into_owned()),
        name: object.metadata.name.clone(),
        namespace: object.metadata.namespace.clone(),
        uid: object.metadata.uid.clone(),
        resource_version: object.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// `want` with each condition's `lastTransitionTime` taken from `current` where the
/// condition says the same thing there.
pub fn carry_transition_times(want: &WsRouteStatus, current: &WsRouteStatus) -> WsRouteStatus {
    let mut out = want.clone();
    for c in &mut out.conditions {
        if let Some(old) = current.conditions.iter().find(|o| {
            o.type_ == c.type_
                && o.status == c.status
                && o.reason == c.reason
                && o.message == c.message
        }) {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
    out
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
