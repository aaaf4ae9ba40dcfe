//! compile(model) -> RouteTable: Ocelot templates, matching, priorities; atomic publication.
//!
//! `compile` is pure: routes in, an immutable `RouteTable` plus per-route problems out.
//! `Publisher` swaps tables atomically; a connection keeps the `Arc<RouteTable>` it was
//! accepted under. Template rules are in `template.rs`, host rules in `host.rs`, and the
//! order among several matching routes on `RouteTable::find`. In short:
//! - `/api/{version}/{room}`: one non-empty segment per placeholder; `v{version}` and
//!   `{a}-{b}` embed placeholders in a segment; a final `{rest}` is a catch-all (slashes
//!   included, may be empty: `/{everything}` matches `/`);
//! - `?room={room}` requires and captures a query parameter, `?{all}` the whole query;
//! - a template ending in `/` matches with or without the trailing slash, others do not
//!   match an extra one (Ocelot);
//! - literals compare ASCII-case-insensitively unless the route is case-sensitive;
//!   captured values are the request's bytes, undecoded.

mod compile;
mod find;
mod host;
mod publish;
mod template;

pub use compile::compile;
pub use publish::{Published, Publisher};

use crate::balance::{Balancer, EndpointLoads};
use crate::model::{Route, RouteId};
use crate::telemetry::{Metrics, RouteMetrics};

use find::HostIndex;
use template::{Captures, DownstreamTemplate, UpstreamTemplate};

/// What `compile` needs besides the routes: where per-route metric handles and endpoint
/// load counters come from.
pub struct CompileContext<'a> {
    pub metrics: &'a Metrics,
    pub loads: &'a EndpointLoads,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemReason {
    /// A template or host pattern cannot be parsed, or the downstream template uses a
    /// placeholder the upstream one does not capture.
    InvalidTemplate,
    /// Another route with the same host, template and an overlapping method was declared
    /// first.
    Conflicted,
}

/// Why one route was left out of the table; becomes a status condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{route}: {field}: {message}")]
pub struct RouteProblem {
    pub route: RouteId,
    pub reason: ProblemReason,
    pub field: String,
    pub message: String,
}

/// One generation of routes, immutable once compiled.
#[derive(Debug)]
pub struct RouteTable {
    generation: u64,
    routes: Vec<CompiledRoute>,
    index: HostIndex,
}

impl RouteTable {
    /// Generation 0: no routes, every request is unmatched.
    pub fn empty() -> Self {
        RouteTable {
            generation: 0,
            routes: Vec::new(),
            index: HostIndex::default(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The accepted routes in declaration order (`order`, then id).
    pub fn routes(&self) -> &[CompiledRoute] {
        &self.routes
    }
}

/// A route with everything the data plane needs resolved: balancer, metric handles and
/// parsed templates.
#[derive(Debug)]
pub struct CompiledRoute {
    pub route: Route,
    pub balancer: Balancer,
    pub metrics: RouteMetrics,
    upstream: UpstreamTemplate,
    downstream: DownstreamTemplate,
}

impl CompiledRoute {
    /// Placeholder names of the upstream template, in template order.
    pub fn placeholders(&self) -> &[String] {
        &self.upstream.names
    }
}

/// The route a request matched and where its placeholders lie in the request.
#[derive(Debug)]
pub struct RouteMatch<'t, 'r> {
    pub route: &'t CompiledRoute,
    path: &'r str,
    query: Option<&'r str>,
    captures: Captures,
}

impl<'t, 'r> RouteMatch<'t, 'r> {
    /// Downstream path filled from the captures, plus the query string to send
    /// (e.g. `/ws/42?x=1`); see `DownstreamTemplate::render` for Ocelot's query rules.
    pub fn downstream_path_and_query(&self) -> String {
        self.route.downstream.render(
            &self.route.upstream.names,
            &self.captures,
            self.path,
            self.query,
        )
    }

    /// The raw (undecoded) value captured for `{name}`.
    pub fn capture(&self, name: &str) -> Option<&'r str> {
        let idx = self.route.upstream.names.iter().position(|n| n == name)?;
        self.captures.get(idx)?.text(self.path, self.query)
    }

    /// Every placeholder with its raw value, in template order.
    pub fn captures(&self) -> impl Iterator<Item = (&'t str, &'r str)> + '_ {
        let (path, query) = (self.path, self.query);
        self.route
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
