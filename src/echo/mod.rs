//! The built-in echo backend (`wsgate echo`): WebSocket and HTTP echo for the demo, tests and e2e.
//!
//! One binary serves as the backend everywhere wsgate needs one, so the demo, the integration
//! tests, the benchmarks' "direct" baseline and the kind e2e need no extra image.
//!
//! What it answers (paths are matched on their last segments, so a gateway may rewrite prefixes):
//!
//! | request | answer |
//! |---|---|
//! | `.../status/CODE` (any method, upgrade or not; CODE in 200–599) | CODE, body `status CODE from <name>` |
//! | WebSocket upgrade, any path | 101, then every text and binary message echoed unchanged |
//! | `.../sse?events=N&interval_ms=M` | `text/event-stream`, N events one every M ms (defaults 3, 100) |
//! | `.../poll?hold_ms=M` | after M ms: `{"held_ms": M, "echo": name}` |
//! | anything else | 200 JSON: `echo`, `method`, `path`, `query`, `headers`, `body` |
//!
//! WebSocket query switches, for gateway tests: `hello=1` sends a JSON description of the
//! handshake request first; `close=CODE` then closes with CODE; `drop=1` drops the TCP connection
//! without a Close frame after the first echoed message.
//!
//! Every response carries `x-echo-name: <name>` so a test can tell which backend answered.
//! On shutdown the server stops accepting, sends Close 1001 to every open WebSocket and returns
//! once every connection has ended (or [`DRAIN_BUDGET`] has passed).

mod http;
mod request;
mod websocket;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use request::Target;

/// How long [`serve`] waits, after its shutdown signal, for open connections to finish.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(5);

/// Pause after a failed `accept`, so running out of descriptors does not become a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Settings of one echo backend instance.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    /// Instance name (a pod name, or "echo-1"), reported in every response.
    pub name: String,
}

/// Body type of every echo response: fixed bodies and the SSE stream alike.
type Body = UnsyncBoxBody<Bytes, Infallible>;

/// State shared by every connection of one [`serve`] call.
struct Echo {
    name: String,
    /// `name`, validated once as a header value.
    name_header: HeaderValue,
    /// Turns `true` when the server shuts down.
    stopping: watch::Receiver<bool>,
    /// Never sent on: every task holding an `Arc<Echo>` keeps this sender alive, so the receiver in
    /// [`serve`] sees the channel close exactly when the last connection has ended.
    _alive: mpsc::Sender<()>,
}

impl Echo {
    /// Resolves once the server is shutting down (or `serve` has returned).
    async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        // An error means the sender is gone, i.e. `serve` returned: stopped as well.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}

/// Serves until `shutdown` resolves; then stops accepting, sends Close 1001 to open WebSockets and returns.
///
/// Plain HTTP connections finish their in-flight request and close. `serve` returns once every
/// connection has ended, or after [`DRAIN_BUDGET`]. Fails only when `config.name` cannot be sent
/// as a header value; failed accepts are logged and retried.
pub async fn serve(
    listener: TcpListener,
    config: EchoConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let name_header = HeaderValue::from_str(&config.name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "echo name {:?} is not a valid HTTP header value (it is sent as x-echo-name)",
                config.name
            ),
        )
    })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let echo = Arc::new(Echo {
        name: config.name,
        name_header,
        stopping: stop_rx,
        _alive: alive_tx,
    });

    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => spawn_connection(stream, Arc::clone(&echo)),
                Err(error) => {
                    tracing::warn!(%error, "echo: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }

    drop(listener);
    // `echo` itself holds a receiver, so this send cannot fail.
    let _ = stop_tx.send(true);
    drop(echo);
    if tokio::time::timeout(DRAIN_BUDGET, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(budget = ?DRAIN_BUDGET, "echo: connections still open after the drain budget");
    }
    Ok(())
}

fn spawn_connection(stream: TcpStream, echo: Arc<Echo>) {
    // Small echoes must not wait for Nagle: this server is the latency baseline of benchmarks.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "echo: could not set TCP_NODELAY");
    }
    tokio::spawn(async move {
        let service_echo = Arc::clone(&echo);
        let service = service_fn(move |request| respond(request, Arc::clone(&service_echo)));
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut connection = pin!(connection);
        let finished = tokio::select! {
            result = connection.as_mut() => Some(result),
            () = echo.stopped() => None,
        };
        let result = match finished {
            Some(result) => result,
            None => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "echo: HTTP connection ended with an error");
        }
    });
}

/// Dispatches one request; every answer carries `x-echo-name`.
async fn respond(
    request: Request<Incoming>,
    echo: Arc<Echo>,
) -> Result<Response<Body>, Infallible> {
    let target = Target::of_path(request.uri().path());
    let mut response = match target {
        // Before the upgrade check, so a gateway can be tested passing a non-101 answer through.
        Target::Status(status) => http::status(status, &echo),
        _ if websocket::is_upgrade_request(&request) => websocket::accept(request, &echo),
        Target::Sse => http::sse(&request, &echo),
        Target::Poll => http::poll(&request, &echo).await,
        Target::Echo => http::echo(request, &echo).await,
    };
    response
        .headers_mut()
        .insert("x-echo-name", echo.name_header.clone());
    Ok(response)
}
