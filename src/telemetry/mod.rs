//! Metrics, logging set-up and the admin server (`/metrics`, `/healthz`, `/readyz`); W3C
//! trace context and the opt-in OTLP span export.

pub mod admin;
mod drain;
pub mod logging;
mod metrics;
pub mod otlp;
pub mod trace_context;

pub use drain::DrainMetrics;
pub use metrics::{
    CloseTo, Direction, FailureReason, Metrics, MetricsOptions, OffloadMetrics, RefusalReason,
    Relayed, RouteMetrics,
};
