//! The built-in echo backend on real loopback sockets, driven by a tokio-tungstenite client and a
//! hyper HTTP/1 client.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate::echo::{serve, EchoConfig};

/// Every await in these tests is bounded by this.
const STEP: Duration = Duration::from_secs(5);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running echo server; dropping it shuts the server down.
struct Echo {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Echo {
    async fn start(name: &str) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = EchoConfig {
            name: name.to_owned(),
        };
        let task = tokio::spawn(serve(listener, config, async move {
            let _ = stopped.await;
        }));
        Echo {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    async fn connect(&self, path_and_query: &str) -> Client {
        let (client, response) = within(tokio_tungstenite::connect_async(
            self.ws_url(path_and_query),
        ))
        .await
        .expect("WebSocket handshake");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        client
    }

    /// Signals shutdown and waits for `serve` to return.
    async fn shut_down(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(&mut self.task).await.expect("serve task")
    }
}

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .expect("step timed out")
}

/// The next message, which must arrive in time and read cleanly.
async fn next_message(client: &mut Client) -> Message {
    within(client.next())
        .await
        .expect("stream ended")
        .expect("read failed")
}

async fn http(addr: SocketAddr, request: Request<Full<Bytes>>) -> Response<Incoming> {
    let stream = within(TcpStream::connect(addr)).await.expect("connect");
    let (mut sender, connection) =
        within(hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .expect("HTTP handshake");
    tokio::spawn(connection);
    within(sender.send_request(request)).await.expect("request")
}

async fn body_bytes(response: Response<Incoming>) -> Bytes {
    within(response.into_body().collect())
        .await
        .expect("body")
        .to_bytes()
}

fn get(addr: SocketAddr, path_and_query: &str) -> Request<Full<Bytes>> {
    Request::get(path_and_query)
        .header("host", addr.to_string())
        .body(Full::default())
        .expect("request")
}

/// Text messages come back unchanged.
#[tokio::test]
async fn websocket_text_message_is_echoed() {
    let echo = Echo::start("echo-1").await;
    let mut client = echo.connect("/any/path").await;
    within(client.send(Message::text("hello"))).await.unwrap();
    assert_eq!(next_message(&mut client).await, Message::text("hello"));
}

/// Binary messages come back unchanged, small and 1 MiB alike.
#[tokio::test]
async fn websocket_binary_messages_small_and_one_mib_are_echoed() {
    let echo = Echo::start("echo-1").await;
    let mut client = echo.connect("/").await;
    within(client.send(Message::binary(vec![0_u8, 1, 2, 255])))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Message::binary(vec![0_u8, 1, 2, 255])
    );
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    within(client.send(Message::binary(big.clone())))
        .await
        .unwrap();
    assert_eq!(next_message(&mut client).await, Message::binary(big));
}

/// A message sent in three fragments is echoed as the whole message.
#[tokio::test]
async fn websocket_fragmented_message_is_echoed_whole() {
    let echo = Echo::start("echo-1").await;
    let mut client = echo.connect("/").await;
    let fragments = [
        Frame::message("hel", OpCode::Data(Data::Text), false),
        Frame::message("lo ", OpCode::Data(Data::Continue), false),
        Frame::message("world", OpCode::Data(Data::Continue), true),
    ];
    for fragment in fragments {
        within(client.send(Message::Frame(fragment))).await.unwrap();
    }
    assert_eq!(
        next_message(&mut client).await,
        Message::text("hello world")
    );
}

/// A ping is answered with a pong carrying the same payload.
#[tokio::test]
async fn websocket_ping_is_answered_with_pong() {
    let echo = Echo::start("echo-1").await;
    let mut client = echo.connect("/").await;
    within(client.send(Message::Ping(Bytes::from_static(b"are you there"))))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );
}

/// The client's Close is answered with a Close carrying the same code.
#[tokio::test]
async fn websocket_client_close_code_is_echoed() {
    let echo = Echo::start("echo-1").await;
    let mut client = echo.connect("/").await;
    let frame = CloseFrame {
        code: CloseCode::from(4321),
        reason: "bye".into(),
    };
    within(client.close(Some(frame))).await.unwrap();
    match next_message(&mut client).await {
        Message::Close(Some(reply)) => assert_eq!(reply.code, CloseCode::from(4321)),
        other => panic!("expected a Close reply, got {other:?}"),
    }
    assert!(within(client.next()).await.is_none());
}

/// The first offered subprotocol is selected; permessage-deflate is never accepted.
#[tokio::test]
async fn websocket_selects_first_subprotocol_and_declines_deflate() {
    let echo = Echo::start("echo-1").await;
    let mut request = echo.ws_url("/").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "chat.v2, chat.v1".parse().unwrap(),
    );
    headers.insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (mut client, response) = within(tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2"
    );
    assert!(response.headers().get("sec-websocket-extensions").is_none());
    assert_eq!(response.headers().get("x-echo-name").unwrap(), "echo-1");
    within(client.send(Message::text("still echoes")))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Message::text("still echoes")
    );
}

/// `hello=1` first sends JSON describing the handshake, custom headers included, then echoes.
#[tokio::test]
async fn websocket_hello_describes_handshake_with_custom_header() {
    let echo = Echo::start("echo-hello").await;
    let mut request = echo
        .ws_url("/chat/ws?room=a&hello=1")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", "10.1.2.3".parse().unwrap());
    let (mut client, _) = within(tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake");
    let Message::Text(hello) = next_message(&mut client).await else {
        panic!("the hello must be a text message");
    };
    let hello: Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(hello["echo"], "echo-hello");
    assert_eq!(hello["path"], "/chat/ws");
    assert_eq!(hello["query"], "room=a&hello=1");
    assert_eq!(hello["headers"]["x-forwarded-for"], "10.1.2.3");
    assert_eq!(hello["headers"]["upgrade"], "websocket");
    within(client.send(Message::text("after hello")))
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut client).await,
        Message::text("after hello")
    );
}

/// `close=4000` makes the server close with 4000 right after the handshake.
#[tokio::test]
async fn websocket_close_query_closes_with_that_code() {
    let echo = Echo::start("echo-1").await;
    let mut client = echo.connect("/?close=4000").await;
    match next_message(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::from(4000)),
        other => panic!("expected Close 4000, got {other:?}"),
    }
    assert!(within(client.next()).await.is_none());
}

/// `drop=1` cuts the TCP connection after the first echo, without a Close frame.
#[tokio::test]
async fn websocket_drop_query_ends_connection_without_close_frame() {
    let echo = Echo::start("echo-1").await;
    let mut client = echo.connect("/?drop=1").await;
    within(client.send(Message::text("last words")))
        .await
        .unwrap();
    assert_eq!(next_message(&mut client).await, Message::text("last words"));
    match within(client.next()).await {
        None | Some(Err(_)) => {}
        Some(Ok(message)) => panic!("expected the connection to drop, got {message:?}"),
    }
}

/// A request whose first frame arrives in the same segment as the handshake is still echoed.
#[tokio::test]
async fn websocket_frame_coalesced_with_handshake_is_echoed() {
    let echo = Echo::start("echo-1").await;
    let mut stream = within(TcpStream::connect(echo.addr)).await.unwrap();
    let mask = [0x11_u8, 0x22, 0x33, 0x44];
    let mut bytes = format!(
        "GET /raw HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        echo.addr
    )
    .into_bytes();
    bytes.extend_from_slice(&[0x81, 0x80 | 2]);
    bytes.extend_from_slice(&mask);
    bytes.extend(b"hi".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    within(stream.write_all(&bytes)).await.unwrap();

    // Read until the head and the whole 4-byte echo frame are in: segmentation may split them.
    let mut received = BytesMut::new();
    let expected_frame = [0x81_u8, 2, b'h', b'i'];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert!(
                head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "accept key missing: {head}"
            );
            if received.len() >= end + 4 + expected_frame.len() {
                assert_eq!(&received[end + 4..end + 8], &expected_frame);
                break;
            }
        }
        let read = within(stream.read_buf(&mut received)).await.unwrap();
        assert!(read > 0, "connection closed early: {received:?}");
    }
}

/// A malformed upgrade (no key) is refused with 400 naming the problem.
#[tokio::test]
async fn websocket_upgrade_without_key_is_refused_with_400() {
    let echo = Echo::start("echo-1").await;
    let request = Request::get("/ws")
        .header("host", echo.addr.to_string())
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .body(Full::default())
        .unwrap();
    let response = http(echo.addr, request).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = body_bytes(response).await;
    assert!(
        String::from_utf8_lossy(&body).contains("Sec-WebSocket-Key"),
        "{body:?}"
    );
}

/// Plain HTTP is answered with JSON describing the request, body included, and no cookie.
#[tokio::test]
async fn http_request_is_echoed_as_json() {
    let echo = Echo::start("echo-http").await;
    let request = Request::post("/negotiate?negotiateVersion=1")
        .header("host", echo.addr.to_string())
        .header("x-custom", "one")
        .header("cookie", "a=1")
        .body(Full::new(Bytes::from_static(b"{\"hello\":true}")))
        .unwrap();
    let response = http(echo.addr, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-echo-name"], "echo-http");
    assert!(response.headers().get("set-cookie").is_none());
    let body: Value = serde_json::from_slice(&body_bytes(response).await).unwrap();
    assert_eq!(body["echo"], "echo-http");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/negotiate");
    assert_eq!(body["query"], "negotiateVersion=1");
    assert_eq!(body["headers"]["x-custom"], "one");
    assert_eq!(body["headers"]["cookie"], "a=1");
    assert_eq!(body["body"], "{\"hello\":true}");
}

/// SSE events flow one by one: the first arrives while the stream is still open.
#[tokio::test]
async fn http_sse_events_arrive_one_by_one() {
    let echo = Echo::start("echo-sse").await;
    let response = http(
        echo.addr,
        get(echo.addr, "/hub/sse?events=3&interval_ms=250"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut received = String::new();
    while !received.contains("\n\n") {
        let frame = within(body.frame())
            .await
            .expect("stream ended before the first event")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            received.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert_eq!(
        received.matches("\n\n").count(),
        1,
        "the first event must arrive alone: {received:?}"
    );
    assert!(
        !body.is_end_stream(),
        "the stream must still be open after the first event"
    );
    let first_at = Instant::now();
    let rest = within(body.collect()).await.expect("rest").to_bytes();
    received.push_str(std::str::from_utf8(&rest).unwrap());
    // The server still had to wait two intervals after the first event; only a loose lower bound.
    assert!(first_at.elapsed() >= Duration::from_millis(100));
    let events: Vec<&str> = received.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 3, "{received:?}");
    for (i, event) in events.iter().enumerate() {
        let n = i + 1;
        let (id, data) = event.split_once('\n').unwrap();
        assert_eq!(id, format!("id: {n}"));
        let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data, json!({ "n": n, "echo": "echo-sse" }));
    }
}

/// A poll is held for `hold_ms` before it is answered.
#[tokio::test]
async fn http_poll_is_held_before_answer() {
    let echo = Echo::start("echo-poll").await;
    let started = Instant::now();
    let response = http(echo.addr, get(echo.addr, "/hub/poll?id=x&hold_ms=300")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(&body_bytes(response).await).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(body, json!({ "held_ms": 300, "echo": "echo-poll" }));
}

/// `status/418` answers 418 to plain requests and to WebSocket upgrades alike.
#[tokio::test]
async fn status_path_answers_that_status_to_plain_and_upgrade_requests() {
    let echo = Echo::start("echo-tea").await;
    let response = http(echo.addr, get(echo.addr, "/prefix/status/418")).await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(response.headers()["x-echo-name"], "echo-tea");
    assert_eq!(body_bytes(response).await, "status 418 from echo-tea");

    let refused = within(tokio_tungstenite::connect_async(
        echo.ws_url("/prefix/status/418"),
    ))
    .await;
    match refused {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
            assert_eq!(response.headers()["x-echo-name"], "echo-tea");
            if let Some(body) = response.body() {
                assert_eq!(body.as_slice(), b"status 418 from echo-tea");
            }
        }
        Err(other) => panic!("expected an HTTP 418 answer, got {other}"),
        Ok(_) => panic!("expected the upgrade to be refused with 418"),
    }
}

/// Shutdown sends Close 1001 to open WebSockets, stops accepting and returns.
#[tokio::test]
async fn shutdown_closes_open_websockets_with_1001_and_returns() {
    let echo = Echo::start("echo-1").await;
    let addr = echo.addr;
    let mut first = echo.connect("/a").await;
    let mut second = echo.connect("/b?hello=1").await;
    assert!(matches!(next_message(&mut second).await, Message::Text(_)));
    // The session is established server-side once an echo came back.
    within(first.send(Message::text("up"))).await.unwrap();
    assert_eq!(next_message(&mut first).await, Message::text("up"));

    let stopping = tokio::spawn(echo.shut_down());
    for client in [&mut first, &mut second] {
        match next_message(client).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
            other => panic!("expected Close 1001, got {other:?}"),
        }
        // Reading on sends the Close reply and sees the end.
        assert!(within(client.next()).await.is_none());
    }
    within(stopping).await.unwrap().expect("serve returns Ok");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener must be closed after shutdown"
    );
}

/// A name that cannot be a header value is refused before serving.
#[tokio::test]
async fn serve_with_name_unfit_for_header_fails_with_invalid_input() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = EchoConfig {
        name: "bad\nname".to_owned(),
    };
    let error = within(serve(listener, config, std::future::pending()))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
}
