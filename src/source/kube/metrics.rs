//! Controller metrics: watch failures per resource (the fail-static signal), relists after
//! 410 Gone, status patch
//! outcomes, leadership and rebuilds. Registered by the caller into the process registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Resource {
    WsRoute,
    Service,
    EndpointSlice,
    Lease,
    Secret,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: Resource,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PatchOutcome {
    Written,
    Failed,
    TimedOut,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: PatchOutcome,
}

#[derive(Clone, Debug, Default)]
pub struct KubeMetrics {
    watch_errors: Family<ResourceLabel, Counter>,
    relists: Family<ResourceLabel, Counter>,
    /// 1 while every watch delivers, 0 after a failure until the next successful event.
    pub watches_healthy: Gauge,
    status_patches: Family<OutcomeLabel, Counter>,
    pub events_failed: Counter,
    /// 1 while this replica holds the status Lease.
    pub leader: Gauge,
    pub rebuilds: Counter,
    /// WsRoutes in the stores that do not deserialize (left out of the table).
    pub invalid_routes: Gauge,
}

impl KubeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_watch_errors",
            "Failed list/watch calls to the API server; the last route table keeps serving",
            self.watch_errors.clone(),
        );
        registry.register(
            "kube_watch_relists",
            "Watches whose resourceVersion expired (410 Gone) and that listed again",
            self.relists.clone(),
        );
        registry.register(
            "kube_watches_healthy",
            "1 while every watch delivers, 0 after a failure until the next event",
            self.watches_healthy.clone(),
        );
        registry.register(
            "kube_status_patches",
            "WsRoute status patches by outcome",
            self.status_patches.clone(),
        );
        registry.register(
            "kube_events_failed",
            "Kubernetes Events that could not be published",
            self.events_failed.clone(),
        );
        registry.register(
            "kube_leader",
            "1 while this replica holds the status Lease",
            self.leader.clone(),
        );
        registry.register(
            "kube_invalid_routes",
            "WsRoutes that do not deserialize (e.g. a field of the wrong type) and are left out of the table",
            self.invalid_routes.clone(),
        );
        registry.register(
            "kube_rebuilds",
            "Route sets published from the API server's objects",
            self.rebuilds.clone(),
        );
    }

    pub fn watch_error(&self, resource: Resource) {
        self.watch_errors
            .get_or_create(&ResourceLabel { resource })
            .inc();
        self.watches_healthy.set(0);
    }

    pub fn watch_errors(&self, resource: Resource) -> u64 {
        self.watch_errors
            .get_or_create(&ResourceLabel { resource })
            .get()
    }

    pub fn relist(&self, resource: Resource) {
        self.relists
            .get_or_create(&ResourceLabel { resource })
            .inc();
    }

    pub fn relists(&self, resource: Resource) -> u64 {
        self.relists
            .get_or_create(&ResourceLabel { resource })
            .get()
    }

    pub fn status_patch(&self, outcome: PatchOutcome) {
        self.status_patches
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    pub fn status_patches(&self, outcome: PatchOutcome) -> u64 {
        self.status_patches
            .get_or_create(&OutcomeLabel { outcome })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Metrics;

    /// The controller's families are exported under these names (docs/kubernetes.md lists
    /// them); counters carry `_total`.
    #[test]
    fn exported_metric_names_match_the_docs() {
        let kube = KubeMetrics::default();
        let metrics = Metrics::with_extra(|r| kube.register(r));
        kube.watch_error(Resource::EndpointSlice);
        kube.relist(Resource::WsRoute);
        kube.status_patch(PatchOutcome::Written);
        let text = metrics.encode();
        for line in [
            "wsgate_kube_watch_errors_total{resource=\"EndpointSlice\"} 1",
            "wsgate_kube_watch_relists_total{resource=\"WsRoute\"} 1",
            "wsgate_kube_watches_healthy 0",
            "wsgate_kube_status_patches_total{outcome=\"Written\"} 1",
            "wsgate_kube_events_failed_total 0",
            "wsgate_kube_leader 0",
            "wsgate_kube_invalid_routes 0",
            "wsgate_kube_rebuilds_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
    }
}
