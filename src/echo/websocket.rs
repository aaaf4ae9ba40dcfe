//! The WebSocket side: the handshake answered through hyper, then an echo session on the
//! upgraded connection with tokio-tungstenite.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{
    HeaderMap, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::http::text;
use super::request::{headers_json, query_flag, query_param};
use super::{Body, Echo};

/// Largest message and frame the echo accepts, so benchmarks and tests can send big payloads.
pub(super) const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long a server-initiated close waits for the peer's Close before dropping the connection.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the request asks for a WebSocket (`Upgrade: websocket`); it may still be malformed.
pub(super) fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    has_token(request.headers(), UPGRADE, "websocket")
}

/// Answers the handshake: 101 and a spawned echo session, or 400 naming what is wrong.
pub(super) fn accept<B>(mut request: Request<B>, echo: &Arc<Echo>) -> Response<Body> {
    let accept_key = match check_handshake(&request) {
        Ok(key) => derive_accept_key(key.as_bytes()),
        Err(refusal) => return refusal.into_response(),
    };
    let plan = match Plan::from_request(&request, &echo.name) {
        Ok(plan) => plan,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };

    let mut response = Response::new(Empty::new().boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    // The key is ASCII base64 and the accept key is base64 of a digest: always valid.
    if let Ok(accept) = HeaderValue::from_str(&accept_key) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = first_offered_protocol(request.headers()) {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    // Sec-WebSocket-Extensions is never answered: tungstenite has no permessage-deflate.

    let on_upgrade: OnUpgrade = hyper::upgrade::on(&mut request);
    let echo = Arc::clone(echo);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run_session(upgraded, plan, &echo).await,
            Err(error) => tracing::debug!(%error, "echo: WebSocket upgrade failed"),
        }
    });
    response
}

/// Why a handshake is refused with 400.
#[derive(Debug)]
enum Refusal {
    NotGet(Method),
    NoConnectionUpgrade,
    /// RFC 6455 §4.4: the answer names the version to retry with.
    UnsupportedVersion,
    MissingKey,
    MalformedKey,
}

impl Refusal {
    fn into_response(self) -> Response<Body> {
        let message = match &self {
            Refusal::NotGet(method) => format!("a WebSocket upgrade must use GET, not {method}"),
            Refusal::NoConnectionUpgrade => {
                "a WebSocket upgrade needs `Connection: upgrade`".to_owned()
            }
            Refusal::UnsupportedVersion => "Sec-WebSocket-Version must be 13".to_owned(),
            Refusal::MissingKey => "Sec-WebSocket-Key is missing".to_owned(),
            Refusal::MalformedKey => "Sec-WebSocket-Key must be 16 bytes in base64".to_owned(),
        };
        let mut response = text(StatusCode::BAD_REQUEST, message);
        if matches!(self, Refusal::UnsupportedVersion) {
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

/// The checks RFC 6455 §4.2.1 asks of a server; returns the `Sec-WebSocket-Key`.
fn check_handshake<B>(request: &Request<B>) -> Result<&str, Refusal> {
    if request.method() != Method::GET {
        return Err(Refusal::NotGet(request.method().clone()));
    }
    let headers = request.headers();
    if !has_token(headers, CONNECTION, "upgrade") {
        return Err(Refusal::NoConnectionUpgrade);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refusal::UnsupportedVersion);
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .ok_or(Refusal::MissingKey)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(nonce) if nonce.len() == 16 => Ok(key),
        _ => Err(Refusal::MalformedKey),
    }
}

/// Whether a comma-separated header (over all its lines) holds `token`, ignoring case.
fn has_token(headers: &HeaderMap, name: hyper::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// The first subprotocol the client offers: the echo speaks all of them alike.
pub(super) fn first_offered_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|protocol| !protocol.is_empty())
        .and_then(|protocol| HeaderValue::from_str(protocol).ok())
}

/// What a session does besides echoing, from the handshake's query switches.
#[derive(Debug)]
pub(super) struct Plan {
    /// `hello=1`: JSON describing the handshake request, sent first.
    pub(super) hello: Option<String>,
    /// `close=CODE`: close with CODE after the hello.
    pub(super) close: Option<CloseCode>,
    /// `drop=1`: drop the TCP connection, without a Close, after the first echoed message.
    pub(super) drop_after_first: bool,
}

impl Plan {
    pub(super) fn from_request<B>(request: &Request<B>, name: &str) -> Result<Plan, String> {
        let query = request.uri().query();
        let close = match query_param(query, "close") {
            None => None,
            Some(raw) => Some(sendable_close_code(raw)?),
        };
        let hello = query_flag(query, "hello").then(|| {
            json!({
                "echo": name,
                "path": request.uri().path(),
                "query": query,
                "headers": headers_json(request.headers()),
            })
            .to_string()
        });
        Ok(Plan {
            hello,
            close,
            drop_after_first: query_flag(query, "drop"),
        })
    }
}

/// A close code an endpoint may put on the wire (RFC 6455 §7.4).
fn sendable_close_code(raw: &str) -> Result<CloseCode, String> {
    raw.parse::<u16>()
        .ok()
        .map(CloseCode::from)
        .filter(|code| code.is_allowed())
        .ok_or_else(|| {
            format!(
                "query parameter `close` must be a close code allowed on the wire \
                 (1000-1003, 1007-1014, 3000-4999), got `{raw}`"
            )
        })
}

fn session_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Why the echo loop stopped.
enum End {
    /// The peer closed, or the connection failed: nothing more to send.
    Finished,
    /// The server closes with this code (`close=CODE`, or shutdown's 1001).
    Close(CloseFrame),
    /// `drop=1`: cut the connection without a Close frame.
    Drop,
}

async fn run_session(upgraded: Upgraded, plan: Plan, echo: &Echo) {
    let mut socket = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(session_config()),
    )
    .await;
    let end = tokio::select! {
        end = converse(&mut socket, &plan) => end,
        () = echo.stopped() => End::Close(CloseFrame {
            code: CloseCode::Away,
            reason: "echo shutting down".into(),
        }),
    };
    match end {
        End::Finished | End::Drop => {}
        End::Close(frame) => close(&mut socket, frame).await,
    }
}

async fn converse(socket: &mut Socket, plan: &Plan) -> End {
    if let Some(hello) = &plan.hello {
        if socket.send(Message::text(hello.as_str())).await.is_err() {
            return End::Finished;
        }
    }
    if let Some(code) = plan.close {
        return End::Close(CloseFrame {
            code,
            reason: "".into(),
        });
    }
    loop {
        let Some(first) = socket.next().await else {
            return End::Finished;
        };
        let mut echoed = match echo_message(socket, first).await {
            Ok(echoed) => echoed,
            Err(()) => return End::Finished,
        };
        // Echo whatever else is already readable before flushing once: fewer writes under load.
        while let Some(Some(next)) = socket.next().now_or_never() {
            match echo_message(socket, next).await {
                Ok(more) => echoed |= more,
                Err(()) => return End::Finished,
            }
        }
        // Also sends the pongs and the Close reply tungstenite queued while reading.
        if socket.flush().await.is_err() {
            return End::Finished;
        }
        if plan.drop_after_first && echoed {
            return End::Drop;
        }
    }
}

/// Queues the echo of a data message; `Ok(true)` when one was queued.
async fn echo_message(
    socket: &mut Socket,
    message: Result<Message, tokio_tungstenite::tungstenite::Error>,
) -> Result<bool, ()> {
    match message {
        Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
            socket.feed(message).await.map_err(|_| ())?;
            Ok(true)
        }
        // Tungstenite answers pings and Close itself; the reply leaves with the next flush.
        Ok(_) => Ok(false),
        Err(error) => {
            tracing::debug!(%error, "echo: WebSocket session ended");
            Err(())
        }
    }
}

/// Sends Close and waits, briefly, for the peer's Close so the TCP connection ends cleanly.
async fn close(socket: &mut Socket, frame: CloseFrame) {
    let handshake = async {
        if socket.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = socket.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, handshake).await;
}
