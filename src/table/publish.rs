//! Atomic publication of route tables: one `ArcSwap` holds the table serving new requests.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{compile_from, CompileContext, RouteProblem, RouteTable};
use crate::balance::{BalanceState, StickyKey};
use crate::model::{Route, ServerCertificate};
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
    balance: BalanceState,
    generation: watch::Sender<u64>,
    /// Served when no route's host matches the SNI; part of every table compiled from now on.
    default_certificate: Mutex<Option<ServerCertificate>>,
    // Serialises publishes so generations are published in the order they are numbered.
    publishing: Mutex<()>,
}

impl Publisher {
    /// Starts with `RouteTable::empty()` (generation 0) and a random sticky-session key.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::with_sticky_key(metrics, StickyKey::random())
    }

    /// As `new`, with the key that signs sticky-session cookies (shared by replicas).
    pub fn with_sticky_key(metrics: Arc<Metrics>, key: StickyKey) -> Self {
        Publisher {
            current: ArcSwap::from_pointee(RouteTable::empty()),
            metrics,
            balance: BalanceState::new(key),
            generation: watch::Sender::new(0),
            default_certificate: Mutex::new(None),
            publishing: Mutex::new(()),
        }
    }

    /// The table serving new requests.
    pub fn current(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Compiles `routes` as generation previous + 1, swaps it in, updates the table metrics
    /// and tells subscribers; returns the routes left out. Routes unchanged since the
    /// current table keep what it compiled for them (`compile_from`), so one changed route
    /// among thousands costs little more than the index.
    pub fn publish(&self, routes: &[Route]) -> Published {
        let _serial = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.current.load_full();
        let generation = previous.generation() + 1;
        let ctx = CompileContext {
            metrics: &self.metrics,
            balance: &self.balance,
        };
        let (mut table, problems) = compile_from(generation, routes, &ctx, &previous);
        drop(previous);
        table.set_default_certificate(
            self.default_certificate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        );
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

    /// Sets the default certificate for the tables published from now on (call `publish`
    /// afterwards to serve it).
    pub fn set_default_certificate(&self, cert: Option<ServerCertificate>) {
        *self
            .default_certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = cert;
    }

    /// The generation of the current table; changes after every `publish`.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
