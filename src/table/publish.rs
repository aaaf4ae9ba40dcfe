//! Atomic publication of route tables: one `ArcSwap` holds the table serving new requests.
//!
//! A reload compiles once: `prepare` compiles the routes into a table and its problems,
//! the caller looks at the problems (standalone refuses a file with any), then `swap`
//! serves that same table. `publish` is both in one, for sources that serve whatever
//! compiles (the cluster, whose problems become status conditions).

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{compile_from, AliveTable, BackendRoots, CompileContext, RouteTable};
use crate::balance::{BalanceState, StickyKey};
use crate::model::{Route, RouteProblem, ServerCertificate};
use crate::telemetry::Metrics;

/// The outcome of one `Publisher::publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub generation: u64,
    pub problems: Vec<RouteProblem>,
}

/// A compiled table not yet serving: its problems decide whether to `swap` it in.
#[derive(Debug)]
pub struct Prepared {
    pub(super) table: RouteTable,
    problems: Vec<RouteProblem>,
}

impl Prepared {
    /// The routes `compile` left out of this table.
    pub fn problems(&self) -> &[RouteProblem] {
        &self.problems
    }
}

/// Holds the current table and swaps it atomically. A connection keeps the `Arc` it was
/// accepted under, so a new table never touches a live connection.
pub struct Publisher {
    current: ArcSwap<RouteTable>,
    metrics: Arc<Metrics>,
    balance: BalanceState,
    backend_roots: BackendRoots,
    generation: watch::Sender<u64>,
    /// Served when no route's host matches the SNI; part of every table compiled from now on.
    default_certificate: Mutex<Option<ServerCertificate>>,
    // Serialises swaps so generations are published in the order they are numbered.
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
            backend_roots: BackendRoots::none(),
            generation: watch::Sender::new(0),
            default_certificate: Mutex::new(None),
            publishing: Mutex::new(()),
        }
    }

    /// Verifies `wss` backends against `roots` (the platform's, loaded at start-up) plus
    /// their route's CA. Without it only the route's CA is trusted (tests, the demo).
    pub fn with_backend_roots(mut self, roots: BackendRoots) -> Self {
        self.backend_roots = roots;
        self
    }

    /// The table serving new requests.
    pub fn current(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Compiles `routes` into a table that is not served yet. Routes unchanged since the
    /// current table keep what it compiled for them (`compile_from`), so one changed route
    /// among thousands costs little more than the index. Dropping the result discards it.
    pub fn prepare(&self, routes: &[Route]) -> Prepared {
        let previous = self.current.load_full();
        let ctx = CompileContext {
            metrics: &self.metrics,
            balance: &self.balance,
            backend_roots: &self.backend_roots,
        };
        // The generation is assigned by `swap`; this number only has to be distinct.
        let (table, problems) = compile_from(previous.generation() + 1, routes, &ctx, &previous);
        Prepared { table, problems }
    }

    /// Serves `prepared` as generation previous + 1, updates the table metrics and tells
    /// subscribers; returns the routes it left out (the problems `prepare` found).
    pub fn swap(&self, prepared: Prepared) -> Published {
        let serial = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        self.swap_serialized(prepared, &serial)
    }

    /// `prepare` then `swap`: serves whatever compiles, and returns the routes left out.
    /// Holds the publishing lock throughout, so of two concurrent publishes the later
    /// compiles on the earlier's table and serves last.
    pub fn publish(&self, routes: &[Route]) -> Published {
        let serial = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        self.swap_serialized(self.prepare(routes), &serial)
    }

    fn swap_serialized(&self, prepared: Prepared, _serial: &MutexGuard<'_, ()>) -> Published {
        let Prepared {
            mut table,
            problems,
        } = prepared;
        let generation = self.current.load().generation() + 1;
        table.generation = generation;
        table.alive = Some(AliveTable::new(self.metrics.tables_alive.clone()));
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

    /// Sets the default certificate for the tables swapped in from now on (call `publish`
    /// or `swap` afterwards to serve it).
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
