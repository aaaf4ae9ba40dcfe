//! Why wsgate answered a request itself instead of relaying it. `Error::response` is the
//! one place that maps failures to status codes (DESIGN.md's behaviour table).

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use crate::telemetry::FailureReason;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no route for host `{host}` and path `{path}`")]
    NoRoute { host: String, path: String },
    #[error("route {route} has no ready endpoint")]
    NoEndpoint { route: String },
    #[error("every endpoint of route {route} refused the connection (last: {last})")]
    ConnectFailed {
        route: String,
        last: String,
        #[source]
        source: std::io::Error,
    },
    #[error("every endpoint of route {route} timed out on connect (last: {last})")]
    ConnectTimeout { route: String, last: String },
    #[error("bad WebSocket handshake: {0}")]
    BadHandshake(&'static str),
    #[error("request head is {size} bytes; the limit is {limit}")]
    HeadTooLarge { size: usize, limit: usize },
    #[error("backend {endpoint} did not answer within {timeout_ms} ms")]
    UpstreamTimeout { endpoint: String, timeout_ms: u128 },
    #[error("backend {endpoint} broke the protocol: {reason}")]
    UpstreamProtocol { endpoint: String, reason: String },
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoRoute { .. } => StatusCode::NOT_FOUND,
            // Never a 4xx: clients stop reconnecting on 4xx.
            Error::NoEndpoint { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::ConnectFailed { .. } | Error::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            Error::ConnectTimeout { .. } | Error::UpstreamTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Error::BadHandshake(_) => StatusCode::BAD_REQUEST,
            Error::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    pub fn reason(&self) -> FailureReason {
        match self {
            Error::NoRoute { .. } => FailureReason::NoRoute,
            Error::NoEndpoint { .. } => FailureReason::NoEndpoint,
            Error::ConnectFailed { .. } => FailureReason::ConnectFailed,
            Error::ConnectTimeout { .. } => FailureReason::ConnectTimeout,
            Error::BadHandshake(_) | Error::HeadTooLarge { .. } => FailureReason::BadRequest,
            Error::UpstreamTimeout { .. } => FailureReason::UpstreamTimeout,
            Error::UpstreamProtocol { .. } => FailureReason::UpstreamProtocol,
        }
    }

    /// The response the client gets: a small JSON body naming what went wrong.
    pub fn response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": self.status().canonical_reason().unwrap_or("error"),
            "message": self.to_string(),
            "requestId": request_id,
        });
        let mut builder = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id);
        if let Error::NoEndpoint { .. } = self {
            builder = builder.header(header::RETRY_AFTER, "1");
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}
