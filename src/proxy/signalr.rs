//! SignalR negotiate responses on routes with `pinSignalRConnections`: the small JSON body
//! is read for its connection token, which is pinned to the endpoint that answered, and
//! then passed on unchanged. Other responses are never buffered.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::balance::Backend;
use crate::table::CompiledRoute;

/// Negotiate bodies are a few hundred bytes; a larger one is passed on without learning.
pub const MAX_NEGOTIATE_BODY: usize = 64 * 1024;

/// `POST [endpoint-base]/negotiate` (TransportProtocols.md).
pub fn is_negotiate<B>(req: &Request<B>) -> bool {
    req.method() == Method::POST
        && req
            .uri()
            .path()
            .trim_end_matches('/')
            .ends_with("/negotiate")
}

/// Reads the negotiate body (bounded by size and `wait`), pins its token to `backend`,
/// and returns a body that replays what was read followed by whatever remains.
pub async fn learn(
    route: &CompiledRoute,
    backend: &Backend,
    mut body: Incoming,
    wait: Duration,
    now_ms: u64,
) -> ReplayBody {
    let mut read = VecDeque::new();
    let mut data = BytesMut::new();
    let mut complete = false;
    let collect = async {
        loop {
            match body.frame().await {
                None => {
                    complete = true;
                    break;
                }
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        data.extend_from_slice(d);
                    }
                    read.push_back(Ok(frame));
                    if data.len() > MAX_NEGOTIATE_BODY {
                        break;
                    }
                }
                Some(Err(e)) => {
                    read.push_back(Err(e));
                    break;
                }
            }
        }
    };
    let timed_out = tokio::time::timeout(wait, collect).await.is_err();
    if complete && !timed_out {
        match connection_token(&data) {
            Some(token) => {
                route.balancer.pin_signalr(&token, backend, now_ms);
                tracing::debug!(route = %route.route.id, endpoint = %backend.endpoint.authority(), "SignalR connection pinned");
            }
            None => {
                tracing::debug!(route = %route.route.id, "negotiate response without a connection token (redirect or error); nothing pinned")
            }
        }
    }
    ReplayBody {
        read,
        rest: (!complete).then_some(body),
    }
}

/// v1 clients send `connectionToken` as `id`; v0 responses only have `connectionId`.
fn connection_token(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Negotiate {
        connection_token: Option<String>,
        connection_id: Option<String>,
    }
    let n: Negotiate = serde_json::from_slice(body).ok()?;
    n.connection_token
        .or(n.connection_id)
        .filter(|t| !t.is_empty())
}

/// The frames already read, then the rest of the backend's body.
pub struct ReplayBody {
    read: VecDeque<Result<Frame<Bytes>, hyper::Error>>,
    rest: Option<Incoming>,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(f) = self.read.pop_front() {
            return Poll::Ready(Some(f));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .read
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref().map(|d| d.len() as u64))
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(r) => {
                let h = r.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + buffered);
                if let Some(u) = h.upper() {
                    out.set_upper(u + buffered);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::connection_token;

    /// v1 negotiate responses pin `connectionToken`, v0 ones `connectionId`; redirects none.
    #[test]
    fn connection_token_prefers_token_then_id() {
        let v1 = br#"{"connectionToken":"tok","connectionId":"cid","negotiateVersion":1,"availableTransports":[]}"#;
        assert_eq!(connection_token(v1).as_deref(), Some("tok"));
        let v0 = br#"{"connectionId":"cid","negotiateVersion":0,"availableTransports":[]}"#;
        assert_eq!(connection_token(v0).as_deref(), Some("cid"));
        assert_eq!(
            connection_token(br#"{"url":"https://x/chat","accessToken":"a"}"#),
            None
        );
        assert_eq!(connection_token(b"not json"), None);
    }
}
