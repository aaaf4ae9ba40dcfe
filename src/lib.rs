//! wsgate: a Kubernetes ingress-style gateway for WebSocket traffic.
//!
//! The flow (see DESIGN.md): sources → model → `table::compile` → `RouteTable`
//! (swapped atomically) → proxy (router → balancer → upstream → relay).
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod balance;
pub mod echo;
pub mod model;
pub mod proxy;
pub mod source;
pub mod table;
pub mod telemetry;
