//! compile(model) -> RouteTable: Ocelot templates, matching, priorities; atomic publication.
//!
//! `compile` is pure: routes in, an immutable `RouteTable` plus per-route problems out.
//! `Publisher` swaps tables atomically; a connection keeps the `Arc<RouteTable>` it was
//! accepted under. Template rules are in `template.rs`, host rules in `model/host.rs`
//! (`host.rs` reads requests' `Host`), backend TLS settings in `backend_tls.rs`, and the
//! order among several matching routes on `RouteTable::find`. In short:
//! - `/api/{version}/{room}`: one non-empty segment per placeholder; `v{version}` and
//!   `{a}-{b}` embed placeholders in a segment; a final `{rest}` is a catch-all (slashes
//!   included, may be empty: `/{everything}` matches `/`);
//! - `?room={room}` requires and captures a query parameter, `?{all}` the whole query;
//! - a template ending in `/` matches with or without the trailing slash, others do not
//!   match an extra one (Ocelot);
//! - literals compare ASCII-case-insensitively unless the route is case-sensitive;
//!   captured values are the request's bytes, undecoded.

pub mod admission;
mod backend_tls;
mod certs;
mod compile;
mod find;
mod host;
mod publish;
pub(crate) mod template;

pub use admission::Admission;
pub use backend_tls::{BackendRoots, UpstreamTls, UpstreamTlsError};
pub use certs::CertificateMap;
#[cfg(test)]
pub(crate) use compile::compiles_on_this_thread;
pub use compile::{compile, compile_from};
pub use publish::{Prepared, Published, Publisher};
pub use template::TemplateError;

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

use crate::balance::{BalanceState, Balancer};
use crate::model::Route;
use crate::telemetry::{Metrics, RouteMetrics};

use compile::Parsed;
use find::HostIndex;
use template::Captures;

/// What `compile` needs besides the routes: where per-route metric handles and the
/// balancers' lasting state (endpoint loads, sticky key, SignalR pins) come from, and the
/// trust anchors of `wss` backends (loaded once, before any compile).
pub struct CompileContext<'a> {
    pub metrics: &'a Metrics,
    pub balance: &'a BalanceState,
    pub backend_roots: &'a BackendRoots,
}

/// One generation of routes, immutable once compiled.
#[derive(Debug)]
pub struct RouteTable {
    generation: u64,
    routes: Vec<CompiledRoute>,
    index: HostIndex,
    certificates: CertificateMap,
    /// Counts this generation in `wsgate_route_tables_alive` from its publication until it
    /// is freed (its last connection ended).
    alive: Option<AliveTable>,
}

/// One published generation in `wsgate_route_tables_alive`, until dropped with its table.
#[derive(Debug)]
struct AliveTable(Gauge);

impl AliveTable {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        AliveTable(gauge)
    }
}

impl Drop for AliveTable {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RouteTable {
    /// Generation 0: no routes, every request is unmatched.
    pub fn empty() -> Self {
        RouteTable {
            generation: 0,
            routes: Vec::new(),
            index: HostIndex::default(),
            certificates: CertificateMap::default(),
            alive: None,
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The accepted routes in declaration order (`order`, then id).
    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }

    /// The certificates the TLS listener serves with this generation, by SNI.
    pub fn certificates(&self) -> &CertificateMap {
        &self.certificates
    }

    /// Sets the certificate for handshakes no route's host matches (and without SNI).
    pub fn set_default_certificate(&mut self, cert: Option<crate::model::ServerCertificate>) {
        self.certificates.set_default(cert);
    }
}

/// A route with everything the data plane needs resolved: balancer, metric handles and
/// parsed templates. The parts behind `Arc`s are shared with the previous and next table
/// generations for as long as the route does not change (`compile_from`).
#[derive(Debug)]
pub struct CompiledRoute {
    pub route: Arc<Route>,
    pub balancer: Arc<Balancer>,
    pub metrics: RouteMetrics,
    /// TLS towards the backends of a `wss` route; `None` for `ws`.
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    parsed: Arc<Parsed>,
    /// What the route's limits count (connections, clients' request windows), handed on
    /// from the previous generation by route id, changed or not, so a reload resets nothing.
    pub admission: Arc<Admission>,
}

impl CompiledRoute {
    /// Placeholder names of the upstream template, in template order.
    pub fn placeholders(&self) -> &[String] {
        &self.parsed.upstream.names
    }
}

/// The route a request matched and where its placeholders lie in the request.
#[derive(Debug)]
pub struct RouteMatch<'t, 'r> {
    pub route: &'t CompiledRoute,
    /// `route`'s position in `RouteTable::routes`, so a relay can hold the table generation
    /// (`Arc<RouteTable>`) and find its route again without cloning the route's handles.
    pub index: usize,
    path: &'r str,
    query: Option<&'r str>,
    captures: Captures,
}

impl<'t, 'r> RouteMatch<'t, 'r> {
    /// Downstream path filled from the captures, plus the query string to send
    /// (e.g. `/ws/42?x=1`); see `DownstreamTemplate::render` for Ocelot's query rules.
    pub fn downstream_path_and_query(&self) -> String {
        self.route.parsed.downstream.render(
            &self.route.parsed.upstream.names,
            &self.captures,
            self.path,
            self.query,
        )
    }

    /// The raw (undecoded) value captured for `{name}`.
    pub fn capture(&self, name: &str) -> Option<&'r str> {
        let idx = self
            .route
            .parsed
            .upstream
            .names
            .iter()
            .position(|n| n == name)?;
        self.captures.get(idx)?.text(self.path, self.query)
    }

    /// Every placeholder with its raw value, in template order.
    pub fn captures(&self) -> impl Iterator<Item = (&'t str, &'r str)> + '_ {
        let (path, query) = (self.path, self.query);
        self.route
            .parsed
            .upstream
            .names
            .iter()
            .zip(self.captures.iter())
            .map(move |(n, s)| (n.as_str(), s.text(path, query).unwrap_or("")))
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
