//! Why wsgate answered a request itself instead of relaying it. `Error::status` is the one
//! place that maps failures to status codes (DESIGN.md §3's behaviour table), and
//! `Error::response` the one place that writes wsgate's own answer (JSON body naming the
//! cause, `X-Request-Id`). Imports nothing else of `proxy` but `target` (the path refusals).

use std::fmt;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::target::PathError;
use crate::table::UpstreamTlsError;
use crate::telemetry::{FailureReason, RefusalReason};

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
    #[error("malformed request head")]
    MalformedHead(#[source] httparse::Error),
    #[error("bad WebSocket handshake")]
    BadHandshake(#[source] Handshake),
    #[error("request head is {size} bytes; the limit is {limit}")]
    HeadTooLarge { size: usize, limit: usize },
    #[error("request head has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("backend {endpoint} did not answer within {timeout_ms} ms")]
    UpstreamTimeout { endpoint: String, timeout_ms: u128 },
    #[error("backend {endpoint} broke the protocol")]
    UpstreamProtocol {
        endpoint: String,
        #[source]
        source: UpstreamProtocol,
    },
    #[error("TLS to backend {endpoint} of route {route} failed")]
    UpstreamTls {
        route: String,
        endpoint: String,
        #[source]
        source: BackendTlsFailure,
    },
    // The edge's refusals (issue 20), counted as `wsgate_refusals_total{reason}`
    // (`Error::refusal`) instead of as failures.
    /// The request path cannot be normalized (`proxy::target`).
    #[error("request path refused")]
    Path(#[source] PathError),
    /// A WebSocket upgrade whose `Origin` is not in the route's `allowedOrigins`.
    #[error("route {route} does not allow {origin}")]
    Origin { route: String, origin: OriginShown },
    /// The client address is not allowed by the route's `securityOptions`.
    #[error("route {route} does not allow client address {client}")]
    IpDenied {
        route: String,
        client: std::net::IpAddr,
    },
}

/// The `Origin` of a refused upgrade, as an answer and a log line show it: cut to
/// `OriginShown::MAX` characters, so a client cannot make either large.
#[derive(Debug)]
pub enum OriginShown {
    Missing,
    Sent(String),
}

impl OriginShown {
    pub const MAX: usize = 128;

    pub fn of(origin: Option<&HeaderValue>) -> OriginShown {
        match origin {
            None => OriginShown::Missing,
            Some(v) => {
                let text = String::from_utf8_lossy(v.as_bytes());
                OriginShown::Sent(text.chars().take(Self::MAX).collect())
            }
        }
    }
}

impl fmt::Display for OriginShown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginShown::Missing => f.write_str("a request without `Origin`"),
            OriginShown::Sent(origin) => write!(f, "`Origin: {}`", origin.escape_debug()),
        }
    }
}

/// Why TLS to a backend failed (the cause of [`Error::UpstreamTls`]).
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsFailure {
    /// The route's backend TLS settings (compiled with the table) cannot be used.
    #[error("backend TLS settings")]
    Settings(#[source] UpstreamTlsError),
    /// The handshake failed; rustls' reason (a refused certificate, an alert) is the source.
    #[error("handshake as `{server_name}`")]
    Handshake {
        server_name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake as `{server_name}` did not finish within {ms} ms")]
    Timeout { server_name: String, ms: u64 },
}

/// What is wrong with a client's WebSocket upgrade request (RFC 6455 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Handshake {
    #[error("a WebSocket upgrade must use GET")]
    NotGet,
    #[error("a WebSocket upgrade needs HTTP/1.1")]
    NotHttp11,
    #[error("`Connection` header must contain `upgrade`")]
    NoConnectionUpgrade,
    #[error("`Sec-WebSocket-Version` header is missing")]
    VersionMissing,
    /// The one refusal with its own status: 426 and the version wsgate speaks (§4.2.2).
    #[error("`Sec-WebSocket-Version` must be 13")]
    UnsupportedVersion,
    #[error("`Sec-WebSocket-Key` header is missing")]
    KeyMissing,
    #[error("`Sec-WebSocket-Key` must be 16 bytes in base64")]
    KeyInvalid,
    #[error("the downstream path is not a valid request target")]
    InvalidTarget,
}

/// How a backend broke HTTP while answering (a 502).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamProtocol {
    #[error("sending the upgrade request")]
    Send(#[source] std::io::Error),
    #[error("reading the response head")]
    Read(#[source] std::io::Error),
    #[error("connection closed without a response")]
    ClosedBeforeResponse,
    #[error("connection closed inside the response head")]
    ClosedInHead,
    #[error("invalid response head")]
    InvalidHead(#[source] httparse::Error),
    #[error("response has more than {0} headers")]
    TooManyHeaders(usize),
    #[error("response is not HTTP/1.1")]
    NotHttp11,
    #[error("response head exceeds {0} bytes")]
    HeadTooLarge(usize),
    /// The hyper client (plain HTTP, or reading a refusal) failed.
    #[error("HTTP exchange failed")]
    Http(#[source] hyper::Error),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoRoute { .. } => StatusCode::NOT_FOUND,
            // Never a 4xx: clients stop reconnecting on 4xx.
            Error::NoEndpoint { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::ConnectFailed { .. }
            | Error::UpstreamProtocol { .. }
            | Error::UpstreamTls { .. } => StatusCode::BAD_GATEWAY,
            Error::ConnectTimeout { .. } | Error::UpstreamTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Error::BadHandshake(Handshake::UnsupportedVersion) => StatusCode::UPGRADE_REQUIRED,
            Error::BadHandshake(_) | Error::MalformedHead(_) => StatusCode::BAD_REQUEST,
            Error::HeadTooLarge { .. } | Error::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Error::Path(_) => StatusCode::BAD_REQUEST,
            Error::Origin { .. } | Error::IpDenied { .. } => StatusCode::FORBIDDEN,
        }
    }

    pub fn reason(&self) -> FailureReason {
        match self {
            Error::NoRoute { .. } => FailureReason::NoRoute,
            Error::NoEndpoint { .. } => FailureReason::NoEndpoint,
            Error::ConnectFailed { .. } => FailureReason::ConnectFailed,
            Error::ConnectTimeout { .. } => FailureReason::ConnectTimeout,
            Error::BadHandshake(_)
            | Error::MalformedHead(_)
            | Error::HeadTooLarge { .. }
            | Error::TooManyHeaders { .. } => FailureReason::BadRequest,
            Error::UpstreamTimeout { .. } => FailureReason::UpstreamTimeout,
            Error::UpstreamProtocol { .. } | Error::UpstreamTls { .. } => {
                FailureReason::UpstreamProtocol
            }
            // Refusals are counted by `refusal`, never as failures; bad requests all the same.
            Error::Path(_) | Error::Origin { .. } | Error::IpDenied { .. } => {
                FailureReason::BadRequest
            }
        }
    }

    /// Why the edge refused the request, when it did (a check of issue 20 failed): then it
    /// is counted in `wsgate_refusals_total` and logged by the refusal log, not as a failure.
    pub fn refusal(&self) -> Option<RefusalReason> {
        match self {
            Error::Path(_) => Some(RefusalReason::Path),
            Error::Origin { .. } => Some(RefusalReason::Origin),
            Error::IpDenied { .. } => Some(RefusalReason::Ip),
            _ => None,
        }
    }

    /// This error and its causes, `: `-separated, for the answer's body and the log line.
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// The response the client gets: a small JSON body naming what went wrong.
    pub fn response(&self, request_id: &str) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": self.status().canonical_reason().unwrap_or("error"),
            "message": self.chain().to_string(),
            "requestId": request_id,
        });
        let mut builder = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", request_id);
        match self {
            Error::NoEndpoint { .. } => builder = builder.header(header::RETRY_AFTER, "1"),
            Error::BadHandshake(Handshake::UnsupportedVersion) => {
                builder = builder.header(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                )
            }
            _ => {}
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

/// `Error::chain`'s display.
pub struct Chain<'e>(&'e Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = std::error::Error::source(self.0);
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer's message carries every cause, so a 502 names what the backend did wrong.
    #[test]
    fn message_names_every_cause() {
        let e = Error::UpstreamProtocol {
            endpoint: "b:80".into(),
            source: UpstreamProtocol::InvalidHead(httparse::Error::Token),
        };
        assert_eq!(
            e.chain().to_string(),
            "backend b:80 broke the protocol: invalid response head: invalid token"
        );
    }

    /// A version other than 13 is 426 with the version wsgate speaks (RFC 6455 §4.2.2);
    /// every other handshake problem is 400.
    #[test]
    fn unsupported_version_is_426_naming_13() {
        let resp = Error::BadHandshake(Handshake::UnsupportedVersion).response("r");
        assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(resp.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        let resp = Error::BadHandshake(Handshake::VersionMissing).response("r");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert!(resp.headers().get(header::SEC_WEBSOCKET_VERSION).is_none());
    }
}
