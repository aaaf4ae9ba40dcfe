//! Authentication through the real gateway on loopback (issue 20, item 4): routes loaded
//! from a routes file with a JWKS file next to it, tokens signed in the test with RSA, EC
//! (P-256, P-384) and Ed25519 keys generated per run. Every refusal with its exact status
//! and `WWW-Authenticate`; the token in the header and in `access_token` (gone from what
//! the backend receives, on the upgrade and on plain HTTP); scopes and claims; claim
//! headers; a key set that cannot be loaded fails closed; the token never reaches the log.
//! A test binary of its own: it captures the log with one global subscriber.

mod support;

use std::path::Path;
use std::sync::OnceLock;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use support::jwt::{self, claims, now, TestKey};
use support::logs::CapturedLogs;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// The process's log output at `debug` for wsgate, captured from the first call on.
fn logs() -> &'static CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,wsgate=trace"))
            .with_writer(logs.clone())
            .with_ansi(false)
            .json()
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

/// A routes file in `dir` with one authenticated route `/{everything}` to `backend`, the
/// JWKS in `keys/jwks.json`; `auth_extra` and `spec_extra` are YAML lines added under
/// `authenticationOptions` and `spec`.
fn write_routes(dir: &Path, backend: std::net::SocketAddr, auth_extra: &str, spec_extra: &str) {
    let routes = format!(
        "apiVersion: wsgate.io/v1alpha1
kind: WsRoute
metadata: {{name: chat}}
spec:
  upstreamPathTemplate: /{{everything}}
  downstreamPathTemplate: /{{everything}}
  downstreamHostAndPorts: [{{host: 127.0.0.1, port: {port}}}]
  authenticationOptions:
    jwt:
      issuer: {iss}
      audiences: [{aud}]
      jwksFile: keys/jwks.json
      leeway: 30s
{auth_extra}{spec_extra}",
        port = backend.port(),
        iss = jwt::ISSUER,
        aud = jwt::AUDIENCE,
    );
    std::fs::write(dir.join("routes.yaml"), routes).unwrap();
}

fn write_jwks(dir: &Path, keys: &[&TestKey]) {
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::write(dir.join("keys/jwks.json"), jwt::jwks(keys)).unwrap();
}

/// The gateway serving the routes file of `dir`, loaded by the file source.
async fn gateway_for(dir: &Path) -> Gateway {
    let loaded = wsgate::source::file::load(&[dir.join("routes.yaml")]).unwrap();
    assert!(!loaded.has_errors(), "{:?}", loaded.problems);
    Gateway::start(&loaded.routes).await
}

struct Setup {
    _dir: tempfile::TempDir,
    echo: Echo,
    gw: Gateway,
}

async fn setup(keys: &[&TestKey], auth_extra: &str, spec_extra: &str) -> Setup {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("backend").await;
    write_routes(dir.path(), echo.addr, auth_extra, spec_extra);
    write_jwks(dir.path(), keys);
    let gw = gateway_for(dir.path()).await;
    Setup {
        _dir: dir,
        echo,
        gw,
    }
}

/// A raw upgrade of `path_and_query` with `headers` (already `\r\n`-terminated lines);
/// returns the status and the response head.
async fn upgrade(gw: &Gateway, path_and_query: &str, headers: &str) -> (u16, String) {
    upgrade_at(gw.server.listen_addr, path_and_query, headers).await
}

async fn upgrade_at(
    addr: std::net::SocketAddr,
    path_and_query: &str,
    headers: &str,
) -> (u16, String) {
    let request =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: chat.test\r\n{RAW_UPGRADE}{headers}\r\n");
    let response = raw_request(addr, request.as_bytes()).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    (status, response)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// The value of header `name` in a raw response head (case-insensitive name).
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// What the backend saw of the handshake (`hello=1`), over a WebSocket opened with
/// `headers`.
async fn backend_hello(gw: &Gateway, path_and_query: &str, headers: &[(&str, &str)]) -> Value {
    let mut ws = connect_with(&gw.ws(path_and_query), headers).await;
    let hello = within("hello", ws.next()).await.unwrap().unwrap();
    let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    let echoed = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echoed, Message::text("ping"));
    hello
}

fn refusals(gw: &Gateway, reason: &str) -> u64 {
    let text = gw.metrics.encode();
    text.lines()
        .find(|l| {
            l.starts_with("wsgate_refusals_total{")
                && l.contains(&format!("reason=\"{reason}\""))
                && !l.contains("route=\"\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Tokens of every supported key type and algorithm open the WebSocket; the backend gets
/// the request with its `Authorization` header.
#[tokio::test]
async fn valid_tokens_of_every_key_type_are_accepted() {
    let rsa = jwt::shared_rsa();
    let es256 = TestKey::ec("ec-256", Algorithm::ES256);
    let es384 = TestKey::ec("ec-384", Algorithm::ES384);
    let ed = TestKey::ed25519("ed-1");
    let s = setup(&[rsa, &es256, &es384, &ed], "", "").await;
    let signers = [
        rsa.with_alg(Algorithm::RS256),
        rsa.with_alg(Algorithm::RS384),
        rsa.with_alg(Algorithm::RS512),
        rsa.with_alg(Algorithm::PS256),
    ];
    let mut all: Vec<&TestKey> = signers.iter().collect();
    all.extend([&es256, &es384, &ed]);
    for key in all {
        let token = key.sign(&claims(json!({})));
        let (status, head) = upgrade(&s.gw, "/room/1", &bearer(&token)).await;
        assert_eq!(status, 101, "{:?}: {head}", key.alg);
    }
    // Without `kid`, the only key that allows the algorithm is used.
    let token = es384.sign_without_kid(&claims(json!({})));
    assert_eq!(upgrade(&s.gw, "/room/1", &bearer(&token)).await.0, 101);
    let hello = backend_hello(
        &s.gw,
        "/room/1?hello=1",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(hello["headers"]["authorization"], format!("Bearer {token}"));
    s.echo.stop().await;
}

/// Each kind of bad token is refused with 401 and `Bearer error="invalid_token"`, counted
/// as an `auth` refusal; no token at all gets `Bearer` without `error`.
#[tokio::test]
async fn invalid_tokens_are_refused_with_401_invalid_token() {
    let rsa = jwt::shared_rsa();
    let other = TestKey::ec("ec-1", Algorithm::ES256);
    let s = setup(&[rsa], "", "").await;
    let impostor = TestKey::ec(&rsa.kid, Algorithm::ES256);
    let mut cases: Vec<(&str, String)> = vec![
        (
            "expired",
            rsa.sign(&claims(json!({"exp": now() - 120, "iat": now() - 3600}))),
        ),
        (
            "not yet valid",
            rsa.sign(&claims(json!({"nbf": now() + 120}))),
        ),
        (
            "wrong issuer",
            rsa.sign(&claims(json!({"iss": "https://evil.example.com"}))),
        ),
        ("wrong audience", rsa.sign(&claims(json!({"aud": "other"})))),
        ("no exp", {
            let mut c = claims(json!({}));
            c.as_object_mut().unwrap().remove("exp");
            rsa.sign(&c)
        }),
        (
            "exp as a string",
            rsa.sign(&claims(json!({"exp": "never"}))),
        ),
        (
            "nbf as a string",
            rsa.sign(&claims(json!({"nbf": "later"}))),
        ),
        ("key not in the set", other.sign(&claims(json!({})))),
        (
            "key not in the set, known kid",
            impostor.sign(&claims(json!({}))),
        ),
        ("alg none", jwt::unsigned_token(&claims(json!({})))),
        ("not a JWT", "abc.def".into()),
        ("garbage", "%%%".into()),
    ];
    for (i, forged) in jwt::hs256_with_public_key_as_secret(rsa, &claims(json!({})))
        .into_iter()
        .enumerate()
    {
        cases.push((
            if i == 0 {
                "HS256 with n"
            } else {
                "HS256 with JWK"
            },
            forged,
        ));
    }
    // A valid signature with one byte of the payload changed.
    let valid = rsa.sign(&claims(json!({})));
    let mut parts: Vec<String> = valid.split('.').map(String::from).collect();
    let payload = jwt::claims(json!({"sub": "admin"}));
    parts[1] = base64_url(&payload.to_string());
    cases.push(("tampered payload", parts.join(".")));

    let before = refusals(&s.gw, "auth");
    for (name, token) in &cases {
        let (status, head) = upgrade(&s.gw, "/room/1", &bearer(token)).await;
        assert_eq!(status, 401, "{name}: {head}");
        assert_eq!(
            header_value(&head, "www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{name}: {head}"
        );
    }
    let (status, head) = upgrade(&s.gw, "/room/1", "").await;
    assert_eq!(status, 401, "{head}");
    assert_eq!(
        header_value(&head, "www-authenticate"),
        Some("Bearer"),
        "{head}"
    );
    let (status, head) = upgrade(&s.gw, "/room/1", "Authorization: Basic dXNlcjpwdw==\r\n").await;
    assert_eq!(status, 401, "{head}");
    assert_eq!(
        header_value(&head, "www-authenticate"),
        Some("Bearer"),
        "{head}"
    );
    assert_eq!(
        refusals(&s.gw, "auth") - before,
        cases.len() as u64 + 2,
        "every refusal counted once"
    );
    // Within the leeway (30 s), a just-expired token still passes.
    let late = rsa.sign(&claims(json!({"exp": now() - 5})));
    assert_eq!(upgrade(&s.gw, "/room/1", &bearer(&late)).await.0, 101);
    s.echo.stop().await;
}

fn base64_url(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

/// The token in `access_token` works as in the header, and the backend never sees the
/// parameter: not on the WebSocket upgrade, not on plain HTTP (negotiate, SSE, polling).
/// The other parameters stay.
#[tokio::test]
async fn access_token_parameter_authenticates_and_is_removed_before_the_backend() {
    let rsa = jwt::shared_rsa();
    let s = setup(&[rsa], "", "").await;
    let token = rsa.sign(&claims(json!({})));

    let hello = backend_hello(
        &s.gw,
        &format!("/hub?id=7&access_token={token}&hello=1"),
        &[],
    )
    .await;
    assert_eq!(hello["query"], "id=7&hello=1", "{hello}");
    assert!(!hello.to_string().contains(&token), "{hello}");

    let (status, body) = http_get(&s.gw.http(&format!(
        "/hub/negotiate?access_token={token}&negotiateVersion=1"
    )))
    .await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["query"], "negotiateVersion=1", "{seen}");
    assert!(!body.contains(&token), "{body}");

    let (status, body) = http_get(&s.gw.http(&format!("/hub?access_token={token}"))).await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["query"], Value::Null, "{seen}");

    // Plain HTTP without a token is refused like the upgrade.
    let (status, body) = http_get(&s.gw.http("/hub/negotiate")).await;
    assert_eq!(status, 401, "{body}");
    // Two tokens in the query are ambiguous.
    let (status, _) = upgrade(
        &s.gw,
        &format!("/hub?access_token={token}&access_token={token}"),
        "",
    )
    .await;
    assert_eq!(status, 401);

    // The refusals were logged (so the log is being read), the token never.
    assert!(!logs().lines_with("request refused").is_empty());
    assert!(!logs().contains(&token), "the token appears in the log");
    s.echo.stop().await;
}

/// `allowedScopes` needs every scope (from `scope` or `scp`), `routeClaimsRequirement` each
/// claim's value (or an array containing it): otherwise 403, counted as `scope` / `claims`.
#[tokio::test]
async fn scopes_and_claims_not_met_are_refused_with_403() {
    let rsa = jwt::shared_rsa();
    let s = setup(
        &[rsa],
        "    allowedScopes: [chat, read]\n",
        "  routeClaimsRequirement: {role: admin}\n",
    )
    .await;
    let ok = [
        json!({"scope": "read chat write", "role": "admin"}),
        json!({"scp": ["chat", "read"], "role": ["user", "admin"]}),
        json!({"scp": "chat read", "role": "admin"}),
    ];
    for extra in ok {
        let token = rsa.sign(&claims(extra.clone()));
        let (status, head) = upgrade(&s.gw, "/room", &bearer(&token)).await;
        assert_eq!(status, 101, "{extra}: {head}");
    }
    let (scope_before, claims_before) = (refusals(&s.gw, "scope"), refusals(&s.gw, "claims"));
    for extra in [
        json!({"scope": "chat", "role": "admin"}),
        json!({"scp": ["chat"], "role": "admin"}),
        json!({"role": "admin"}),
    ] {
        let token = rsa.sign(&claims(extra.clone()));
        let (status, head) = upgrade(&s.gw, "/room", &bearer(&token)).await;
        assert_eq!(status, 403, "{extra}: {head}");
        assert_eq!(
            header_value(&head, "www-authenticate"),
            Some("Bearer error=\"insufficient_scope\"")
        );
    }
    for extra in [
        json!({"scope": "chat read", "role": "user"}),
        json!({"scope": "chat read", "role": ["user"]}),
        json!({"scope": "chat read"}),
    ] {
        let token = rsa.sign(&claims(extra.clone()));
        let (status, head) = upgrade(&s.gw, "/room", &bearer(&token)).await;
        assert_eq!(status, 403, "{extra}: {head}");
        assert_eq!(header_value(&head, "www-authenticate"), None, "{head}");
    }
    assert_eq!(refusals(&s.gw, "scope") - scope_before, 3);
    assert_eq!(refusals(&s.gw, "claims") - claims_before, 3);
    s.echo.stop().await;
}

/// `addHeadersToRequest` sets headers from claims (whole, or one part of a split value) and
/// replaces whatever the client sent under those names.
#[tokio::test]
async fn claim_headers_reach_the_backend_and_replace_client_headers() {
    let rsa = jwt::shared_rsa();
    let s = setup(
        &[rsa],
        "",
        "  addHeadersToRequest:\n    X-User-Id: \"Claims[sub] > value\"\n    X-Tenant: \"Claims[org] > value[1] > |\"\n",
    )
    .await;
    let token = rsa.sign(&claims(json!({"org": "eu|acme"})));
    let auth = format!("Bearer {token}");
    let hello = backend_hello(
        &s.gw,
        "/room?hello=1",
        &[
            ("authorization", &auth),
            ("x-user-id", "admin"),
            ("x-tenant", "evil"),
        ],
    )
    .await;
    assert_eq!(hello["headers"]["x-user-id"], "user-42", "{hello}");
    assert_eq!(hello["headers"]["x-tenant"], "acme", "{hello}");
    // A claim that is absent sets nothing, and the client's header is still dropped.
    let token = rsa.sign(&claims(json!({})));
    let auth = format!("Bearer {token}");
    let hello = backend_hello(
        &s.gw,
        "/room?hello=1",
        &[("authorization", &auth), ("x-tenant", "evil")],
    )
    .await;
    assert_eq!(hello["headers"].get("x-tenant"), None, "{hello}");
    s.echo.stop().await;
}

/// A route whose JWKS file is missing stays in the table and refuses every request with
/// 401 (fail closed); the load reports it as `InvalidAuthRef`.
#[tokio::test]
async fn route_without_its_key_set_fails_closed() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("backend").await;
    write_routes(dir.path(), echo.addr, "", "");
    let loaded = wsgate::source::file::load(&[dir.path().join("routes.yaml")]).unwrap();
    let problem = loaded
        .problems
        .iter()
        .find(|p| p.field == "spec.authenticationOptions.jwt.jwksFile")
        .unwrap_or_else(|| panic!("{:?}", loaded.problems));
    assert_eq!(
        problem.reason,
        Some(wsgate::model::ProblemReason::InvalidAuthRef)
    );
    assert_eq!(loaded.routes.len(), 1);
    let gw = Gateway::start(&loaded.routes).await;
    let token = jwt::shared_rsa().sign(&claims(json!({})));
    let (status, head) = upgrade(&gw, "/room", &bearer(&token)).await;
    assert_eq!(status, 401, "{head}");
    assert_eq!(
        header_value(&head, "www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let (status, _) = http_get(&gw.http(&format!("/x?access_token={token}"))).await;
    assert_eq!(status, 401);
    echo.stop().await;
}

/// The real binary with a JWKS file: replacing the key set (as a rotation does) applies to
/// new handshakes without a restart (the old key is refused, the new one accepted), a
/// WebSocket opened with the old key stays up, and no token reaches the binary's log.
#[tokio::test]
async fn rotated_key_set_applies_to_new_handshakes_and_spares_live_connections() {
    let dir = tempfile::tempdir().unwrap();
    let echo = Echo::start("backend").await;
    let old = jwt::shared_rsa();
    let new = TestKey::ed25519("ed-2");
    write_routes(dir.path(), echo.addr, "", "");
    write_jwks(dir.path(), &[old]);
    let process = Process::start(
        &[
            "run",
            "--routes",
            "routes.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--reload-interval",
            "50ms",
        ],
        dir.path(),
    )
    .await;
    let addr = process.listening.listen;
    let old_token = old.sign(&claims(json!({})));
    let new_token = new.sign(&claims(json!({})));
    assert_eq!(upgrade_at(addr, "/room", &bearer(&old_token)).await.0, 101);
    let mut live = connect_with(&format!("ws://{addr}/room?access_token={old_token}"), &[]).await;
    live.send(Message::text("before")).await.unwrap();
    assert_eq!(
        within("echo", live.next()).await.unwrap().unwrap(),
        Message::text("before")
    );

    // Rotate: write the new set beside the old and rename it over (as an editor does).
    let tmp = dir.path().join("keys/jwks.json.tmp");
    std::fs::write(&tmp, jwt::jwks(&[&new])).unwrap();
    std::fs::rename(&tmp, dir.path().join("keys/jwks.json")).unwrap();
    eventually_async("the new key accepted", DEADLINE, || async {
        (upgrade_at(addr, "/room", &bearer(&new_token)).await.0 == 101).then_some(())
    })
    .await;
    let (status, head) = upgrade_at(addr, &format!("/room?access_token={old_token}"), "").await;
    assert_eq!(status, 401, "{head}");

    live.send(Message::text("after")).await.unwrap();
    assert_eq!(
        within("echo", live.next()).await.unwrap().unwrap(),
        Message::text("after")
    );

    let log = process.log();
    assert!(
        !log.contains(&old_token) && !log.contains(&new_token),
        "a token in the log:\n{log}"
    );
    assert!(
        log.contains("request refused"),
        "the refusal is logged:\n{log}"
    );
    echo.stop().await;
}

/// `closeOnTokenExpiry`: a token that expires two seconds into the connection (its `exp`
/// 28 s ago, within the route's 30 s leeway) closes the live WebSocket with Close 1008 to the
/// client, on the tokio relay and on a relay thread (which the echoed message moves it to);
/// until then it relays.
#[tokio::test]
async fn close_on_token_expiry_closes_the_live_connection_with_1008() {
    let rsa = jwt::shared_rsa();
    for on_relay_thread in [false, true] {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let echo = Echo::start("backend").await;
        write_routes(dir.path(), echo.addr, "    closeOnTokenExpiry: true\n", "");
        write_jwks(dir.path(), &[rsa]);
        let loaded = wsgate::source::file::load(&[dir.path().join("routes.yaml")]).unwrap();
        assert!(!loaded.has_errors(), "{:?}", loaded.problems);
        let offload = if on_relay_thread {
            OffloadOptions {
                threads: 1,
                after_messages: 1,
            }
        } else {
            OffloadOptions {
                threads: 0,
                after_messages: u64::MAX,
            }
        };
        let gw =
            Gateway::start_with_offload(&loaded.routes, std::time::Duration::from_secs(5), offload)
                .await;
        let token = rsa.sign(&claims(json!({"exp": now() - 28})));
        let opened = std::time::Instant::now();
        let mut ws = connect_with(
            &gw.ws("/room"),
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
        ws.send(Message::text("still valid")).await.unwrap();
        assert_eq!(
            within("echo", ws.next()).await.unwrap().unwrap(),
            Message::text("still valid")
        );
        if on_relay_thread {
            eventually("the relay moved to a relay thread", || {
                gw.metrics
                    .encode()
                    .contains("wsgate_relays_moved_total 1")
                    .then_some(())
            })
            .await;
        }
        let close = loop {
            match within("the close at expiry", ws.next()).await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("no Close frame at the token's expiry: {other:?}"),
            }
        };
        let frame = close.expect("a Close with a code");
        assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
        assert_eq!(frame.reason.as_str(), "token expired");
        let after = opened.elapsed();
        assert!(
            after >= std::time::Duration::from_millis(500),
            "closed after {after:?}, before the token expired"
        );
    }
}
