//! Metrics, logging set-up and the admin server (`/metrics`, `/healthz`, `/readyz`).

pub mod admin;
mod drain;
pub mod logging;
mod metrics;

pub use drain::DrainMetrics;
pub use metrics::{
    CloseTo, Direction, FailureReason, Metrics, OffloadMetrics, RefusalReason, RouteMetrics,
};
