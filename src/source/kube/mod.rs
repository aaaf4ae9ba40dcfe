//! Kubernetes source: reflectors over WsRoutes, EndpointSlices and Services, EndpointSlice
//! resolution, status computation and the status writer behind a Lease.
//!
//! - `resolve`: Service + EndpointSlices → endpoints.
//! - `index`: reflector stores → `Vec<Route>` + one `RouteReport` per WsRoute (pure).
//! - `status`: report + table verdict → `WsRouteStatus` (pure).
//! - `publish`: the seam to the route table (`RoutePublisher`).
//! - `controller`: reflectors, rebuild schedule, publish, readiness (`run`, `Reconcile`).
//! - `writer` + `lease`: status patches and Events, only by the Lease holder.

mod auth;
mod backoff;
mod controller;
mod index;
mod lease;
mod metrics;
mod publish;
mod resolve;
mod secrets;
mod status;
mod writer;

pub use crate::api::crd_yaml;
pub use auth::JWKS_KEY;
pub use controller::{run, Error, KubeConfig, RebuildSchedule, Reconcile};
pub use index::{
    translate, translate_cached, BackendRef, GuardedRoute, InvalidRoute, RouteReport, Stores,
    TranslateCache, Translation,
};
pub use lease::{decide, run_lease, LeaseConfig, LeaseDecision};
pub use metrics::{KubeMetrics, PatchOutcome, Resource};
pub use publish::RoutePublisher;
pub use resolve::{Backends, Unresolved, SERVICE_NAME_LABEL};
pub use secrets::{strip_unusable, CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY, TLS_SECRET_TYPE};
pub use status::{compute_status, same_ignoring_timestamps};
pub use writer::{carry_transition_times, DesiredStatus, DesiredStatuses, StatusWriter};

#[cfg(test)]
mod tests;
