//! Metrics, logging set-up and the admin server (`/metrics`, `/healthz`, `/readyz`); W3C
//! trace context and the opt-in OTLP span export.

pub mod access_log;
pub mod admin;
mod drain;
pub mod logging;
mod metrics;
pub mod otlp;
pub mod trace_context;

pub use drain::DrainMetrics;
pub use metrics::{
    CloseSide, CloseTo, Direction, FailureReason, MessageSizeHistogram, Metrics, MetricsOptions,
    OffloadMetrics, RefusalReason, Relayed, RouteMetrics, MESSAGE_SIZE_BOUNDS,
};
