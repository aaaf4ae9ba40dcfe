//! Live-connection counts per endpoint that outlive table generations, so
//! `LeastConnection` keeps its view across reloads and a scale-out sends new sockets to
//! the new pods.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::model::Endpoint;

/// Counter of live connections to one endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointLoad(Arc<AtomicUsize>);

impl EndpointLoad {
    pub fn current(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one connection until the guard drops.
    pub fn begin(&self) -> ConnectionGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }
}

/// Holds one unit of an endpoint's load for as long as a connection lives.
#[derive(Debug)]
pub struct ConnectionGuard(EndpointLoad);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Registry consulted only while compiling a table (never per connection): the same
/// `host:port` gets the same counter in every generation that still has it alive.
#[derive(Debug, Default)]
pub struct EndpointLoads {
    by_endpoint: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    map: HashMap<(String, u16), Weak<AtomicUsize>>,
    /// Sweep dead entries once the map reaches this size: twice the live count after the
    /// last sweep, so registering N endpoints costs O(N), not O(N²).
    sweep_at: usize,
}

impl EndpointLoads {
    pub fn for_endpoint(&self, e: &Endpoint) -> EndpointLoad {
        let mut counters = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
        let key = (e.host.clone(), e.port);
        if let Some(live) = counters.map.get(&key).and_then(Weak::upgrade) {
            return EndpointLoad(live);
        }
        // Forget counters no table or connection holds any more, so the map stays bounded
        // by the endpoints that exist.
        if counters.map.len() >= counters.sweep_at {
            counters.map.retain(|_, w| w.strong_count() > 0);
            counters.sweep_at = (counters.map.len() * 2).max(64);
        }
        let load = Arc::new(AtomicUsize::new(0));
        counters.map.insert(key, Arc::downgrade(&load));
        EndpointLoad(load)
    }
}
