//! Controller metrics: watch failures per resource (the fail-static signal), relists after
//! 410 Gone, status patch
//! outcomes, leadership and rebuilds. Registered by the caller into the process registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Resource {
    WsRoute,
    Service,
    EndpointSlice,
    Lease,
    Secret,
}

impl Resource {
    const WATCHED: [Resource; 4] = [
        Resource::WsRoute,
        Resource::Service,
        Resource::EndpointSlice,
        Resource::Secret,
    ];
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
    last_events: Arc<LastEvents>,
}

/// When each watch last delivered an event, read at scrape time as an age.
#[derive(Debug)]
struct LastEvents {
    start: Instant,
    /// Milliseconds after `start` plus one, per [`Resource::WATCHED`]; 0 = never.
    at_ms: [AtomicU64; 4],
}

impl Default for LastEvents {
    fn default() -> Self {
        LastEvents {
            start: Instant::now(),
            at_ms: Default::default(),
        }
    }
}

impl LastEvents {
    fn slot(&self, resource: Resource) -> Option<&AtomicU64> {
        let i = Resource::WATCHED.iter().position(|r| *r == resource)?;
        Some(&self.at_ms[i])
    }

    fn note(&self, resource: Resource) {
        if let Some(slot) = self.slot(resource) {
            let ms = self.start.elapsed().as_millis() as u64 + 1;
            slot.store(ms, Ordering::Relaxed);
        }
    }

    /// Seconds since `resource`'s watch last delivered, if it ever did.
    fn age(&self, resource: Resource) -> Option<f64> {
        let at = self
            .slot(resource)?
            .load(Ordering::Relaxed)
            .checked_sub(1)?;
        let now = self.start.elapsed().as_millis() as u64;
        Some(now.saturating_sub(at) as f64 / 1000.0)
    }
}

impl Collector for LastEvents {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "kube_watch_event_age_seconds",
            "Seconds since each watch last delivered an event (a list, a change or a relist); grows in a quiet cluster too, so alert on it together with wsgate_kube_watches_healthy",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for resource in Resource::WATCHED {
            if let Some(age) = self.age(resource) {
                let label = ResourceLabel { resource };
                ConstGauge::new(age).encode(family.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

impl KubeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(Arc::clone(&self.last_events)));
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

    /// A watch delivered an event: the watches are healthy again.
    pub fn watch_event(&self, resource: Resource) {
        self.watches_healthy.set(1);
        self.last_events.note(resource);
    }

    /// Seconds since `resource`'s watch last delivered an event.
    pub fn watch_event_age(&self, resource: Resource) -> Option<f64> {
        self.last_events.age(resource)
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
        kube.watch_event(Resource::Service);
        let text = metrics.encode();
        assert!(
            text.lines()
                .any(|l| l
                    .starts_with("wsgate_kube_watch_event_age_seconds{resource=\"Service\"} 0.")),
            "{text}"
        );
        assert!(!text.contains("wsgate_kube_watch_event_age_seconds{resource=\"WsRoute\"}"));
        for line in [
            "wsgate_kube_watch_errors_total{resource=\"EndpointSlice\"} 1",
            "wsgate_kube_watch_relists_total{resource=\"WsRoute\"} 1",
            "wsgate_kube_watches_healthy 1",
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
