//! wsgate: a Kubernetes ingress-style gateway for WebSocket traffic.
//!
//! The flow (see DESIGN.md): sources → model → `table::compile` → `RouteTable`
//! (swapped atomically) → proxy (router → balancer → upstream → relay).
//!
//! Modules import only downward (checked by tests/layers.rs): api, telemetry (and echo,
//! a leaf) < model < balance < table < proxy, source < app; proxy and source never import
//! each other.
// One exception, allowed where it is: the traffic listener's TCP_DEFER_ACCEPT (app/server.rs),
// which neither stable std, socket2 nor nix exposes.
#![deny(unsafe_code)]

pub mod api;
pub mod app;
pub mod balance;
pub mod echo;
/// Entry points for the fuzz targets (`fuzz/`) and their corpus replay test; not an API.
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod proxy;
pub mod source;
pub mod table;
pub mod telemetry;
