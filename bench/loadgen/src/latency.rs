//! Fixed-rate echo: `rate` messages per second in total, spread evenly over `conns` connections,
//! one outstanding per connection.
//!
//! Each sample is measured from the actual send, except when the previous reply came back after
//! this message was due: then it is measured from when it was due, so a stall counts against
//! the target instead of silently lowering the rate (coordinated omission). Timer wake-up
//! lateness is not charged to the target.

use std::time::Duration;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, Instant};

use crate::report::{self, Report};
use crate::ws::{open_many, Conn, Masked, Target};
use crate::{parse_duration, Common};

const OPEN_PARALLEL: usize = 64;

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Messages per second, all connections together.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    conns: usize,
    #[arg(long, default_value_t = 64)]
    size: usize,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
}

struct ConnResult {
    messages: u64,
    /// Every echo, warm-up included.
    total_messages: u64,
    late: u64,
    histogram: Histogram<u64>,
    error: Option<String>,
}

pub async fn run(args: LatencyArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.conns > 0, "--conns must be positive");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 1_000_000.0,
        "--rate must be in (0, 1000000]"
    );
    let target = Target::new(&args.common)?;
    let op_timeout = args.common.op_timeout;
    let (conns, open_errors) = open_many(&target, args.conns, OPEN_PARALLEL, op_timeout).await;

    let interval = Duration::from_secs_f64(args.conns as f64 / args.rate);
    let start = Instant::now();
    let window_start = start + args.warmup;
    let window_end = window_start + args.duration;
    let mut tasks = JoinSet::new();
    let connected = conns.len();
    for (index, conn) in conns.into_iter().enumerate() {
        // Stagger the connections so the sends are spread over each interval.
        let first = start + interval.mul_f64(index as f64 / connected as f64);
        let size = args.size;
        tasks.spawn(async move {
            paced(
                conn,
                size,
                first,
                interval,
                window_start,
                window_end,
                op_timeout,
            )
            .await
        });
    }
    let mut histogram = report::histogram();
    let (mut messages, mut late, mut total_messages) = (0u64, 0u64, 0u64);
    let mut errors: Vec<String> = open_errors.iter().map(|e| format!("{e:#}")).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => {
                messages += result.messages;
                late += result.late;
                total_messages += result.total_messages;
                histogram.add(&result.histogram).ok();
                errors.extend(result.error);
            }
            Err(error) => errors.push(format!("connection task failed: {error}")),
        }
    }
    let seconds = args.duration.as_secs_f64();
    let json = json!({
        "scenario": "latency",
        "target": args.common.target,
        "url": args.common.url,
        "conns": args.conns,
        "connected": connected,
        "size": args.size,
        "rate": args.rate,
        "achieved_rate": report::round3(messages as f64 / seconds),
        "late_sends": late,
        "warmup_s": args.warmup.as_secs_f64(),
        "duration_s": seconds,
        "messages": messages,
        "rtt_us": report::percentiles(&histogram),
        "total_messages": total_messages,
        "errors": errors.len(),
        "error_samples": report::error_samples(&errors),
    });
    Ok(Report {
        json,
        produced_numbers: messages > 0,
    })
}

async fn paced(
    mut conn: Conn,
    size: usize,
    first: Instant,
    interval: Duration,
    window_start: Instant,
    window_end: Instant,
    op_timeout: Duration,
) -> ConnResult {
    let payload = Masked::filler(size);
    let mut result = ConnResult {
        messages: 0,
        total_messages: 0,
        late: 0,
        histogram: report::histogram(),
        error: None,
    };
    let outcome: anyhow::Result<()> = async {
        let mut due = first;
        // The count bound is generous: the loop ends at `window_end` long before it.
        let max_sends = (window_end - first).as_secs_f64() / interval.as_secs_f64() + 2.0;
        for _ in 0..(max_sends as u64) {
            if due >= window_end {
                break;
            }
            let now = Instant::now();
            let measured_from = if now > due {
                // Held back by the previous reply (sleep_until returns at once when overdue).
                result.late += 1;
                due
            } else {
                sleep_until(due).await;
                Instant::now()
            };
            conn.send(&payload).await?;
            timeout(op_timeout, conn.recv())
                .await
                .map_err(|_| anyhow::anyhow!("no echo within {op_timeout:?}"))??;
            let done = Instant::now();
            result.total_messages += 1;
            if done >= window_start && done <= window_end {
                result.messages += 1;
                report::record(&mut result.histogram, done - measured_from);
            }
            due += interval;
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
