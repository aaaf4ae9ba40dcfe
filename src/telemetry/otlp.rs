//! A span per connection exported over OTLP (HTTP/protobuf), opt-in (`--otlp-endpoint`).
//!
//! Off (the default) nothing here runs but one check of an unset `OnceLock` per request.
//! On, a request starts one span as its context is made, continuing the caller's
//! `traceparent` (its trace id, its span as the parent) or as the root of a new trace; the
//! span's own id is the parent id the backend sees. A WebSocket connection's span ends when
//! the relay ends (route, status, bytes, wsgate's close codes), a plain HTTP request's when
//! its response head is passed on. Ended spans go to the SDK's batch processor: a bounded
//! queue that a background thread exports from, so a full queue or a slow collector drops
//! spans and never blocks a relay.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;

use super::trace_context::TraceContext;

/// How long one export may take before it is given up (and its spans dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("--otlp-endpoint `{0}` is not an http:// URL (https is not supported: point it at a local collector or agent)")]
    Endpoint(String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("OTLP export is already set up in this process")]
    AlreadyInstalled,
}

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORTING: OnceLock<Exporting> = OnceLock::new();

/// Starts exporting spans to `endpoint` (a collector's base URL, e.g.
/// `http://otel-collector:4318`; spans go to `/v1/traces` under it). The HTTP requests run
/// on `runtime`; the batch processor's own thread waits for them.
pub fn install(endpoint: &str, runtime: tokio::runtime::Handle) -> Result<(), OtlpError> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| OtlpError::Endpoint(endpoint.to_string()))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(OtlpError::Endpoint(endpoint.to_string()));
    }
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Client { runtime })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces)
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("wsgate").build())
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "wsgate");
    EXPORTING
        .set(Exporting { provider, tracer })
        .map_err(|_| OtlpError::AlreadyInstalled)
}

/// Whether spans are exported (`--otlp-endpoint` given).
pub fn enabled() -> bool {
    EXPORTING.get().is_some()
}

/// Exports what is queued; called once at shutdown.
pub fn shutdown() {
    if let Some(e) = EXPORTING.get() {
        if let Err(error) = e.provider.shutdown() {
            tracing::warn!(%error, "OTLP export did not finish at shutdown");
        }
    }
}

/// One connection's (or HTTP request's) span, ended when dropped if not before (the SDK's
/// span ends itself on drop). Boxed: a live connection's task holds it for its whole life,
/// and without export it is one null pointer there.
pub struct ConnectionSpan(Box<Span>);

impl std::fmt::Debug for ConnectionSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConnectionSpan")
            .field(&self.0.span_context().span_id())
            .finish()
    }
}

/// What a span learns at its end.
#[derive(Debug, Default)]
pub struct SpanEnd<'a> {
    /// `websocket` or `http`: the span's name.
    pub kind: &'static str,
    pub route: Option<&'a str>,
    /// The status the client got (101 for a relayed WebSocket).
    pub status: Option<u16>,
    pub bytes_up: Option<u64>,
    pub bytes_down: Option<u64>,
    /// Close frames of wsgate's own, toward each side.
    pub close_to_client: Option<u16>,
    pub close_to_backend: Option<u16>,
    pub endpoint: Option<&'a str>,
}

/// With export on, starts a request's span under `trace`'s caller (if any) and makes
/// `trace` name it: the span's trace id, its id as the backend's parent id, its sampled
/// flag. Off, `None` and `trace` unchanged.
pub fn start(trace: &mut TraceContext, request_id: &str) -> Option<ConnectionSpan> {
    let exporting = EXPORTING.get()?;
    let parent = match trace.parent_id {
        Some(parent_id) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent_id),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let span = exporting.tracer.build_with_context(
        exporting
            .tracer
            .span_builder("connection")
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("wsgate.request_id", request_id.to_string())]),
        &parent,
    );
    let cx = span.span_context();
    trace.trace_id = cx.trace_id().to_bytes();
    trace.span_id = cx.span_id().to_bytes();
    trace.flags = cx.trace_flags().to_u8() & super::trace_context::SAMPLED;
    Some(ConnectionSpan(Box::new(span)))
}

impl ConnectionSpan {
    /// Ends the span with what the connection came to.
    pub fn end(mut self, end: SpanEnd<'_>) {
        self.record(end);
        self.0.end();
    }

    /// Records the facts given (the `Some` ones, and a non-empty `kind` as the name).
    pub fn record(&mut self, end: SpanEnd<'_>) {
        let s = &mut self.0;
        if !end.kind.is_empty() {
            s.update_name(end.kind);
        }
        if let Some(route) = end.route {
            s.set_attribute(KeyValue::new("wsgate.route", route.to_string()));
        }
        if let Some(status) = end.status {
            s.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                s.set_status(Status::error(""));
            }
        }
        if let Some(endpoint) = end.endpoint {
            s.set_attribute(KeyValue::new("server.address", endpoint.to_string()));
        }
        for (key, value) in [
            ("wsgate.bytes_up", end.bytes_up),
            ("wsgate.bytes_down", end.bytes_down),
            (
                "wsgate.close_code_to_client",
                end.close_to_client.map(u64::from),
            ),
            (
                "wsgate.close_code_to_backend",
                end.close_to_backend.map(u64::from),
            ),
        ] {
            if let Some(v) = value {
                s.set_attribute(KeyValue::new(key, i64::try_from(v).unwrap_or(i64::MAX)));
            }
        }
    }
}

/// The exporter's HTTP client: one HTTP/1.1 request per export over a new connection, run
/// on wsgate's runtime (the batch processor's thread only waits for it).
#[derive(Debug)]
struct Client {
    runtime: tokio::runtime::Handle,
}

impl HttpClient for Client {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(EXPORT_TIMEOUT, post(request))
                .await
                .map_err(|_| HttpError::from("OTLP export timed out"))?
        });
        Box::pin(async move { task.await.map_err(|e| HttpError::from(e.to_string()))? })
    }
}

async fn post(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let authority = request
        .uri()
        .authority()
        .ok_or("OTLP endpoint without a host")?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let (mut parts, body) = request.into_parts();
    parts
        .headers
        .insert(http::header::HOST, authority.as_str().parse()?);
    // Origin form on the request line.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    let resp = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}
