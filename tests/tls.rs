//! TLS both ways, on loopback with certificates generated per test: the TLS listener picks
//! certificates by SNI from the current table (exact, wildcard, default) and rotates them
//! with the table without touching live connections; `wss` backends are verified (platform
//! roots + the route's CA, backend host or `serverName`) unless the route opts out; TLS
//! below 1.2 is refused. The last test drives the real binary with certificate files.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use support::certs::{self, Ca, Leaf, TlsEcho};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsgate::api::{DownstreamScheme, WsRouteSpec};
use wsgate::model::Route;

fn tls_route(name: &str, host: &str, backend: SocketAddr, cert: Option<&Leaf>) -> Route {
    let mut s = spec("/{everything}", "/{everything}", &[backend]);
    s.upstream_host = Some(host.into());
    let mut r = route(name, 0, &s);
    r.certificate = cert.map(|c| c.certificate(name));
    r
}

fn wss_backend_route(
    name: &str,
    backend: SocketAddr,
    edit: impl FnOnce(&mut WsRouteSpec),
) -> Route {
    let mut s = spec("/{everything}", "/{everything}", &[backend]);
    s.downstream_scheme = Some(DownstreamScheme::Wss);
    edit(&mut s);
    route(name, 0, &s)
}

fn tls_addr(gw: &Gateway) -> SocketAddr {
    gw.server.tls_addr.expect("test gateway has a TLS listener")
}

/// Sends `text` and waits for the echo of it.
async fn round_trip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("send", ws.send(Message::text(text))).await.unwrap();
    let got = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(got, Message::text(text));
}

/// The answer to a raw WebSocket upgrade through the plain listener: status line and body.
async fn upgrade_answer(gw: &Gateway) -> (String, String) {
    let resp = raw_request(
        gw.server.listen_addr,
        b"GET /chat HTTP/1.1\r\nHost: gw\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let status = resp.lines().next().unwrap_or("").to_string();
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_string();
    (status, body)
}

/// Asserts the upgrade was refused with 502 because the backend's certificate failed
/// verification for `why`, not for another failure on the way (refused connection,
/// timeout, a backend that closed). `why` is rustls' reason, matched without case and
/// spaces so that its Debug (`NotValidForNameContext { .. }`) and Display (`certificate
/// not valid for name ..`) forms both count.
async fn assert_backend_certificate_refused(gw: &Gateway, why: &str) {
    let (status, body) = upgrade_answer(gw).await;
    assert!(status.contains(" 502 "), "{status}: {body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    let message = json["message"].as_str().unwrap_or_default();
    let squashed: String = message
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    assert!(
        message.contains("certificate") && squashed.contains(&why.to_lowercase()),
        "the 502 should name the certificate failure `{why}`: {body}"
    );
}

/// SNI picks the route's certificate for each host, the longest wildcard for a name under
/// it, and the default certificate for an unknown name or no match.
#[tokio::test]
async fn sni_picks_the_certificate_of_each_host_and_the_default_for_unknown_names() {
    let echo = Echo::start("echo").await;
    let ca = Ca::new("test CA");
    let (a, b) = (ca.issue(&["a.test"]), ca.issue(&["b.test"]));
    let wild = ca.issue(&["*.wild.test"]);
    let default = ca.issue(&["default.test"]);
    let routes = [
        tls_route("a", "a.test", echo.addr, Some(&a)),
        tls_route("b", "b.test", echo.addr, Some(&b)),
        tls_route("w", "*.wild.test", echo.addr, Some(&wild)),
    ];
    let gw = Gateway::start(&routes).await;
    gw.publisher
        .set_default_certificate(Some(default.certificate("default")));
    gw.publisher.publish(&routes);
    let addr = tls_addr(&gw);

    for (sni, want) in [
        ("a.test", &a),
        ("b.test", &b),
        ("x.wild.test", &wild),
        ("unknown.test", &default),
    ] {
        let (_, leaf) = certs::tls_connect(addr, sni).await.unwrap();
        assert_eq!(leaf, want.der, "certificate presented for SNI {sni}");
    }

    // And the connection is a working wss route.
    let (mut ws, _) = certs::wss_connect(addr, "b.test", "/chat").await;
    round_trip(&mut ws, "over tls").await;
}

/// Without a certificate for the name and without a default, the handshake is refused
/// with the alert a server with no certificate for the name sends (access_denied, as
/// rustls' server does when its resolver has none); the same gateway still serves the name
/// it has a certificate for, so the refusal is about the name, not a dead listener.
#[tokio::test]
async fn handshake_without_matching_certificate_or_default_is_refused() {
    let echo = Echo::start("echo").await;
    let a = Ca::new("test CA").issue(&["a.test"]);
    let gw = Gateway::start(&[tls_route("a", "a.test", echo.addr, Some(&a))]).await;
    let err = certs::tls_connect(tls_addr(&gw), "other.test")
        .await
        .expect_err("a handshake for other.test must fail");
    let tls_error = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    assert_eq!(
        tls_error,
        Some(&rustls::Error::AlertReceived(
            rustls::AlertDescription::AccessDenied
        )),
        "the gateway's alert, not another failure: {err:?}"
    );
    let (_, leaf) = certs::tls_connect(tls_addr(&gw), "a.test").await.unwrap();
    assert_eq!(leaf, a.der);
}

/// A new table with a new certificate: the open wss connection keeps working, a new
/// handshake gets the new certificate.
#[tokio::test]
async fn rotated_certificate_serves_new_handshakes_while_open_connections_keep_working() {
    let echo = Echo::start("echo").await;
    let ca = Ca::new("test CA");
    let (old, new) = (ca.issue(&["chat.test"]), ca.issue(&["chat.test"]));
    let gw = Gateway::start(&[tls_route("chat", "chat.test", echo.addr, Some(&old))]).await;
    let addr = tls_addr(&gw);

    let (mut open, leaf) = certs::wss_connect(addr, "chat.test", "/room").await;
    assert_eq!(leaf, old.der);
    round_trip(&mut open, "before").await;

    gw.publisher
        .publish(&[tls_route("chat", "chat.test", echo.addr, Some(&new))]);

    let (mut fresh, leaf) = certs::wss_connect(addr, "chat.test", "/room").await;
    assert_eq!(
        leaf, new.der,
        "a new handshake gets the rotated certificate"
    );
    round_trip(&mut fresh, "new").await;
    round_trip(&mut open, "after rotation").await;
}

/// A backend with a self-signed certificate is refused (502) unless the route sets
/// `dangerousAcceptAnyServerCertificateValidator`.
#[tokio::test]
async fn self_signed_backend_is_refused_by_default_and_accepted_with_the_dangerous_flag() {
    let backend = TlsEcho::start("tls-echo", &certs::self_signed(&["backend.test"])).await;

    let strict = Gateway::start(&[wss_backend_route("strict", backend.addr, |_| {})]).await;
    assert_backend_certificate_refused(&strict, "UnknownIssuer").await;
    let (code, body) = http_get(&strict.http("/plain")).await;
    assert_eq!(
        code, 502,
        "https pass-through to a self-signed backend: {body}"
    );
    assert!(body.contains("certificate"), "the 502 says why: {body}");

    let lax = Gateway::start(&[wss_backend_route("lax", backend.addr, |s| {
        s.dangerous_accept_any_server_certificate_validator = Some(true);
    })])
    .await;
    let mut ws = connect(&lax.ws("/chat")).await;
    round_trip(&mut ws, "through wss backend").await;
    let (code, _) = http_get(&lax.http("/plain")).await;
    assert_eq!(code, 200, "https pass-through with the dangerous flag");
}

/// A backend certificate from the route's CA is accepted when it names `serverName`, and
/// refused for another name or once expired.
#[tokio::test]
async fn custom_ca_backend_is_accepted_and_wrong_name_or_expired_is_refused() {
    let ca = Ca::new("backend CA");
    let good = TlsEcho::start("good", &ca.issue(&["backend.test"])).await;
    let wrong = TlsEcho::start("wrong", &ca.issue(&["other.test"])).await;
    let expired = TlsEcho::start("expired", &ca.issue_expired(&["backend.test"])).await;
    let with_ca = |name: &str, addr: SocketAddr| {
        let mut r = wss_backend_route(name, addr, |s| {
            s.backend_tls = Some(wsgate::api::BackendTlsSpec {
                server_name: Some("backend.test".into()),
                ..Default::default()
            });
        });
        r.backend_tls.ca = Some(ca.bundle());
        r
    };

    let gw = Gateway::start(&[with_ca("good", good.addr)]).await;
    let mut ws = connect(&gw.ws("/chat")).await;
    round_trip(&mut ws, "trusted by the route's CA").await;

    for (name, backend, why) in [
        ("wrong", &wrong, "NotValidForName"),
        ("expired", &expired, "Expired"),
    ] {
        let gw = Gateway::start(&[with_ca(name, backend.addr)]).await;
        assert_backend_certificate_refused(&gw, why).await;
    }

    // Without the CA, the platform roots alone do not trust the test CA.
    let gw = Gateway::start(&[wss_backend_route("no-ca", good.addr, |s| {
        s.backend_tls = Some(wsgate::api::BackendTlsSpec {
            server_name: Some("backend.test".into()),
            ..Default::default()
        });
    })])
    .await;
    assert_backend_certificate_refused(&gw, "UnknownIssuer").await;
}

/// A TLS 1.1 ClientHello gets an alert, never a ServerHello.
#[tokio::test]
async fn tls_1_1_client_hello_is_refused() {
    let echo = Echo::start("echo").await;
    let a = Ca::new("test CA").issue(&["a.test"]);
    let gw = Gateway::start(&[tls_route("a", "a.test", echo.addr, Some(&a))]).await;

    let hello = client_hello_tls11("a.test");
    let reply = within("TLS 1.1 reply", async {
        let mut s = tokio::net::TcpStream::connect(tls_addr(&gw)).await.unwrap();
        s.write_all(&hello).await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    })
    .await;
    assert!(
        reply.first() != Some(&0x16),
        "the server must not answer a TLS 1.1 hello with a handshake: {reply:02x?}"
    );
    assert_eq!(reply.first(), Some(&0x15), "an alert record: {reply:02x?}");
    // protocol_version (70) or handshake_failure (40)
    assert!(matches!(reply.get(6), Some(70) | Some(40)), "{reply:02x?}");
}

/// A minimal ClientHello offering only TLS 1.1 (no supported_versions extension).
fn client_hello_tls11(sni: &str) -> Vec<u8> {
    let mut ext = Vec::new();
    let name = sni.as_bytes();
    let list_len = 3 + name.len();
    ext.extend_from_slice(&[0x00, 0x00]); // server_name
    ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
    ext.extend_from_slice(&(list_len as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);

    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // AES-CBC-SHA suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);

    let mut record = vec![0x16, 0x03, 0x02];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The binary in file mode: a route's `tls.certFile`/`keyFile` are served by SNI, the
/// default certificate for other names; rewriting the certificate files switches new
/// handshakes to the new certificate while an open wss connection keeps working.
#[tokio::test]
async fn file_mode_serves_certificate_files_and_reloads_them_when_rewritten() {
    let echo = Echo::start("echo").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (first, second) = (ca.issue(&["chat.test"]), ca.issue(&["chat.test"]));
    let default = ca.issue(&["default.test"]);
    std::fs::create_dir(dir.path().join("certs")).unwrap();
    first.write(&dir.path().join("certs"), "chat");
    let (default_cert, default_key) = default.write(dir.path(), "default");
    std::fs::write(
        dir.path().join("routes.yaml"),
        format!(
            "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata:\n  name: chat\nspec:\n  upstreamHost: chat.test\n  upstreamPathTemplate: /{{everything}}\n  downstreamPathTemplate: /{{everything}}\n  downstreamHostAndPorts:\n    - host: {}\n      port: {}\n  tls:\n    certFile: certs/chat.crt\n    keyFile: certs/chat.key\n",
            echo.addr.ip(),
            echo.addr.port()
        ),
    )
    .unwrap();

    let process = Process::start(
        &[
            "run",
            "--routes",
            "routes.yaml",
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--default-cert",
            default_cert.to_str().unwrap(),
            "--default-key",
            default_key.to_str().unwrap(),
            "--reload-interval",
            "50ms",
        ],
        dir.path(),
    )
    .await;
    let addr = process.listening.tls_listen.expect("--tls-listen reported");
    // Standalone mode loads the routes files before it binds, so the first handshake after
    // the report is served from the loaded table.
    let (_, leaf) = certs::tls_connect(addr, "chat.test").await.unwrap();
    assert_eq!(leaf, first.der);
    let (_, leaf) = certs::tls_connect(addr, "else.test").await.unwrap();
    assert_eq!(leaf, default.der, "unknown names get --default-cert");

    let (mut open, _) = certs::wss_connect(addr, "chat.test", "/room").await;
    round_trip(&mut open, "before").await;

    // Key first, then the certificate: in between the pair does not match, the reload is
    // refused and the old certificate keeps serving.
    replace_file(&dir.path().join("certs/chat.key"), &second.key_pem);
    replace_file(&dir.path().join("certs/chat.crt"), &second.cert_pem);
    eventually_async("the rewritten certificate is served", DEADLINE, || async {
        let (_, leaf) = certs::tls_connect(addr, "chat.test").await.unwrap();
        if leaf == second.der {
            return Some(());
        }
        assert_eq!(
            leaf, first.der,
            "only the old or the new certificate is ever served"
        );
        None
    })
    .await;
    round_trip(&mut open, "after rotation").await;
    let (mut fresh, _) = certs::wss_connect(addr, "chat.test", "/room").await;
    round_trip(&mut fresh, "new connection").await;
}

/// TLS on both sides of the relay: large messages cross intact in both directions (the
/// poll-driven relay's backlog and TLS flushing), and a clean close ends both sides.
#[tokio::test]
async fn large_messages_cross_a_relay_with_tls_on_both_sides() {
    let ca = Ca::new("test CA");
    let backend = TlsEcho::start("tls-echo", &ca.issue(&["backend.test"])).await;
    let front = ca.issue(&["chat.test"]);
    let mut r = wss_backend_route("both", backend.addr, |s| {
        s.upstream_host = Some("chat.test".into());
        s.backend_tls = Some(wsgate::api::BackendTlsSpec {
            server_name: Some("backend.test".into()),
            ..Default::default()
        });
    });
    r.backend_tls.ca = Some(ca.bundle());
    r.certificate = Some(front.certificate("front"));
    let gw = Gateway::start(&[r]).await;

    let (mut ws, _) = certs::wss_connect(tls_addr(&gw), "chat.test", "/big").await;
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..2 {
        within("send big", ws.send(Message::binary(payload.clone())))
            .await
            .unwrap();
        let got = within("echo big", ws.next()).await.unwrap().unwrap();
        assert_eq!(got.into_data().as_ref(), payload.as_slice());
    }
    within("close", ws.close(None)).await.unwrap();
    loop {
        match within("close reply", ws.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(Message::Close(_))) => {}
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
    let metrics = gw.metrics.clone();
    eventually("relay ended", || {
        let text = metrics.encode();
        (text.contains("wsgate_connections_total{route=\"both\"} 1")
            && text.contains("wsgate_connections_active{route=\"both\"} 0"))
        .then_some(())
    })
    .await;
}
