//! Atomic publication of route tables: one `ArcSwap` holds the table serving new requests.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{compile, CompileContext, RouteProblem, RouteTable};
use crate::balance::EndpointLoads;
use crate::model::Route;
use crate::telemetry::Metrics;

/// The outcome of one `Publisher::publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub generation: u64,
    pub problems: Vec<RouteProblem>,
}

/// Holds the current table and swaps it atomically. A connection keeps the `Arc` it was
/// accepted under, so a new table never touches a live connection.
pub struct Publisher {
    current: ArcSwap<RouteTable>,
    metrics: Arc<Metrics>,
    loads: EndpointLoads,
    generation: watch::Sender<u64>,
    // Serialises publishes so generations are published in the order they are numbered.
    publishing: Mutex<()>,
}

impl Publisher {
    /// Starts with `RouteTable::empty()` (generation 0).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Publisher {
            current: ArcSwap::from_pointee(RouteTable::empty()),
            metrics,
            loads: EndpointLoads::default(),
            generation: watch::Sender::new(0),
            publishing: Mutex::new(()),
        }
    }

    /// The table serving new requests.
    pub fn current(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Compiles `routes` as generation previous + 1, swaps it in, updates the table metrics
    /// and tells subscribers; returns the routes left out.
    pub fn publish(&self, routes: &[Route]) -> Published {
        let _serial = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.current.load().generation() + 1;
        let ctx = CompileContext {
            metrics: &self.metrics,
            loads: &self.loads,
        };
        let (table, problems) = compile(generation, routes, &ctx);
        self.current.store(Arc::new(table));
        self.metrics
            .table_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.metrics.table_reloads_ok.inc();
        self.metrics
            .route_problems
            .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
        self.generation.send_replace(generation);
        Published {
            generation,
            problems,
        }
    }

    /// The generation of the current table; changes after every `publish`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
