//! `wsgate demo`: an echo backend and a gateway with built-in routes on loopback, and the
//! exact commands to try them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::{Server, ServerOptions};
use crate::api::WsRouteSpec;
use crate::echo::{self, EchoConfig};
use crate::model::{route_from_spec, Route, RouteId, SpecBackends};
use crate::table::Publisher;
use crate::telemetry::Metrics;

/// The demo's routes: `/chat/{room}` rewritten to the backend's `/rooms/{room}`, and a
/// catch-all for everything else.
pub fn demo_routes(backend: SocketAddr) -> anyhow::Result<Vec<Route>> {
    let spec = |up: &str, down: &str| WsRouteSpec::with_static_backends(up, down, &[backend]);
    let specs = [
        ("demo/chat", spec("/chat/{room}", "/rooms/{room}")),
        ("demo/everything", spec("/{everything}", "/{everything}")),
    ];
    specs
        .iter()
        .enumerate()
        .map(|(i, (name, s))| {
            route_from_spec(RouteId(name.to_string()), i as u64, s, SpecBackends::Static)
                .map_err(|e| anyhow::anyhow!("built-in demo route {name}: {e:?}"))
        })
        .collect()
}

pub async fn run(server: ServerOptions) -> anyhow::Result<()> {
    let echo_listener = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo_listener.local_addr()?;
    let (stop_echo, echo_stopped) = tokio::sync::oneshot::channel::<()>();
    let echo_task = tokio::spawn(echo::serve(
        echo_listener,
        EchoConfig {
            name: "demo-echo".into(),
        },
        async move {
            let _ = echo_stopped.await;
        },
    ));

    let metrics = Arc::new(Metrics::new());
    let publisher = Arc::new(Publisher::new(Arc::clone(&metrics)));
    publisher.publish(&demo_routes(echo_addr)?);
    let server = Server::start(server, publisher, metrics).await?;
    server.readiness.set_loaded();

    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "wsgate".into());
    let gw = server.listen_addr;
    println!(
        "\nwsgate demo is running (Ctrl-C stops it)\n\
         \n  gateway  ws://{gw}   routes: /chat/{{room}} -> echo /rooms/{{room}}, /{{everything}} -> echo\
         \n  backend  built-in echo on {echo_addr}\
         \n  admin    http://{admin}/metrics  /readyz  /healthz\
         \n\nTry, in another terminal:\
         \n  {exe} client ws://{gw}/chat/lobby --send hello --send world\
         \n  {exe} client 'ws://{gw}/chat/lobby?hello=1'      (type lines; the backend echoes them)\
         \n  curl -s http://{gw}/chat/lobby                  (plain HTTP on the same route)\
         \n  curl -sN 'http://{gw}/events/sse?events=5&interval_ms=500'   (Server-Sent Events, streamed)\n",
        admin = server.admin_addr,
    );

    super::shutdown_signal().await;
    server.shutdown().await;
    let _ = stop_echo.send(());
    let _ = echo_task.await;
    Ok(())
}
