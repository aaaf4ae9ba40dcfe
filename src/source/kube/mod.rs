//! Kubernetes source: reflectors over WsRoutes, EndpointSlices and Services, EndpointSlice
//! resolution, status computation and the status writer behind a Lease.
//!
//! - `resolve`: Service + EndpointSlices → endpoints.
//! - `index`: reflector stores → `Vec<Route>` + one `RouteReport` per WsRoute (pure).
//! - `status`: report + table verdict → `WsRouteStatus` (pure).
//! - `publish`: the seam to the route table (`RoutePublisher`).

mod index;
mod publish;
mod resolve;
mod status;

pub use crate::api::crd_yaml;
pub use index::{translate, BackendRef, RouteReport, Stores, Translation};
pub use publish::{ProblemKind, PublishOutcome, RoutePublisher, TableProblem};
pub use resolve::{Backends, Unresolved, SERVICE_NAME_LABEL};
pub use status::{compute_status, same_ignoring_timestamps};

#[cfg(test)]
mod tests;
