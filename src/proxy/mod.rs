//! The data plane: listeners, handshake, upstream dial, relay and HTTP pass-through.
//!
//! Per request: accept → parse (hyper) → `RouteTable::find` → balancer pick → dial with
//! retry → upstream handshake → 101 to the client → relay; or, for plain HTTP, the
//! request streamed to the backend and the response streamed back.

pub mod drain;
pub mod frame;
pub mod relay;
pub mod tls;

pub(crate) mod connection;
mod dial;
mod error;
mod handshake;
mod headers;
mod http;
mod listener;
mod service;
mod signalr;
pub(crate) mod upgrade;
mod upstream;
mod websocket;

pub use drain::{Drain, DrainSignal};
pub use error::Error;
pub use listener::{serve, serve_tls};
pub use relay::{Offload, OffloadOptions};

use std::sync::Arc;

use crate::table::Publisher;
use crate::telemetry::Metrics;

/// What every connection of the data plane shares: the current route table, metrics and
/// the drain signal. Nothing in it is locked per message.
pub struct Gateway {
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    /// Relay threads for busy plain-TCP relays; `None` keeps every relay on the runtime.
    pub offload: Option<Arc<Offload>>,
}

impl Gateway {
    pub fn new(
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        drain: Drain,
        offload: OffloadOptions,
    ) -> Arc<Self> {
        let offload = Offload::new(offload, metrics.offload());
        Arc::new(Gateway {
            publisher,
            metrics,
            drain,
            offload,
        })
    }
}
