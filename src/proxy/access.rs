//! Who may use a route, checked on every request once its route is known and before a
//! backend is dialled, on both request paths (docs/security.md): the client address
//! against the route's IP lists (`securityOptions`), then the `Origin` against its
//! `allowedOrigins`. The rules themselves are parsed and matched in `model::access`.
//!
//! `Origin`: a WebSocket upgrade must carry one of the allowed origins; one without
//! `Origin` is refused too (browsers always send it on a WebSocket, so a request without it
//! is not from a browser, and a route that lists origins admits only what it lists). Plain
//! HTTP (SignalR negotiate, SSE, long polling) is refused when it carries an `Origin` that
//! is not allowed; without one it passes, because browsers leave `Origin` out of
//! same-origin GETs. A request with two `Origin` headers is refused.

use http::{header, HeaderMap};

use super::error::{Error, OriginShown};
use super::request::RequestCtx;
use crate::table::CompiledRoute;

/// `Ok` when `route` admits this request (`upgrade`: a WebSocket handshake); else the
/// refusal (403), for `RequestCtx::failed` to count and log.
pub fn admit(
    route: &CompiledRoute,
    ctx: &RequestCtx,
    headers: &HeaderMap,
    upgrade: bool,
) -> Result<(), Error> {
    let r = &route.route;
    if let Some(rules) = &r.ip_rules {
        let client = ctx.peer.ip();
        if !rules.allows(client) {
            return Err(Error::IpDenied {
                route: r.id.0.clone(),
                client: client.to_canonical(),
            });
        }
    }
    if let Some(origins) = &r.allowed_origins {
        let mut sent = headers.get_all(header::ORIGIN).iter();
        let origin = sent.next();
        let allowed = match origin {
            None => !upgrade,
            // A request has one origin; two `Origin` headers are not a browser's.
            Some(_) if sent.next().is_some() => false,
            Some(v) => origins.iter().any(|p| p.matches(v.as_bytes())),
        };
        if !allowed {
            return Err(Error::Origin {
                route: r.id.0.clone(),
                origin: OriginShown::of(origin),
            });
        }
    }
    Ok(())
}
