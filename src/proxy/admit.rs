//! The limits checked before a backend is dialled, on both request paths: the route's
//! `rateLimitOptions` (handshakes and plain HTTP requests per client), then for a WebSocket
//! upgrade the route's `maxConnectionsPerClient` and `maxConnections`, then the process's
//! `--max-connections` (upgraded connections and plain HTTP requests in flight). What the
//! checks count lives in the route's `table::Admission` (kept across reloads) and the
//! gateway's `ConnectionCount`; an `Admitted` holds the slots it took and gives them back
//! when dropped, however the request or connection ends.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::error::{Error, Limited};
use super::Gateway;
use crate::table::admission::{ConnectionCount, ConnectionRefusal, ConnectionSlot};
use crate::table::CompiledRoute;

/// What one admitted request or connection holds until it ends.
#[derive(Debug, Default)]
pub struct Admitted {
    route: Option<ConnectionSlot>,
    process: Option<ProcessSlot>,
}

/// A slot of `--max-connections`.
#[derive(Debug)]
struct ProcessSlot(Arc<ConnectionCount>);

impl Drop for ProcessSlot {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Admitted {
    /// Whether this holds nothing (no limit applied), so a plain HTTP response need not
    /// carry it.
    pub fn is_empty(&self) -> bool {
        self.route.is_none() && self.process.is_none()
    }
}

/// Admits a WebSocket upgrade of `client` on `route`.
pub fn upgrade(gw: &Gateway, client: IpAddr, route: &CompiledRoute) -> Result<Admitted, Error> {
    rate(client, route)?;
    let limits = &route.route.limits;
    let slot = route
        .admission
        .try_connect(
            client,
            limits.max_connections,
            limits.max_connections_per_client,
        )
        .map_err(|refusal| {
            let route = route.route.id.0.clone();
            Error::Limited(match refusal {
                ConnectionRefusal::Route { limit } => Limited::RouteConnections { route, limit },
                ConnectionRefusal::Client { limit } => Limited::ClientConnections { route, limit },
                ConnectionRefusal::ClientTableFull => Limited::ClientTableFull { route },
            })
        })?;
    Ok(Admitted {
        route: Some(slot),
        process: process(gw)?,
    })
}

/// Admits a plain HTTP request of `client` on `route`.
pub fn request(gw: &Gateway, client: IpAddr, route: &CompiledRoute) -> Result<Admitted, Error> {
    rate(client, route)?;
    Ok(Admitted {
        route: None,
        process: process(gw)?,
    })
}

fn rate(client: IpAddr, route: &CompiledRoute) -> Result<(), Error> {
    let Some(rule) = &route.route.rate_limit else {
        return Ok(());
    };
    route
        .admission
        .check_rate(client, rule, now_ms())
        .map_err(|refused| {
            Error::Limited(Limited::Rate {
                route: route.route.id.0.clone(),
                limit: rule.limit,
                period_ms: u64::try_from(rule.period.as_millis()).unwrap_or(u64::MAX),
                // Whole seconds, rounded up: a client retrying on time is counted afresh.
                retry_after_secs: refused.retry_after_ms.div_ceil(1000).max(1),
            })
        })
}

fn process(gw: &Gateway) -> Result<Option<ProcessSlot>, Error> {
    let Some(limit) = gw.max_connections else {
        return Ok(None);
    };
    if gw.connections.try_acquire(Some(limit)) {
        Ok(Some(ProcessSlot(Arc::clone(&gw.connections))))
    } else {
        Err(Error::Limited(Limited::ProcessConnections { limit }))
    }
}

/// Milliseconds on a monotonic clock, for the rate windows.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let elapsed = START.get_or_init(Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}
