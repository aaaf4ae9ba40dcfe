//! Plain HTTP answers: the request echo, Server-Sent Events, a held "long poll" and fixed statuses.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::request::{headers_json, query_number};
use super::{Body, Echo};

/// Largest request body the echo reads; larger ones get 413.
pub(super) const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

const DEFAULT_SSE_EVENTS: u64 = 3;
const DEFAULT_SSE_INTERVAL_MS: u64 = 100;

/// `.../status/CODE`: CODE with a body naming it and this instance.
pub(super) fn status(status: StatusCode, echo: &Echo) -> Response<Body> {
    text(
        status,
        format!("status {} from {}", status.as_u16(), echo.name),
    )
}

/// The request described as JSON, body included (UTF-8, lossily).
pub(super) async fn echo(request: Request<Incoming>, echo: &Echo) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds {MAX_BODY_BYTES} bytes"),
            );
        }
        Err(error) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {error}"),
            );
        }
    };
    json_response(
        StatusCode::OK,
        &json!({
            "echo": echo.name,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers_json(&parts.headers),
            "body": String::from_utf8_lossy(&body),
        }),
    )
}

/// `.../sse?events=N&interval_ms=M`: N events, the first at once, then one every M ms, each its
/// own body frame so it reaches the client (through a gateway) before the next is produced.
pub(super) fn sse<B>(request: &Request<B>, echo: &Echo) -> Response<Body> {
    let query = request.uri().query();
    let events = match query_number(query, "events", DEFAULT_SSE_EVENTS) {
        Ok(events) => events,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let interval = match query_number(query, "interval_ms", DEFAULT_SSE_INTERVAL_MS) {
        Ok(ms) => Duration::from_millis(ms),
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let name = echo.name.clone();
    let stream = futures_util::stream::unfold(1_u64, move |n| {
        let name = name.clone();
        async move {
            if n > events {
                return None;
            }
            if n > 1 {
                tokio::time::sleep(interval).await;
            }
            let event = format!("id: {n}\ndata: {}\n\n", json!({ "n": n, "echo": name }));
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), n + 1))
        }
    });
    let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `.../poll?hold_ms=M`: answers after M ms, like a long poll that finally got data.
pub(super) async fn poll<B>(request: &Request<B>, echo: &Echo) -> Response<Body> {
    let held_ms = match query_number(request.uri().query(), "hold_ms", 0_u64) {
        Ok(ms) => ms,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    tokio::time::sleep(Duration::from_millis(held_ms)).await;
    json_response(
        StatusCode::OK,
        &json!({ "held_ms": held_ms, "echo": echo.name }),
    )
}

/// A `text/plain` answer.
pub(super) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
