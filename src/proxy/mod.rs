//! The data plane: listeners, handshake, upstream dial, relay and HTTP pass-through.
//!
//! Per connection: accept (`listener`, in the connection's span) → first head read by
//! `connection` → for a WebSocket upgrade the one request sequence (`websocket`: validate →
//! `RouteTable::find` → balancer pick → dial with retry (`upstream`, `dial`) → upstream
//! handshake (`upgrade`) → answer → relay), its answer written by hand on a first request
//! or through hyper (`service`) on a later one; plain HTTP goes through hyper and `http`,
//! streamed both ways.
//!
//! Inside `proxy/` modules import only downward (no cycles), bottom first:
//! - `random`, `stream`, `headers`, `drain`, `frame`, `signalr`, `target`, `refusal_log`,
//!   `proxy_protocol`: import no sibling (`drain` only `random`); `error` imports only `target`, `client_addr` only `headers`;
//! - `auth` (a route's authentication on a request): imports `error` only;
//! - `request`, `handshake`, `dial`, `tls`, `admit`: the request context and the steps'
//!   pieces (`admit`: the limits checked before a backend is dialled);
//! - `access`: who may use a route (IP lists, `Origin`), on the request context;
//! - `rebalance` (the periodic rebalancer of issue 21): imports `drain` only;
//! - `relay`, `upgrade`, `upstream`: a relay, the upgrade exchange, opening a backend;
//! - `websocket` (the request sequence) and `http` (plain HTTP);
//! - `service` (the hyper path), then `connection` (the direct path), then `listener`.

pub mod drain;
pub mod frame;
pub mod relay;
pub mod tls;

mod access;
mod admit;
pub(crate) mod auth;
mod client_addr;
pub(crate) mod connection;
mod dial;
mod error;
mod handshake;
mod headers;
mod http;
#[cfg(test)]
mod layering;
mod listener;
mod proxy_protocol;
mod random;
pub mod rebalance;
mod refusal_log;
mod request;
mod service;
mod signalr;
mod stream;
pub(crate) mod target;
pub(crate) mod upgrade;
mod upstream;
mod websocket;

pub use client_addr::ClientAddressOptions;
pub use drain::plan::DrainDefaults;
pub use drain::{Drain, DrainSignal, LiveRelays};
pub use error::Error;
pub use listener::{serve, serve_tls};
pub use relay::{Offload, OffloadOptions};

use std::sync::Arc;

use crate::table::admission::ConnectionCount;
use crate::table::Publisher;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::Metrics;

/// What every connection of the data plane shares: the current route table, metrics and
/// the drain signal. Nothing in it is locked per message.
pub struct Gateway {
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    /// Relay threads for busy plain-TCP relays; `None` keeps every relay on the runtime.
    pub offload: Option<Arc<Offload>>,
    /// `--max-connections`: upgraded connections plus plain HTTP requests in flight.
    pub max_connections: Option<u32>,
    /// What `max_connections` counts (kept only while it is set).
    pub connections: Arc<ConnectionCount>,
    /// Whose `X-Forwarded-For` is believed (`--trusted-proxies`).
    pub client_address: ClientAddressOptions,
    // Gentle drains and rebalancing (issue 21).
    /// The drain budget and jitter of routes without their own (`--drain-timeout`,
    /// `--drain-jitter`).
    pub drain_defaults: DrainDefaults,
    /// Every live relay by route and endpoint, with its control handle.
    pub live: Arc<LiveRelays>,
    /// `--access-log`: where each connection's and request's line goes (None: off).
    pub access_log: Option<AccessLog>,
}

/// The operator's choices a `Gateway` is made with (the data plane's command-line options).
#[derive(Default)]
pub struct GatewayOptions {
    /// `--relay-threads` and the rest of the relay offload.
    pub offload: OffloadOptions,
    /// `--max-connections`.
    pub max_connections: Option<u32>,
    /// `--trusted-proxies`, `--proxy-protocol`.
    pub client_address: ClientAddressOptions,
    /// `--drain-timeout`, `--drain-jitter`.
    pub drain_defaults: DrainDefaults,
    /// `--access-log` (started: `AccessLog::start`), None when off.
    pub access_log: Option<AccessLog>,
}

impl Gateway {
    pub fn new(
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        drain: Drain,
        options: GatewayOptions,
    ) -> Arc<Self> {
        let GatewayOptions {
            offload,
            max_connections,
            client_address,
            drain_defaults,
            access_log,
        } = options;
        let offload = Offload::new(offload, metrics.offload());
        Arc::new(Gateway {
            publisher,
            metrics,
            drain,
            offload,
            max_connections,
            connections: Arc::default(),
            client_address,
            drain_defaults,
            live: Arc::default(),
            access_log,
        })
    }
}
