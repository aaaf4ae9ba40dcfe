//! Load balancers: built once per route in `compile`, asked for an order of endpoints to
//! try for each new connection. `pick` returns a fallback order so the dial can retry the
//! next endpoint when a connect fails.

mod load;

pub use load::{ConnectionGuard, EndpointLoad, EndpointLoads};

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::model::{Endpoint, EndpointState, LoadBalancer};

/// An endpoint as the data plane holds it: the address plus its live-connection counter,
/// shared with every table generation that contains the same endpoint.
#[derive(Debug)]
pub struct Backend {
    pub endpoint: Endpoint,
    pub load: EndpointLoad,
}

/// A route's balancer over its ready endpoints. Terminating endpoints are kept out of
/// `ready` so they get no new connections.
#[derive(Debug)]
pub struct Balancer {
    kind: LoadBalancer,
    ready: Vec<Backend>,
    terminating: usize,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(kind: &LoadBalancer, endpoints: &[Endpoint], loads: &EndpointLoads) -> Self {
        let ready: Vec<Backend> = endpoints
            .iter()
            .filter(|e| e.state == EndpointState::Ready)
            .map(|e| Backend {
                endpoint: e.clone(),
                load: loads.for_endpoint(e),
            })
            .collect();
        Balancer {
            kind: kind.clone(),
            terminating: endpoints.len() - ready.len(),
            ready,
            next: AtomicUsize::new(0),
        }
    }

    pub fn ready(&self) -> &[Backend] {
        &self.ready
    }

    /// Endpoints that still serve existing connections but take no new ones.
    pub fn terminating(&self) -> usize {
        self.terminating
    }

    /// The order in which to try endpoints for one new connection: the balancer's choice
    /// first, then the others as fallbacks. Empty when no endpoint is ready.
    pub fn pick(&self) -> Pick<'_> {
        let n = self.ready.len();
        let first = if n == 0 {
            0
        } else {
            match self.kind {
                LoadBalancer::NoLoadBalancer => 0,
                LoadBalancer::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
                LoadBalancer::LeastConnection => self.least_loaded(),
            }
        };
        Pick {
            backends: &self.ready,
            first,
            taken: 0,
        }
    }

    fn least_loaded(&self) -> usize {
        // Ties rotate so equal loads spread instead of piling onto the first endpoint.
        let n = self.ready.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|i| (start + i) % n)
            .min_by_key(|&i| self.ready[i].load.current())
            .unwrap_or(0)
    }
}

/// Fallback order over a route's ready backends, starting at the balancer's choice.
pub struct Pick<'a> {
    backends: &'a [Backend],
    first: usize,
    taken: usize,
}

impl<'a> Iterator for Pick<'a> {
    type Item = &'a Backend;

    fn next(&mut self) -> Option<&'a Backend> {
        if self.taken >= self.backends.len() {
            return None;
        }
        let i = (self.first + self.taken) % self.backends.len();
        self.taken += 1;
        Some(&self.backends[i])
    }
}

#[cfg(test)]
mod tests;
