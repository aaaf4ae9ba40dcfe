//! Controller metrics: watch failures per resource (the fail-static signal), status patch
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
    /// 1 while every watch delivers, 0 after a failure until the next successful event.
    pub watches_healthy: Gauge,
    status_patches: Family<OutcomeLabel, Counter>,
    pub events_failed: Counter,
    /// 1 while this replica holds the status Lease.
    pub leader: Gauge,
    pub rebuilds: Counter,
}

impl KubeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_watch_errors",
            "Failed list/watch calls to the API server; the last route table keeps serving",
            self.watch_errors.clone(),
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
