//! The `wsgate` command line: run (standalone or in a cluster), check, echo, demo, client, crd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use wsgate::app::{self, ServerOptions};
use wsgate::model::{parse_duration, IpNet};
use wsgate::proxy::{ClientAddressOptions, OffloadOptions};
use wsgate::table::BackendRoots;
use wsgate::telemetry::access_log::{AccessLogFormat, AccessLogOptions, AccessLogTarget};
use wsgate::telemetry::logging::{self, LogFormat};
use wsgate::telemetry::MetricsOptions;

#[derive(Parser, Debug)]
#[command(
    name = "wsgate",
    version,
    about = "A Kubernetes ingress-style gateway for WebSocket traffic"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "WSGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway: standalone from routes files (`--routes`), else from the cluster.
    Run(Box<RunArgs>),
    /// Print the WsRoute CustomResourceDefinition YAML (what `crds/wsroute.yaml` holds).
    Crd,
    /// Validate routes files (WsRoute YAML or ocelot.json); prints every problem, exit 1 if any.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// As for `run`: a JWT provider that ocelot.json's `AuthenticationProviderKey` names.
        #[arg(long = "jwt-provider", value_name = "NAME=FILE", value_parser = jwt_provider)]
        jwt_providers: Vec<(String, PathBuf)>,
    },
    /// Run the built-in WebSocket + HTTP echo backend.
    Echo {
        #[arg(long, env = "WSGATE_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Name reported in responses (x-echo-name); defaults to $POD_NAME or $HOSTNAME.
        #[arg(long, env = "WSGATE_ECHO_NAME")]
        name: Option<String>,
    },
    /// Start an echo backend and a gateway with built-in routes on loopback, and print what to try.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Once listening, write the bound addresses to this file as JSON (as `run` does).
        #[arg(long)]
        listening_file: Option<PathBuf>,
    },
    /// A small WebSocket client: sends --send messages (or stdin lines) and prints replies.
    Client {
        url: String,
        /// Message to send (repeatable); without it, stdin lines are sent.
        #[arg(long)]
        send: Vec<String>,
        /// Extra request header `Name: value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// How long to wait for replies before closing, e.g. 500ms.
        #[arg(long, default_value = "500ms", value_parser = duration)]
        wait: Duration,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Routes file (WsRoute YAML documents or ocelot.json); repeatable. Standalone mode.
    #[arg(long = "routes", env = "WSGATE_ROUTES", value_delimiter = ',')]
    routes: Vec<PathBuf>,
    /// Address for ws:// and http:// traffic.
    #[arg(long, env = "WSGATE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address for wss:// and https:// traffic. Default: 0.0.0.0:8443 when any certificate
    /// is configured (a default certificate, or a route's `tls` in a routes file).
    #[arg(long, env = "WSGATE_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// PEM certificate chain served when no route's host matches the SNI (with --default-key).
    #[arg(long, env = "WSGATE_DEFAULT_CERT", requires = "default_key")]
    default_cert: Option<PathBuf>,
    /// PEM private key of --default-cert.
    #[arg(long, env = "WSGATE_DEFAULT_KEY", requires = "default_cert")]
    default_key: Option<PathBuf>,
    /// Cluster mode: the default certificate from a `kubernetes.io/tls` Secret, `NS/NAME`.
    #[arg(long, env = "WSGATE_DEFAULT_CERT_SECRET", value_parser = namespaced_name, conflicts_with = "default_cert")]
    default_cert_secret: Option<(String, String)>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "WSGATE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    /// Once every listener is bound, write their addresses to this file as JSON
    /// (`{"pid":…,"listen":"…","tls_listen":"…"|null,"admin":"…"}`, written whole by a
    /// rename; removed at shutdown): how a script or test that asked for port 0 learns it.
    #[arg(long, env = "WSGATE_LISTENING_FILE")]
    listening_file: Option<PathBuf>,
    /// The drain budget of routes without their own `drain.budget`: after SIGTERM, how
    /// long live WebSockets get to close (the process waits for the longest route budget),
    /// and the window `--drain-jitter` spreads their Close 1001 over; also the budget of
    /// gentle drains when an endpoint is removed or terminating.
    #[arg(long, env = "WSGATE_DRAIN_TIMEOUT", default_value = "30s", value_parser = duration)]
    drain_timeout: Duration,
    /// Routes without their own `drain.jitter` spread their Close 1001 uniformly over
    /// `--drain-timeout`, so clients reconnect at a steady rate; `--drain-jitter false`
    /// closes them all at once.
    #[arg(long, env = "WSGATE_DRAIN_JITTER", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    drain_jitter: bool,
    /// After SIGTERM, how long to keep accepting with /readyz failing before the drain starts.
    #[arg(long, env = "WSGATE_SHUTDOWN_DELAY", default_value = "0s", value_parser = duration_or_zero)]
    shutdown_delay: Duration,
    /// Cluster mode: namespace to watch (repeatable); none = all namespaces.
    #[arg(long = "namespace", env = "WSGATE_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Cluster mode: only WsRoutes matching this label selector (`team=chat`).
    #[arg(long, env = "WSGATE_ROUTE_SELECTOR")]
    route_selector: Option<String>,
    /// Cluster mode: this replica's name, used as the status Lease identity.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Cluster mode: namespace of the status Lease (the gateway's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
    /// Cluster mode: never write WsRoute status (for read-only replicas).
    #[arg(long, env = "WSGATE_NO_STATUS")]
    no_status: bool,
    /// File holding the key that signs CookieStickySessions cookies (at least 16 bytes, e.g.
    /// a mounted Secret), or set the key itself in WSGATE_STICKY_KEY. Every replica needs
    /// the same key; without one, a random per-process key is used.
    #[arg(long, env = "WSGATE_STICKY_KEY_FILE")]
    sticky_key_file: Option<PathBuf>,
    /// The sticky-session key itself, from the environment (instead of --sticky-key-file).
    #[arg(long, env = "WSGATE_STICKY_KEY", hide_env_values = true, hide = true)]
    sticky_key: Option<String>,
    /// How often routes files are checked for changes.
    #[arg(long, env = "WSGATE_RELOAD_INTERVAL", default_value = "1s", value_parser = duration)]
    reload_interval: Duration,
    /// A JWT provider for ocelot.json: `AuthenticationProviderKey: NAME` verifies tokens with
    /// the settings in FILE (YAML: issuer, audiences, jwksFile relative to FILE, leeway).
    /// Repeat for several providers.
    #[arg(long = "jwt-provider", value_name = "NAME=FILE", value_parser = jwt_provider)]
    jwt_providers: Vec<(String, PathBuf)>,
    /// Worker threads. Default: one per CPU this process may use (CPU affinity and the
    /// container's CPU limit). With 1, every connection runs on a single-threaded runtime.
    #[arg(long, env = "WSGATE_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Relay threads for busy plain-TCP WebSocket relays: after its first 128 messages a
    /// relay leaves the async runtime for one of these (an epoll loop that costs less per
    /// message; bench/RESULTS.md, "Run X"). Default: one per worker. 0 keeps every relay on
    /// the async runtime.
    #[arg(long, env = "WSGATE_RELAY_THREADS")]
    relay_threads: Option<u16>,
    /// Most connections in flight for the whole process: upgraded WebSocket connections
    /// plus plain HTTP requests being proxied (an SSE stream or long poll until its
    /// response ends). Over it, 503 with `Retry-After: 1`. Default: no limit.
    #[arg(long, env = "WSGATE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Proxies in front of wsgate whose `X-Forwarded-For` is believed: addresses and CIDR
    /// blocks, comma-separated (`10.0.0.0/8,2001:db8::/32`). A request from one of them is
    /// from the rightmost address in `X-Forwarded-For` that is not one of them (IP lists,
    /// logs, `hashOn: clientIp`); from any other peer the header is not believed.
    #[arg(long, env = "WSGATE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = ip_net)]
    trusted_proxies: Vec<IpNet>,
    /// Every connection on the traffic listeners (plain and TLS) starts with a PROXY
    /// protocol header, v1 or v2, as network load balancers send it: its source address is
    /// the client's. A connection without a valid header is closed.
    #[arg(long, env = "WSGATE_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// Give histograms (`wsgate_upstream_connect_seconds`) a `route` label: one series set
    /// per route that dialled a backend, instead of one for the process. Off by default:
    /// with many routes, per-route buckets dominate the scrape (docs/operations.md).
    #[arg(long, env = "WSGATE_PER_ROUTE_HISTOGRAMS")]
    per_route_histograms: bool,
    /// Export a span per WebSocket connection and per proxied HTTP request over OTLP
    /// (HTTP/protobuf) to this collector, e.g. `http://otel-collector:4318` (spans go to
    /// `/v1/traces` under it). Off by default.
    #[arg(long, env = "WSGATE_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// The access log: one line per WebSocket connection when it ends, per proxied HTTP
    /// request, and per answer wsgate gives itself. `off`, `stdout`, or a file path
    /// (appended to). Written by its own thread; lines it cannot keep up with are dropped
    /// and counted (`wsgate_access_log_dropped_total`), never waited for.
    #[arg(
        long,
        env = "WSGATE_ACCESS_LOG",
        value_name = "off|stdout|PATH",
        default_value = "off"
    )]
    access_log: AccessLogTarget,
    /// The access log's lines: one JSON object each, or `key=value` text.
    #[arg(long, env = "WSGATE_ACCESS_LOG_FORMAT", value_enum, default_value_t = AccessLogFormat::Json)]
    access_log_format: AccessLogFormat,
}

fn ip_net(s: &str) -> Result<IpNet, String> {
    IpNet::parse(s).map_err(|e| e.to_string())
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn namespaced_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("`{s}` is not NAMESPACE/NAME")),
    }
}

fn duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    duration(s)
}

// See the "mimalloc" feature in Cargo.toml for why and what it measured.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let workers = match &cli.command {
        Command::Run(args) => args.workers.map(usize::from),
        _ => None,
    };
    // Blocking file reads, done before the runtime starts: no worker waits on them.
    let backend_roots = matches!(cli.command, Command::Run(_)).then(app::load_platform_roots);
    let runtime = match build_runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command, backend_roots));
    // Spans still queued go out now; the export runs on the runtime, so it is driven here
    // while a blocking thread waits for it.
    runtime.block_on(async {
        let _ = tokio::task::spawn_blocking(wsgate::telemetry::otlp::shutdown).await;
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// With one worker (the default on one CPU, e.g. a pod limited to one CPU) a current-thread
/// runtime: no work-stealing queues, idle-worker bookkeeping or cross-thread wake-ups on
/// each socket event. bench/RESULTS.md has what that saves per message.
fn build_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = worker_count(workers);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build()
}

/// `--workers`, or one per CPU this process may use.
fn worker_count(workers: Option<usize>) -> usize {
    workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    })
}

/// `--relay-threads`, or one per worker.
fn relay_offload(relay_threads: Option<u16>, workers: Option<u16>) -> OffloadOptions {
    OffloadOptions {
        threads: relay_threads
            .map(usize::from)
            .unwrap_or_else(|| worker_count(workers.map(usize::from))),
        ..OffloadOptions::default()
    }
}

/// `backend_roots`: the platform's CA certificates, loaded by `main` for `run`.
async fn run(command: Command, backend_roots: Option<BackendRoots>) -> anyhow::Result<ExitCode> {
    let backend_roots = backend_roots.unwrap_or_else(BackendRoots::none);
    match command {
        Command::Run(args) => {
            app::raise_fd_limit();
            if let Some(endpoint) = &args.otlp_endpoint {
                wsgate::telemetry::otlp::install(endpoint, tokio::runtime::Handle::current())?;
                tracing::info!(%endpoint, "exporting a span per connection over OTLP");
            }
            let default_certificate = args.default_cert.zip(args.default_key);
            let tls_listen = args.tls_listen.or((default_certificate.is_some()
                || args.default_cert_secret.is_some())
            .then_some(app::DEFAULT_TLS_LISTEN));
            let server = ServerOptions {
                listen: args.listen,
                tls_listen,
                admin_listen: args.admin_listen,
                shutdown_delay: args.shutdown_delay,
                drain_timeout: args.drain_timeout,
                relay_offload: relay_offload(args.relay_threads, args.workers),
                listening_file: args.listening_file,
                max_connections: args.max_connections,
                client_address: ClientAddressOptions {
                    trusted_proxies: args.trusted_proxies,
                    proxy_protocol: args.proxy_protocol,
                },
                drain_jitter: args.drain_jitter,
                metrics: MetricsOptions {
                    per_route_histograms: args.per_route_histograms,
                },
                access_log: AccessLogOptions {
                    target: args.access_log,
                    format: args.access_log_format,
                },
            };
            let sticky_key =
                app::sticky_key(args.sticky_key_file.as_deref(), args.sticky_key.as_deref())?;
            if args.routes.is_empty() {
                let identity = args
                    .pod_name
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| format!("wsgate-{}", std::process::id()));
                app::cluster::run(app::cluster::ClusterOptions {
                    namespaces: args.namespaces,
                    route_selector: args.route_selector,
                    identity,
                    lease_namespace: args.pod_namespace,
                    write_status: !args.no_status,
                    default_certificate,
                    default_certificate_secret: args.default_cert_secret,
                    server,
                    sticky_key,
                    backend_roots,
                })
                .await?;
                return Ok(ExitCode::SUCCESS);
            }
            if args.default_cert_secret.is_some() {
                anyhow::bail!("--default-cert-secret needs cluster mode; with --routes use --default-cert and --default-key");
            }
            app::standalone::run(app::standalone::StandaloneOptions {
                routes: args.routes,
                default_certificate,
                reload_interval: args.reload_interval,
                server,
                sticky_key,
                backend_roots,
                files: wsgate::source::file::FileOptions {
                    jwt_providers: args.jwt_providers.into_iter().collect(),
                },
            })
            .await?;
        }
        Command::Check {
            files,
            jwt_providers,
        } => {
            let options = wsgate::source::file::FileOptions {
                jwt_providers: jwt_providers.into_iter().collect(),
            };
            return Ok(check(&files, &options));
        }
        Command::Crd => print!("{}", wsgate::api::crd_yaml()),
        Command::Echo { listen, name } => {
            app::raise_fd_limit();
            let name = name
                .or_else(|| std::env::var("POD_NAME").ok())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "echo".into());
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(listen = %listener.local_addr()?, name = %name, "echo backend listening");
            wsgate::echo::serve(
                listener,
                wsgate::echo::EchoConfig { name },
                app::shutdown_signal(),
            )
            .await?;
        }
        Command::Demo {
            listen,
            admin_listen,
            listening_file,
        } => {
            app::raise_fd_limit();
            app::demo::run(ServerOptions {
                listen,
                tls_listen: None,
                admin_listen,
                shutdown_delay: Duration::ZERO,
                drain_timeout: Duration::from_secs(5),
                relay_offload: relay_offload(None, None),
                listening_file,
                max_connections: None,
                client_address: ClientAddressOptions::default(),
                drain_jitter: false,
                metrics: MetricsOptions::default(),
                access_log: AccessLogOptions::default(),
            })
            .await?;
        }
        Command::Client {
            url,
            send,
            headers,
            wait,
        } => {
            let headers = headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                        .ok_or_else(|| {
                            anyhow::anyhow!("--header `{h}` must look like `Name: value`")
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            app::client::run(app::client::ClientOptions {
                url,
                send,
                headers,
                wait,
            })
            .await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `wsgate check`: every problem with its location, warnings too; exit 1 on any error.
fn check(files: &[PathBuf], options: &wsgate::source::file::FileOptions) -> ExitCode {
    let loaded = match wsgate::source::file::load_with(files, options) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (errors, warnings) = app::standalone::problems(&loaded);
    for w in &warnings {
        println!("{w}");
    }
    for e in &errors {
        println!("error: {e}");
    }
    if errors.is_empty() {
        println!(
            "ok: {} route(s) valid{}",
            loaded.routes.len(),
            if warnings.is_empty() {
                String::new()
            } else {
                format!(", {} warning(s)", warnings.len())
            }
        );
        ExitCode::SUCCESS
    } else {
        println!("{} error(s), {} warning(s)", errors.len(), warnings.len());
        ExitCode::FAILURE
    }
}

/// `--jwt-provider NAME=FILE`.
fn jwt_provider(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, file)) if !name.trim().is_empty() && !file.trim().is_empty() => {
            Ok((name.trim().to_string(), PathBuf::from(file.trim())))
        }
        _ => Err(format!("`{text}` is not NAME=FILE")),
    }
}
