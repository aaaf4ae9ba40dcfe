//! A protocol-faithful stand-in for an ASP.NET Core SignalR hub (no .NET SDK can be
//! installed here), after dotnet/aspnetcore's `src/SignalR/docs/specs/TransportProtocols.md`
//! and `HubProtocol.md`:
//!
//! - `POST {base}/negotiate?negotiateVersion=N`: v1 answers `connectionId`,
//!   `connectionToken`, `negotiateVersion` and `availableTransports` (WebSockets,
//!   ServerSentEvents, LongPolling); v0 (no or `0` version) only `connectionId`, which is
//!   then the `id`.
//! - `GET {base}?id=T` + WebSocket upgrade: the connection's WebSocket; without `id` a new
//!   connection (skipNegotiation clients).
//! - `GET {base}?id=T` with `Accept: text/event-stream`: Server-Sent Events, one `data:`
//!   event per message.
//! - `GET {base}?id=T` otherwise: a long poll. The first poll answers `200` at once (the
//!   connection is now long polling); later polls wait for messages, answer them
//!   concatenated, or an empty `200` after the poll timeout, or `204` once deleted.
//! - `POST {base}?id=T`: a send (bytes go to the hub protocol); `DELETE {base}?id=T` ends the
//!   connection (`202`).
//! - An `id` this instance does not know gets `404` on every one of these, like a real
//!   server; a missing `id` where it is mandatory gets `400`.
//!
//! Hub protocol (JSON, records end with `\x1e`): the handshake
//! `{"protocol":"json","version":1}` is answered `{}`; invocations (type 1) of `Echo`
//! complete (type 3) with their first argument, `Instance` with this instance's name,
//! anything else with an `error`; pings (6) are ignored, close (7) ends the connection.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Record separator ending every hub protocol message.
pub const RS: char = '\u{1e}';

type HubBody = UnsyncBoxBody<Bytes, Infallible>;

/// One running hub instance; stops when dropped.
pub struct SignalRHub {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<HubState>,
    stop: Option<oneshot::Sender<()>>,
}

struct HubState {
    name: String,
    base: String,
    poll_timeout: Duration,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
    counter: AtomicU64,
}

/// One SignalR connection: hub-protocol state plus the messages waiting for the client.
struct Connection {
    outbox: Mutex<VecDeque<String>>,
    ready: Notify,
    protocol: Mutex<Protocol>,
    /// Set by the first long poll or SSE request; WebSockets take the connection whole.
    transport: Mutex<Option<&'static str>>,
    closed: AtomicBool,
}

#[derive(Default)]
struct Protocol {
    handshaken: bool,
    buffer: String,
}

impl SignalRHub {
    /// A hub named `name` mapped at `base` (e.g. `/hub`), on loopback port 0.
    pub async fn start(name: &str, base: &str) -> SignalRHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(HubState {
            name: name.to_string(),
            base: base.trim_end_matches('/').to_string(),
            poll_timeout: Duration::from_secs(2),
            connections: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
        });
        let (stop, mut stopped) = oneshot::channel::<()>();
        let accept_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let state = Arc::clone(&accept_state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        SignalRHub {
            addr,
            name: name.to_string(),
            state,
            stop: Some(stop),
        }
    }

    /// Connections this instance holds (negotiated and not deleted).
    pub fn connections(&self) -> usize {
        self.state.connections.lock().unwrap().len()
    }
}

impl Drop for SignalRHub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<HubBody> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn status(code: StatusCode, text: &str) -> Response<HubBody> {
    respond(code, "text/plain", text.to_string())
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl HubState {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<HubBody> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let query = req.uri().query().map(str::to_string);
        if path == format!("{}/negotiate", self.base) {
            if req.method() != Method::POST {
                return status(StatusCode::METHOD_NOT_ALLOWED, "negotiate is POST");
            }
            return self.negotiate(query.as_deref());
        }
        if path != self.base {
            return status(StatusCode::NOT_FOUND, "no such hub");
        }
        let id = query_param(query.as_deref(), "id");
        let is_upgrade = req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        if req.method() == Method::GET && is_upgrade {
            let conn = match id {
                // skipNegotiation: a WebSocket without `id` is a new connection.
                None => self.new_connection().1,
                Some(id) => match self.connection(&id) {
                    Some(c) => c,
                    None => return status(StatusCode::NOT_FOUND, "No Connection with that ID"),
                },
            };
            return websocket(req, conn, self.name.clone());
        }
        let Some(id) = id else {
            return status(StatusCode::BAD_REQUEST, "Connection ID required");
        };
        let Some(conn) = self.connection(&id) else {
            return status(StatusCode::NOT_FOUND, "No Connection with that ID");
        };
        match *req.method() {
            Method::GET => {
                let sse = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("text/event-stream"));
                if sse {
                    server_sent_events(conn)
                } else {
                    self.long_poll(conn).await
                }
            }
            Method::POST => {
                let body = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return status(StatusCode::BAD_REQUEST, "body"),
                };
                conn.receive(&String::from_utf8_lossy(&body), &self.name);
                respond(StatusCode::OK, "text/plain", Bytes::new())
            }
            Method::DELETE => {
                self.connections.lock().unwrap().remove(&id);
                conn.closed.store(true, Ordering::SeqCst);
                conn.ready.notify_one();
                respond(StatusCode::ACCEPTED, "text/plain", Bytes::new())
            }
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "GET, POST or DELETE"),
        }
    }

    fn new_connection(&self) -> (String, Arc<Connection>) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Tokens look like a real server's: URL-safe and unguessable enough for a test.
        let token = format!("{}-tok-{n}-{:x}", self.name, std::process::id());
        let conn = Arc::new(Connection {
            outbox: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            protocol: Mutex::new(Protocol::default()),
            transport: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        self.connections
            .lock()
            .unwrap()
            .insert(token.clone(), Arc::clone(&conn));
        (token, conn)
    }

    fn connection(&self, token: &str) -> Option<Arc<Connection>> {
        self.connections.lock().unwrap().get(token).cloned()
    }

    fn negotiate(&self, query: Option<&str>) -> Response<HubBody> {
        let version: u32 = query_param(query, "negotiateVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
            .min(1);
        let (token, _) = self.new_connection();
        let transports = json!([
            {"transport": "WebSockets", "transferFormats": ["Text", "Binary"]},
            {"transport": "ServerSentEvents", "transferFormats": ["Text"]},
            {"transport": "LongPolling", "transferFormats": ["Text", "Binary"]},
        ]);
        let body = if version >= 1 {
            json!({
                "connectionId": format!("{}-cid-{}", self.name, self.counter.load(Ordering::Relaxed)),
                "connectionToken": token,
                "negotiateVersion": 1,
                "availableTransports": transports,
            })
        } else {
            json!({
                "connectionId": token,
                "negotiateVersion": 0,
                "availableTransports": transports,
            })
        };
        respond(StatusCode::OK, "application/json", body.to_string())
    }

    async fn long_poll(&self, conn: Arc<Connection>) -> Response<HubBody> {
        {
            let mut transport = conn.transport.lock().unwrap();
            if transport.is_none() {
                // The first poll only confirms the transport.
                *transport = Some("LongPolling");
                return respond(StatusCode::OK, "application/octet-stream", Bytes::new());
            }
        }
        let deadline = tokio::time::Instant::now() + self.poll_timeout;
        loop {
            if conn.closed.load(Ordering::SeqCst) {
                return respond(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
            }
            let pending: String = conn.outbox.lock().unwrap().drain(..).collect();
            if !pending.is_empty() {
                return respond(StatusCode::OK, "application/octet-stream", pending);
            }
            if tokio::time::timeout_at(deadline, conn.ready.notified())
                .await
                .is_err()
            {
                return respond(StatusCode::OK, "application/octet-stream", Bytes::new());
            }
        }
    }
}

impl Connection {
    /// Bytes from the client: split into records and answered per the hub protocol.
    fn receive(&self, text: &str, instance: &str) {
        let mut replies = Vec::new();
        {
            let mut p = self.protocol.lock().unwrap();
            p.buffer.push_str(text);
            while let Some(end) = p.buffer.find(RS) {
                let record: String = p.buffer[..end].to_string();
                p.buffer.drain(..=end);
                if !p.handshaken {
                    p.handshaken = true;
                    let ok = serde_json::from_str::<Value>(&record)
                        .is_ok_and(|v| v["protocol"] == "json" && v["version"].as_u64() == Some(1));
                    replies.push(if ok {
                        "{}".to_string()
                    } else {
                        json!({"error": "The protocol is not supported."}).to_string()
                    });
                    continue;
                }
                let Ok(msg) = serde_json::from_str::<Value>(&record) else {
                    self.closed.store(true, Ordering::SeqCst);
                    replies.push(json!({"type": 7, "error": "invalid message"}).to_string());
                    break;
                };
                match msg["type"].as_u64() {
                    Some(1) => {
                        let Some(invocation) = msg["invocationId"].as_str() else {
                            continue;
                        };
                        let target = msg["target"].as_str().unwrap_or("");
                        replies.push(match target {
                            "Echo" => json!({"type": 3, "invocationId": invocation, "result": msg["arguments"][0]}),
                            "Instance" => json!({"type": 3, "invocationId": invocation, "result": instance}),
                            other => json!({"type": 3, "invocationId": invocation, "error": format!("Unknown hub method '{other}'")}),
                        }.to_string());
                    }
                    Some(7) => self.closed.store(true, Ordering::SeqCst),
                    _ => {}
                }
            }
        }
        if !replies.is_empty() {
            let mut outbox = self.outbox.lock().unwrap();
            for r in replies {
                outbox.push_back(format!("{r}{RS}"));
            }
        }
        self.ready.notify_one();
    }
}

fn websocket(req: Request<Incoming>, conn: Arc<Connection>, instance: String) -> Response<HubBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return status(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let mut req = req;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        loop {
            let pending: Vec<String> = conn.outbox.lock().unwrap().drain(..).collect();
            for m in pending {
                if ws.send(Message::text(m)).await.is_err() {
                    return;
                }
            }
            if conn.closed.load(Ordering::SeqCst) {
                let _ = ws.close(None).await;
                return;
            }
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => conn.receive(t.as_str(), &instance),
                    Some(Ok(Message::Binary(b))) => conn.receive(&String::from_utf8_lossy(&b), &instance),
                    Some(Ok(_)) => {}
                    _ => return,
                },
                _ = conn.ready.notified() => {}
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

fn server_sent_events(conn: Arc<Connection>) -> Response<HubBody> {
    *conn.transport.lock().unwrap() = Some("ServerSentEvents");
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        loop {
            let pending: Vec<String> = conn.outbox.lock().unwrap().drain(..).collect();
            for m in pending {
                // One event per message; every line of it is a `data:` line.
                let mut event = String::new();
                for line in m.split('\n') {
                    event.push_str("data: ");
                    event.push_str(line);
                    event.push_str("\r\n");
                }
                event.push_str("\r\n");
                if tx.send(Bytes::from(event)).await.is_err() {
                    return;
                }
            }
            if conn.closed.load(Ordering::SeqCst) {
                return;
            }
            tokio::select! {
                _ = conn.ready.notified() => {}
                _ = tx.closed() => return,
            }
        }
    });
    let mut resp = Response::new(ChannelBody { rx }.boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A streaming response body fed from a channel (the SSE stream).
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}
