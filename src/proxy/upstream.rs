//! Opening a backend connection, shared by the WebSocket and the plain HTTP paths: dial
//! (with retry) and TLS for `wss`/`https` routes (`connect`); for plain HTTP also the hyper
//! client handshake and the request sent with the route's time limit (`open`). The WebSocket
//! upgrade itself is `upgrade.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::dial::{dial, Greeting};
use super::error::{Error, Handshake, UpstreamProtocol};
use super::headers::{to_upstream, Forwarded};
use super::request::RequestCtx;
use super::stream::Stream;
use super::tls::upstream_stream;
use crate::balance::{Backend, ConnectionGuard, PickContext};
use crate::table::CompiledRoute;

/// A connected (and, for `wss`/`https` routes, TLS-wrapped) backend, before any HTTP.
pub struct Connected<'t> {
    pub stream: Stream,
    /// The greeting's bytes still to write (all of them behind TLS).
    pub unsent: Vec<u8>,
    pub backend: &'t Backend,
    /// `host:port`, for the `Host` header and logs.
    pub endpoint: Arc<str>,
    /// Counts this exchange as load on the endpoint until dropped.
    pub load: ConnectionGuard,
    /// The sticky-session cookie to hand the client, if the balancer assigned one.
    pub set_cookie: Option<HeaderValue>,
}

/// Dials the route's backend chosen for `pick` (retrying the next on failure) and completes
/// TLS for `wss`/`https` routes. A `greeting` (the first bytes, built for the chosen
/// endpoint) goes out with the connect where it can (plain TCP); the rest is `unsent`.
pub async fn connect<'t>(
    route: &'t CompiledRoute,
    pick: &PickContext<'_>,
    greeting: Option<Greeting<'_>>,
) -> Result<Connected<'t>, Error> {
    let tls = route.upstream_tls.is_some();
    let dialed = dial(route, pick, greeting.filter(|_| !tls)).await?;
    let backend = dialed.backend;
    let endpoint = dialed.endpoint;
    let load = backend.load.begin();
    let stream = upstream_stream(route, dialed.stream, &backend.endpoint).await?;
    let unsent = match greeting {
        Some(greeting) if tls => greeting(&endpoint),
        _ => dialed.unsent,
    };
    Ok(Connected {
        stream,
        unsent,
        backend,
        endpoint,
        load,
        set_cookie: dialed.set_cookie,
    })
}

/// A backend connection ready for one request.
pub struct Upstream<'t, B> {
    pub sender: SendRequest<B>,
    pub backend: &'t Backend,
    /// `host:port`, for the `Host` header and logs.
    pub endpoint: Arc<str>,
    /// Counts this exchange as load on the endpoint until dropped.
    pub load: ConnectionGuard,
    /// The sticky-session cookie to hand the client, if the balancer assigned one.
    pub set_cookie: Option<HeaderValue>,
}

/// Connects (see `connect`) and completes the HTTP/1.1 client handshake.
pub async fn open<'t, B>(
    route: &'t CompiledRoute,
    pick: &PickContext<'_>,
) -> Result<Upstream<'t, B>, Error>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connected = connect(route, pick, None).await?;
    let endpoint = connected.endpoint;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(connected.stream))
        .await
        .map_err(|e| protocol(&endpoint, e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Upstream {
        sender,
        backend: connected.backend,
        endpoint,
        load: connected.load,
        set_cookie: connected.set_cookie,
    })
}

impl<B> Upstream<'_, B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Sends `req` and waits at most `wait` for the response head.
    pub async fn send(
        &mut self,
        req: Request<B>,
        wait: Duration,
    ) -> Result<Response<Incoming>, Error> {
        match tokio::time::timeout(wait, self.sender.send_request(req)).await {
            Err(_) => Err(Error::UpstreamTimeout {
                endpoint: self.endpoint.to_string(),
                timeout_ms: wait.as_millis(),
            }),
            Ok(Err(e)) => Err(protocol(&self.endpoint, e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// The client's headers made ready for this backend (see `headers::to_upstream`).
    pub fn forward_headers(&self, headers: &mut HeaderMap, ctx: &RequestCtx) {
        to_upstream(headers, &self.endpoint, &forwarded(ctx));
    }
}

/// What a backend is told about the request `ctx` describes.
pub fn forwarded(ctx: &RequestCtx) -> Forwarded<'_> {
    Forwarded {
        client_ip: ctx.hop.ip(),
        proto: ctx.proto,
        host: ctx.host.as_ref(),
        request_id: &ctx.request_id,
        trace: ctx.trace(),
    }
}

fn protocol(endpoint: &str, e: hyper::Error) -> Error {
    Error::UpstreamProtocol {
        endpoint: endpoint.to_string(),
        source: UpstreamProtocol::Http(e),
    }
}

/// The request target sent upstream.
pub fn target(downstream: &str) -> Result<http::Uri, Error> {
    downstream
        .parse()
        .map_err(|_| Error::BadHandshake(Handshake::InvalidTarget))
}
