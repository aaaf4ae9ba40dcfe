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
    #[error("over a limit")]
    Limited(#[source] Limited),
    // Authentication (issue 20): 401 and 403, counted as refusals.
    #[error("not authenticated")]
    Unauthorized(#[source] TokenRejected),
    #[error("not authorized")]
    Forbidden(#[source] Forbidden),
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

/// Why a request's token was not accepted (a 401). Never carries the token or anything
/// read from it but the algorithm's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejected {
    /// No `Authorization: Bearer` header and no `access_token` query parameter.
    #[error("no bearer token (`Authorization: Bearer` header or `access_token` query parameter)")]
    Missing,
    #[error("more than one `access_token` query parameter")]
    Ambiguous,
    /// The route's JWKS file or Secret is missing or unusable: every token is refused.
    #[error("the route's key set is not available")]
    KeysUnavailable,
    #[error("the token is not a JWT with a supported `alg`")]
    Malformed,
    #[error("no key of the route's key set verifies this token's `kid` and `alg` ({alg})")]
    NoKey { alg: &'static str },
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (`nbf`)")]
    NotYetValid,
    #[error("the token's issuer is not the route's")]
    WrongIssuer,
    #[error("the token's audience is not the route's")]
    WrongAudience,
    #[error("the token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token's claims are not valid")]
    InvalidClaims,
}

/// Why a valid token does not give access to the route (a 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// A scope of `allowedScopes` is not in the token's `scope`/`scp`.
    #[error("the token lacks the scope `{missing}`")]
    Scope { missing: String },
    /// A claim of `routeClaimsRequirement` is absent or has another value.
    #[error("the token's `{claim}` claim does not have the value the route requires")]
    Claim { claim: String },
}

/// A request refused by a limit (`spec.limits`, `spec.rateLimitOptions`,
/// `--max-connections`), before any backend was dialled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Limited {
    /// 503: the route has `maxConnections` upgraded connections.
    #[error("route {route} has {limit} connections, its maxConnections")]
    RouteConnections { route: String, limit: u32 },
    /// 429: the client has `maxConnectionsPerClient` connections on the route.
    #[error("the client has {limit} connections on route {route}, its maxConnectionsPerClient")]
    ClientConnections { route: String, limit: u32 },
    /// 503: the route counts the connections of as many clients as it can track.
    #[error("route {route} tracks the connections of as many clients as it can")]
    ClientTableFull { route: String },
    /// 503: the process has `--max-connections` connections and requests in flight.
    #[error("wsgate has {limit} connections, its --max-connections")]
    ProcessConnections { limit: u32 },
    /// 429: the client went over the route's `rateLimitOptions`.
    #[error("the client made more than {limit} requests in {period_ms} ms on route {route}; retry in {retry_after_secs} s")]
    Rate {
        route: String,
        limit: u64,
        period_ms: u64,
        retry_after_secs: u64,
    },
}

impl Limited {
    /// The `Retry-After` seconds: the rate limit's wait, else 1 (a connection may end at
    /// any time; clients back off on their own).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Limited::Rate {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => 1,
        }
    }
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
            Error::Limited(Limited::ClientConnections { .. } | Limited::Rate { .. }) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::Limited(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Path(_) => StatusCode::BAD_REQUEST,
            Error::Origin { .. } | Error::IpDenied { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// The `wsgate_failures_total` reason; `None` for a refusal (counted by `refusal`).
    pub fn reason(&self) -> Option<FailureReason> {
        Some(match self {
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
            // Counted as refusals (`refusal`), not failures.
            Error::Limited(_)
            | Error::Unauthorized(_)
            | Error::Forbidden(_)
            | Error::Path(_)
            | Error::Origin { .. }
            | Error::IpDenied { .. } => return None,
        })
    }

    /// The `wsgate_refusals_total` reason of a refusal by the edge's checks; `None` for a
    /// failure (counted by `reason`). A refusal is logged by the refusal log.
    pub fn refusal(&self) -> Option<RefusalReason> {
        match self {
            Error::Path(_) => Some(RefusalReason::Path),
            Error::Origin { .. } => Some(RefusalReason::Origin),
            Error::IpDenied { .. } => Some(RefusalReason::Ip),
            Error::Limited(Limited::Rate { .. }) => Some(RefusalReason::Rate),
            Error::Limited(_) => Some(RefusalReason::Connections),
            Error::Unauthorized(_) => Some(RefusalReason::Auth),
            Error::Forbidden(Forbidden::Scope { .. }) => Some(RefusalReason::Scope),
            Error::Forbidden(Forbidden::Claim { .. }) => Some(RefusalReason::Claims),
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
            Error::Limited(limited) => {
                builder = builder.header(header::RETRY_AFTER, limited.retry_after_secs())
            }
            Error::BadHandshake(Handshake::UnsupportedVersion) => {
                builder = builder.header(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                )
            }
            // RFC 6750 §3: no `error` when the request carried no token at all.
            Error::Unauthorized(TokenRejected::Missing) => {
                builder = builder.header(header::WWW_AUTHENTICATE, "Bearer")
            }
            Error::Unauthorized(_) => {
                builder = builder.header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")
            }
            Error::Forbidden(Forbidden::Scope { .. }) => {
                builder = builder.header(
                    header::WWW_AUTHENTICATE,
                    "Bearer error=\"insufficient_scope\"",
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

    /// Limits: 429 for a client's own excess (its connections, its request rate), 503 for
    /// the route's or the process's; each with `Retry-After` in whole seconds.
    #[test]
    fn limits_answer_429_or_503_with_retry_after() {
        let cases = [
            (
                Limited::ClientConnections {
                    route: "r".into(),
                    limit: 2,
                },
                429,
                "1",
                RefusalReason::Connections,
            ),
            (
                Limited::Rate {
                    route: "r".into(),
                    limit: 5,
                    period_ms: 1000,
                    retry_after_secs: 7,
                },
                429,
                "7",
                RefusalReason::Rate,
            ),
            (
                Limited::RouteConnections {
                    route: "r".into(),
                    limit: 9,
                },
                503,
                "1",
                RefusalReason::Connections,
            ),
            (
                Limited::ClientTableFull { route: "r".into() },
                503,
                "1",
                RefusalReason::Connections,
            ),
            (
                Limited::ProcessConnections { limit: 3 },
                503,
                "1",
                RefusalReason::Connections,
            ),
        ];
        for (limited, status, retry_after, reason) in cases {
            let e = Error::Limited(limited);
            let resp = e.response("r");
            assert_eq!(resp.status().as_u16(), status, "{e:?}");
            assert_eq!(resp.headers()[header::RETRY_AFTER], retry_after, "{e:?}");
            assert_eq!(e.refusal(), Some(reason));
            assert_eq!(e.reason(), None);
        }
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
