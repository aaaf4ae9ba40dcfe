//! Metrics, logging set-up and the admin server (`/metrics`, `/healthz`, `/readyz`).

pub mod access_log;
pub mod admin;
pub mod logging;
mod metrics;

pub use metrics::{
    CloseSide, CloseTo, Direction, FailureReason, MessageSizeHistogram, Metrics, OffloadMetrics,
    RefusalReason, RouteMetrics, MESSAGE_SIZE_BOUNDS,
};
