//! Load generator for wsgate's benchmark harness: drives WebSocket echo traffic at one target
//! (the echo backend directly, or a proxy in front of it) and prints one JSON line per run.
//!
//! Scenarios (issue 7): `throughput` (small messages, many in flight), `bulk` (large messages),
//! `latency` (fixed rate), `handshakes` (connect, one echo, close) and `idle` (hold connections).
//! Every loop is bounded by a deadline and a count cap, and only loopback addresses are accepted:
//! this tool must never load anything but a server on this machine.
//!
//! `wss://` targets (issue 22) are reached with rustls, the server's certificate pinned with
//! `--cert`; `tls-echo` is the TLS WebSocket echo server of the direct wss baseline.

mod handshakes;
mod idle;
mod latency;
mod report;
mod throughput;
mod tls;
mod tls_echo;
mod ws;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "WebSocket echo load generator for bench/run.sh"
)]
struct Cli {
    /// Runtime worker threads; defaults to the CPUs this process may run on (1 under `taskset -c 1`).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Closed loop of small messages: msgs/s and RTT percentiles.
    Throughput(throughput::ThroughputArgs),
    /// Closed loop of large messages: MB/s (payload bytes echoed back per second).
    Bulk(throughput::BulkArgs),
    /// Messages at a fixed total rate: RTT percentiles (p50/p99/p999).
    Latency(latency::LatencyArgs),
    /// Full connection cycles (TCP connect, upgrade, one echo, close handshake) per second.
    Handshakes(handshakes::HandshakeArgs),
    /// Opens N connections, holds them idle, then closes them; reports how that went.
    Idle(idle::IdleArgs),
    /// A TLS WebSocket echo server (the direct wss baseline), loopback only; not a load.
    TlsEcho(tls_echo::TlsEchoArgs),
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// ws://127.0.0.1:PORT/path or wss://... of the target (loopback only).
    #[arg(long)]
    url: String,
    /// For wss://: the server's certificate (PEM); only exactly this certificate is accepted.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// For wss://: no TLS session resumption (every handshake is a full one).
    #[arg(long)]
    no_resume: bool,
    /// Label written into the JSON line (direct, wsgate, nginx, haproxy).
    #[arg(long, default_value = "unnamed")]
    target: String,
    /// Deadline for each connect, upgrade, reply and close.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    op_timeout: Duration,
}

/// Parses `250ms`, `10s`, `2m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (ms, s, m)"
            ))
        }
    };
    if !(0.0..=3600.0).contains(&seconds) {
        return Err(format!("{text:?} is outside 0..1h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("loadgen: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.scenario {
            Scenario::Throughput(args) => throughput::run_throughput(args).await,
            Scenario::Bulk(args) => throughput::run_bulk(args).await,
            Scenario::Latency(args) => latency::run(args).await,
            Scenario::Handshakes(args) => handshakes::run(args).await,
            Scenario::Idle(args) => idle::run(args).await,
            Scenario::TlsEcho(args) => tls_echo::run(args).await,
        }
    });
    // Connections still closing must not hold the process: the report is already printed.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(mut report) => {
            // What the TLS handshakes negotiated (absent for ws://).
            let negotiated = tls::summary();
            if let (false, Some(fields)) = (negotiated.is_null(), report.json.as_object_mut()) {
                fields.insert("tls".to_owned(), negotiated);
            }
            println!("{}", report.json);
            if report.produced_numbers {
                ExitCode::SUCCESS
            } else {
                eprintln!("loadgen: the run completed no operation");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::FAILURE
        }
    }
}
