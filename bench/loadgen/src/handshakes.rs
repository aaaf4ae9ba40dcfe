//! Connection churn: each worker repeats TCP connect, upgrade, one echo, close handshake.

use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::report::{self, Report};
use crate::ws::{Conn, Masked, Target};
use crate::{parse_duration, Common};

/// Upper bound on cycles per worker, whatever the duration.
const MAX_CYCLES_PER_WORKER: u64 = 10_000_000;

#[derive(Args, Debug)]
pub struct HandshakeArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent workers, each one connection at a time.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
}

struct WorkerResult {
    cycles: u64,
    /// Phases of each measured cycle: connect + upgrade, the echo, the close handshake.
    upgrade: Histogram<u64>,
    echo: Histogram<u64>,
    close: Histogram<u64>,
    /// Every completed cycle, warm-up included.
    total_cycles: u64,
    histogram: Histogram<u64>,
    errors: Vec<String>,
}

/// A worker gives up after this many failed cycles in a row (the target is down).
const MAX_CONSECUTIVE_ERRORS: u32 = 20;

pub async fn run(args: HandshakeArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.conns > 0, "--conns must be positive");
    let target = Target::new(&args.common)?;
    let start = Instant::now();
    let window_start = start + args.warmup;
    let window_end = window_start + args.duration;
    let mut tasks = JoinSet::new();
    for _ in 0..args.conns {
        let target = target.clone();
        let op_timeout = args.common.op_timeout;
        let size = args.size;
        tasks.spawn(async move {
            let payload = Masked::filler(size);
            let mut result = WorkerResult {
                cycles: 0,
                upgrade: report::histogram(),
                echo: report::histogram(),
                close: report::histogram(),
                total_cycles: 0,
                histogram: report::histogram(),
                errors: Vec::new(),
            };
            let mut consecutive_errors = 0;
            for _ in 0..MAX_CYCLES_PER_WORKER {
                let began = Instant::now();
                if began >= window_end || consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
                    break;
                }
                match cycle(&target, &payload, op_timeout).await {
                    Ok(phases) => {
                        consecutive_errors = 0;
                        let done = Instant::now();
                        result.total_cycles += 1;
                        if began >= window_start && done <= window_end {
                            result.cycles += 1;
                            report::record(&mut result.histogram, done - began);
                            report::record(&mut result.upgrade, phases[0]);
                            report::record(&mut result.echo, phases[1]);
                            report::record(&mut result.close, phases[2]);
                        }
                    }
                    Err(error) => {
                        consecutive_errors += 1;
                        result.errors.push(format!("{error:#}"));
                    }
                }
            }
            result
        });
    }
    let mut histogram = report::histogram();
    let (mut upgrade, mut echo, mut close) = (
        report::histogram(),
        report::histogram(),
        report::histogram(),
    );
    let (mut cycles, mut total_cycles) = (0u64, 0u64);
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => {
                cycles += result.cycles;
                total_cycles += result.total_cycles;
                histogram.add(&result.histogram).ok();
                upgrade.add(&result.upgrade).ok();
                echo.add(&result.echo).ok();
                close.add(&result.close).ok();
                errors.extend(result.errors);
            }
            Err(error) => errors.push(format!("worker task failed: {error}")),
        }
    }
    let seconds = args.duration.as_secs_f64();
    let json = json!({
        "scenario": "handshakes",
        "target": args.common.target,
        "url": args.common.url,
        "conns": args.conns,
        "size": args.size,
        "warmup_s": args.warmup.as_secs_f64(),
        "duration_s": seconds,
        "cycles": cycles,
        "per_s": report::round3(cycles as f64 / seconds),
        "cycle_us": report::percentiles(&histogram),
        "upgrade_us": report::percentiles(&upgrade),
        "echo_us": report::percentiles(&echo),
        "close_us": report::percentiles(&close),
        "total_cycles": total_cycles,
        "errors": errors.len(),
        "error_samples": report::error_samples(&errors),
    });
    Ok(Report {
        json,
        produced_numbers: cycles > 0,
    })
}

/// One cycle; returns how long the upgrade, the echo and the close handshake took.
async fn cycle(
    target: &Target,
    payload: &Masked,
    op_timeout: Duration,
) -> anyhow::Result<[Duration; 3]> {
    let began = Instant::now();
    let mut conn = Conn::open(target, op_timeout).await?;
    let opened = Instant::now();
    conn.send(payload).await?;
    timeout(op_timeout, conn.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no echo within {op_timeout:?}"))??;
    let echoed = Instant::now();
    conn.close(op_timeout).await?;
    Ok([opened - began, echoed - opened, echoed.elapsed()])
}
