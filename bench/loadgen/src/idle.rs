//! Idle connections: open N (each upgraded and proven with one echo, so a proxy has its upstream
//! leg open too), write a ready file, hold them silent, then close them all.
//!
//! While held, each connection only waits for frames (answering pings), so a proxy that sends
//! keep-alive pings is not mistaken for a dead one. bench/run.sh samples the proxy's memory and
//! CPU between the ready file appearing and the end of the hold.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};

use crate::report::{self, Report};
use crate::ws::{Conn, Masked, Target};
use crate::{parse_duration, Common};

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// How long the open connections are held idle.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    hold: Duration,
    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Written (with a JSON summary) once every connection is open, before the hold starts.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

/// How an idle connection ended.
enum Held {
    /// Still open at the end of the hold.
    Open(Conn),
    /// The target closed it or it failed during the hold.
    Lost(String),
}

pub async fn run(args: IdleArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.conns > 0, "--conns must be positive");
    let target = Target::new(&args.common)?;
    let op_timeout = args.common.op_timeout;
    let payload = Arc::new(Masked::filler(16));

    let open_started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut opening = JoinSet::new();
    for _ in 0..args.conns {
        let (target, payload, permits) =
            (target.clone(), Arc::clone(&payload), Arc::clone(&permits));
        opening.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let mut conn = Conn::open(&target, op_timeout).await?;
            conn.send(&payload).await?;
            timeout(op_timeout, conn.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no echo within {op_timeout:?}"))??;
            anyhow::Ok(conn)
        });
    }
    let mut conns = Vec::with_capacity(args.conns);
    let mut errors = Vec::new();
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Ok(conn)) => conns.push(conn),
            Ok(Err(error)) => errors.push(format!("open: {error:#}")),
            Err(error) => errors.push(format!("open task failed: {error}")),
        }
    }
    let open_s = open_started.elapsed().as_secs_f64();
    let opened = conns.len();
    if let Some(path) = &args.ready_file {
        let summary = json!({"opened": opened, "open_s": open_s});
        std::fs::write(path, summary.to_string())
            .map_err(|error| anyhow::anyhow!("cannot write {}: {error}", path.display()))?;
    }

    let hold_end = Instant::now() + args.hold;
    let mut holding = JoinSet::new();
    for mut conn in conns {
        holding.spawn(async move {
            tokio::select! {
                () = sleep_until(hold_end) => Held::Open(conn),
                received = conn.recv() => match received {
                    Ok(_) => Held::Lost("unexpected data message while idle".to_owned()),
                    Err(error) => Held::Lost(format!("{error:#}")),
                },
            }
        });
    }
    let mut still_open = Vec::with_capacity(opened);
    while let Some(joined) = holding.join_next().await {
        match joined {
            Ok(Held::Open(conn)) => still_open.push(conn),
            Ok(Held::Lost(error)) => errors.push(format!("during hold: {error}")),
            Err(error) => errors.push(format!("hold task failed: {error}")),
        }
    }
    let held_to_end = still_open.len();

    let mut closing = JoinSet::new();
    for conn in still_open {
        let permits = Arc::clone(&permits);
        closing.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            conn.close(op_timeout).await
        });
    }
    while let Some(joined) = closing.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => errors.push(format!("close: {error:#}")),
            Err(error) => errors.push(format!("close task failed: {error}")),
        }
    }

    let json = json!({
        "scenario": "idle",
        "target": args.common.target,
        "url": args.common.url,
        "conns": args.conns,
        "opened": opened,
        "held_to_end": held_to_end,
        "open_s": report::round3(open_s),
        "hold_s": args.hold.as_secs_f64(),
        "errors": errors.len(),
        "error_samples": report::error_samples(&errors),
    });
    Ok(Report {
        json,
        produced_numbers: held_to_end > 0,
    })
}
