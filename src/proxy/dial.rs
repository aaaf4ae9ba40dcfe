//! Opening a TCP connection to one of a route's endpoints: the balancer's choice first,
//! then the next ones when a connect fails, before any byte went upstream.

use std::time::Instant;

use tokio::net::TcpStream;

use super::Error;
use crate::balance::Backend;
use crate::table::CompiledRoute;

pub struct Dialed<'t> {
    pub stream: TcpStream,
    pub backend: &'t Backend,
}

pub async fn dial(route: &CompiledRoute) -> Result<Dialed<'_>, Error> {
    let timeout = route.route.timeouts.connect;
    let mut last: Option<Error> = None;
    for backend in route.balancer.pick() {
        let ep = &backend.endpoint;
        let started = Instant::now();
        let attempt = async {
            match ep.addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect((ep.host.as_str(), ep.port)).await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(stream)) => {
                route
                    .metrics
                    .connect_seconds
                    .observe(started.elapsed().as_secs_f64());
                let _ = stream.set_nodelay(true);
                return Ok(Dialed { stream, backend });
            }
            Ok(Err(source)) => {
                tracing::warn!(route = %route.route.id, endpoint = %ep.authority(), error = %source, "connect to backend failed");
                last = Some(Error::ConnectFailed {
                    route: route.route.id.0.clone(),
                    last: ep.authority(),
                    source,
                });
            }
            Err(_) => {
                tracing::warn!(route = %route.route.id, endpoint = %ep.authority(), timeout_ms = timeout.as_millis() as u64, "connect to backend timed out");
                last = Some(Error::ConnectTimeout {
                    route: route.route.id.0.clone(),
                    last: ep.authority(),
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::NoEndpoint {
        route: route.route.id.0.clone(),
    }))
}
