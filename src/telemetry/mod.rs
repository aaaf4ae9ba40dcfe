//! Metrics, logging set-up and the admin server (`/metrics`, `/healthz`, `/readyz`).

pub mod access_log;
pub mod admin;
pub mod logging;
mod metrics;

pub use metrics::{
    CloseTo, Direction, FailureReason, Metrics, OffloadMetrics, RefusalReason, RouteMetrics,
};
