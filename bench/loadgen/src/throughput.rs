//! Closed-loop echo: each connection keeps `inflight` messages outstanding and sends one more for
//! every reply. Used for small messages (`throughput`) and large ones (`bulk`).
//!
//! Replies on one connection come back in order (an echo preserves order, and so does every
//! proxy in a single TCP stream), so each connection keeps a queue of send times and needs no
//! timestamps inside the payload.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::report::{self, Report};
use crate::ws::{open_many, Conn, Masked, Target};
use crate::{parse_duration, Common};

/// Connections opened at the same time while setting up.
const OPEN_PARALLEL: usize = 64;
/// Upper bound on messages per connection, whatever the duration.
const MAX_MESSAGES_PER_CONN: u64 = 100_000_000;

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Messages outstanding per connection.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Traffic before measuring starts (connections are open before this begins).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
}

#[derive(Args, Debug)]
pub struct BulkArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 10)]
    conns: usize,
    /// Messages outstanding per connection.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 65536)]
    size: usize,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
}

struct Plan {
    common: Common,
    conns: usize,
    inflight: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
}

/// What one connection saw inside the measuring window.
struct ConnResult {
    messages: u64,
    bytes: u64,
    /// Every echo, warm-up and drain included: what the target's CPU time is divided by.
    total_messages: u64,
    total_bytes: u64,
    histogram: Histogram<u64>,
    error: Option<String>,
}

pub async fn run_throughput(args: ThroughputArgs) -> anyhow::Result<Report> {
    let plan = Plan {
        common: args.common,
        conns: args.conns,
        inflight: args.inflight,
        size: args.size,
        warmup: args.warmup,
        duration: args.duration,
    };
    closed_loop("throughput", plan).await
}

pub async fn run_bulk(args: BulkArgs) -> anyhow::Result<Report> {
    let plan = Plan {
        common: args.common,
        conns: args.conns,
        inflight: args.inflight,
        size: args.size,
        warmup: args.warmup,
        duration: args.duration,
    };
    closed_loop("bulk", plan).await
}

async fn closed_loop(scenario: &str, plan: Plan) -> anyhow::Result<Report> {
    anyhow::ensure!(
        plan.conns > 0 && plan.inflight > 0,
        "--conns and --inflight must be positive"
    );
    anyhow::ensure!(
        plan.duration > Duration::ZERO,
        "--duration must be positive"
    );
    let target = Target::new(&plan.common)?;
    let op_timeout = plan.common.op_timeout;
    let (conns, open_errors) = open_many(&target, plan.conns, OPEN_PARALLEL, op_timeout).await;

    let payload = Arc::new(Masked::filler(plan.size));
    let start = Instant::now();
    let window_start = start + plan.warmup;
    let window_end = window_start + plan.duration;
    let mut tasks = JoinSet::new();
    for conn in conns {
        let payload = Arc::clone(&payload);
        let inflight = plan.inflight;
        tasks.spawn(async move {
            drive(
                conn,
                &payload,
                inflight,
                window_start,
                window_end,
                op_timeout,
            )
            .await
        });
    }

    let mut histogram = report::histogram();
    let (mut messages, mut bytes) = (0u64, 0u64);
    let (mut total_messages, mut total_bytes) = (0u64, 0u64);
    let mut errors: Vec<String> = open_errors.iter().map(|e| format!("{e:#}")).collect();
    let connected = tasks.len();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => {
                messages += result.messages;
                bytes += result.bytes;
                total_messages += result.total_messages;
                total_bytes += result.total_bytes;
                histogram.add(&result.histogram).ok();
                errors.extend(result.error);
            }
            Err(error) => errors.push(format!("connection task failed: {error}")),
        }
    }
    let seconds = plan.duration.as_secs_f64();
    let json = json!({
        "scenario": scenario,
        "target": plan.common.target,
        "url": plan.common.url,
        "conns": plan.conns,
        "connected": connected,
        "inflight": plan.inflight,
        "size": plan.size,
        "warmup_s": plan.warmup.as_secs_f64(),
        "duration_s": seconds,
        "messages": messages,
        "msgs_per_s": report::round3(messages as f64 / seconds),
        "mb_per_s": report::round3(bytes as f64 / seconds / 1_000_000.0),
        "rtt_us": report::percentiles(&histogram),
        "total_messages": total_messages,
        "total_bytes": total_bytes,
        "errors": errors.len(),
        "error_samples": report::error_samples(&errors),
    });
    Ok(Report {
        json,
        produced_numbers: messages > 0,
    })
}

/// Runs one connection's closed loop until `window_end`, then drains its replies and closes.
async fn drive(
    mut conn: Conn,
    payload: &Masked,
    inflight: usize,
    window_start: Instant,
    window_end: Instant,
    op_timeout: Duration,
) -> ConnResult {
    let mut result = ConnResult {
        messages: 0,
        bytes: 0,
        total_messages: 0,
        total_bytes: 0,
        histogram: report::histogram(),
        error: None,
    };
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(inflight);
    let outcome: anyhow::Result<()> = async {
        for _ in 0..inflight {
            sent_at.push_back(Instant::now());
            conn.send(payload).await?;
        }
        let mut sent = inflight as u64;
        while let Some(first) = sent_at.pop_front() {
            let size = timeout(op_timeout, conn.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no echo within {op_timeout:?}"))??;
            let now = Instant::now();
            result.total_messages += 1;
            result.total_bytes += size as u64;
            if now >= window_start && now <= window_end {
                result.messages += 1;
                result.bytes += size as u64;
                report::record(&mut result.histogram, now - first);
            }
            if now < window_end && sent < MAX_MESSAGES_PER_CONN {
                sent_at.push_back(Instant::now());
                conn.send(payload).await?;
                sent += 1;
            }
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            if let Err(error) = conn.close(op_timeout).await {
                result.error = Some(format!("close: {error:#}"));
            }
        }
        Err(error) => result.error = Some(format!("{error:#}")),
    }
    result
}
