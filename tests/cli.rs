//! The README's commands, run as a user would: `wsgate check` on good and broken files,
//! and `wsgate demo` answering WebSocket and HTTP until Ctrl-C (SIGINT).

mod support;

use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

fn wsgate(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run wsgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Good files (WsRoute YAML, ocelot.json, the README example) pass with exit 0.
#[test]
fn check_accepts_good_files() {
    for file in [
        "tests/fixtures/routes/good.yaml",
        "tests/fixtures/routes/ocelot.json",
        "examples/standalone-routes.yaml",
    ] {
        let (code, out) = wsgate(&["check", file]);
        assert_eq!(code, 0, "{file}: {out}");
        assert!(out.contains("ok: "), "{out}");
    }
}

/// A broken file exits 1 and names file, line, document and field of each problem: one
/// per broken document (a port out of range, a YAML syntax error, a misspelt field), none
/// for the good document before them.
#[test]
fn check_reports_every_problem_with_its_location() {
    let (code, out) = wsgate(&["check", "tests/fixtures/routes/broken.yaml"]);
    assert_eq!(code, 1, "{out}");
    let file = "tests/fixtures/routes/broken.yaml";
    // (where: file, line, document, route name, field path; what the message must say)
    let expected = [
        (
            format!("{file}:19: document 2 (bad-port): spec.downstreamHostAndPorts[0].port: "),
            "70000 is not a port",
        ),
        // A syntax error: no name or field can be read from the document.
        (
            format!("{file}:27: document 3: "),
            "while parsing a flow sequence",
        ),
        (
            format!("{file}:36: document 4 (typo): spec.downstreamHostAndPort: "),
            "unknown field `downstreamHostAndPort`",
        ),
    ];
    let errors: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .collect();
    assert_eq!(errors.len(), expected.len(), "{out}");
    for (line, (location, what)) in errors.iter().zip(&expected) {
        let message = line
            .strip_prefix(location.as_str())
            .unwrap_or_else(|| panic!("expected a problem at `{location}`, got `{line}`"));
        assert!(message.contains(what), "`{line}` should say `{what}`");
    }
    assert!(out.contains("\n3 error(s), 0 warning(s)\n"), "{out}");
}

/// A malformed `upstreamHost` is reported with its line, the field `spec.upstreamHost`,
/// the reason a cluster's status would give (`InvalidHost`) and what is wrong.
#[test]
fn check_reports_an_invalid_host_with_its_reason_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hosts.yaml");
    let doc = |name: &str, host: &str| {
        format!(
            "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata:\n  name: {name}\nspec:\n  upstreamHost: \"{host}\"\n  upstreamPathTemplate: /{name}\n  downstreamPathTemplate: /\n  downstreamHostAndPorts:\n    - {{host: 127.0.0.1, port: 9001}}\n"
        )
    };
    let text = [
        doc("a", "*..com"),
        doc("b", "a..b"),
        doc("c", "chat.example.com"),
    ]
    .join("---\n");
    std::fs::write(&path, text).expect("write routes file");
    let (code, out) = wsgate(&["check", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 2, "{out}");
    assert!(
        errors[0].ends_with(
            "hosts.yaml:6: document 1 (a): spec.upstreamHost: InvalidHost: `*..com` has an empty label (`..`, or a dot at the start)"
        ),
        "{out}"
    );
    assert!(
        errors[1].ends_with(
            "hosts.yaml:17: document 2 (b): spec.upstreamHost: InvalidHost: `a..b` has an empty label (`..`, or a dot at the start)"
        ),
        "{out}"
    );
}

/// Authentication mistakes are named by field: a bad claims-to-header rule is an error, a
/// JWKS file that cannot be read a warning with `InvalidAuthRef` (the route is kept,
/// refusing every request); in ocelot.json a provider not given with `--jwt-provider` is
/// an error naming `AuthenticationProviderKey`, and given, it loads.
#[test]
fn check_names_authentication_fields() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("auth.yaml");
    std::fs::write(
        &path,
        "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {name: a}\nspec:\n  upstreamPathTemplate: /a\n  downstreamPathTemplate: /\n  downstreamHostAndPorts: [{host: 127.0.0.1, port: 9001}]\n  authenticationOptions:\n    jwt: {jwksFile: missing.json}\n  addHeadersToRequest: {X-User: \"Claims[sub]\"}\n",
    )
    .unwrap();
    let (code, out) = wsgate(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("spec.addHeadersToRequest.X-User: InvalidParameters: `Claims[sub]` is not"),
        "{out}"
    );
    std::fs::write(
        &path,
        "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {name: a}\nspec:\n  upstreamPathTemplate: /a\n  downstreamPathTemplate: /\n  downstreamHostAndPorts: [{host: 127.0.0.1, port: 9001}]\n  authenticationOptions:\n    jwt: {jwksFile: missing.json}\n",
    )
    .unwrap();
    let (code, out) = wsgate(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("spec.authenticationOptions.jwt.jwksFile: InvalidAuthRef: cannot read"),
        "{out}"
    );

    let ocelot = dir.path().join("ocelot.json");
    std::fs::write(
        &ocelot,
        r#"{"Routes": [{"UpstreamPathTemplate": "/a", "DownstreamPathTemplate": "/", "DownstreamScheme": "ws",
            "DownstreamHostAndPorts": [{"Host": "127.0.0.1", "Port": 9001}],
            "AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"}}]}"#,
    )
    .unwrap();
    let (code, out) = wsgate(&["check", ocelot.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("Routes[0].AuthenticationOptions.AuthenticationProviderKey: `Bearer` is not a JWT provider"),
        "{out}"
    );
    std::fs::write(
        dir.path().join("jwks.json"),
        r#"{"keys": [{"kty": "oct", "k": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}]}"#,
    )
    .unwrap();
    let provider = dir.path().join("provider.yaml");
    std::fs::write(
        &provider,
        "issuer: https://id.example.com\njwksFile: jwks.json\n",
    )
    .unwrap();
    let flag = format!("Bearer={}", provider.display());
    let (code, out) = wsgate(&["check", ocelot.to_str().unwrap(), "--jwt-provider", &flag]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok: 1 route(s) valid"), "{out}");
}

/// A bad entry of `allowedOrigins` or `securityOptions` is reported with its line and the
/// field with its index.
#[test]
fn check_names_bad_access_entries_by_field_and_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("access.yaml");
    let text = "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata:\n  name: a\nspec:\n  upstreamPathTemplate: /a\n  downstreamPathTemplate: /\n  downstreamHostAndPorts:\n    - {host: 127.0.0.1, port: 9001}\n  allowedOrigins:\n    - https://app.example.com\n    - app.example.com\n  securityOptions:\n    ipBlockedList: [10.0.0.0/8, 10.0.0.0/99]\n";
    std::fs::write(&path, text).expect("write routes file");
    let (code, out) = wsgate(&["check", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 2, "{out}");
    assert!(
        errors[0].contains("access.yaml:12: document 1 (a): spec.allowedOrigins[1]: InvalidParameters: `app.example.com` must start with `http://` or `https://`"),
        "{out}"
    );
    assert!(
        errors[1].contains("access.yaml:14: document 1 (a): spec.securityOptions.ipBlockedList[1]: InvalidParameters: `10.0.0.0/99`: prefix length 99"),
        "{out}"
    );
}

/// A missing file is an error naming the file, not a panic.
#[test]
fn check_names_a_missing_file() {
    let (code, out) = wsgate(&["check", "no/such/routes.yaml"]);
    assert_eq!(code, 1);
    assert!(out.contains("no/such/routes.yaml"), "{out}");
}

/// `--workers 0` is refused before anything starts, naming the flag.
#[test]
fn zero_workers_is_refused_naming_the_flag() {
    let (code, out) = wsgate(&["run", "--workers", "0", "--routes", "no/such/routes.yaml"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--workers"), "{out}");
}

/// A `--listening-file` that cannot be written stops the start-up, naming the flag: whoever
/// asked for it would otherwise wait for a file that never comes.
#[test]
fn unwritable_listening_file_stops_start_up_naming_the_flag() {
    let (code, out) = wsgate(&[
        "run",
        "--routes",
        "tests/fixtures/routes/good.yaml",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--listening-file",
        "no/such/dir/listening.json",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot write no/such/dir/listening.json (--listening-file)"),
        "{out}"
    );
}

/// `wsgate demo` serves its built-in routes to the echo backend and stops cleanly on Ctrl-C.
#[tokio::test]
async fn demo_serves_websocket_and_http_then_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Process::start(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
    )
    .await;
    let listen = demo.listening.listen;
    // Listening means serving: the demo's table is loaded before its listeners start.
    let mut ws = connect(&format!("ws://{listen}/chat/lobby")).await;
    within("send", ws.send(Message::text("hello")))
        .await
        .unwrap();
    assert_eq!(
        within("echo", ws.next()).await.unwrap().unwrap(),
        Message::text("hello")
    );
    let (status, body) = http_get(&format!("http://{listen}/chat/lobby")).await;
    assert_eq!(status, 200);
    assert!(body.contains("/rooms/lobby"), "{body}");

    Command::new("kill")
        .args(["-INT", &demo.pid().to_string()])
        .status()
        .unwrap();
    // The open socket gets the drain's Close 1001.
    loop {
        match within("close", ws.next()).await {
            Some(Ok(Message::Close(Some(c)))) => {
                assert_eq!(u16::from(c.code), 1001);
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("expected Close 1001, got {other:?}"),
        }
    }
    while let Some(Ok(_)) = within("end", ws.next()).await {}
    let status = demo.exit_status().await;
    assert!(status.success(), "{status:?}");
    assert!(
        !demo.listening_file.exists(),
        "the listening file outlived the listeners"
    );
}

/// `wsgate check` names a wrong `keepalive` field, and accepts a good one from a routes file.
#[test]
fn check_names_keepalive_fields() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keepalive.yaml");
    let route = |keepalive: &str| {
        format!("apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {{name: a}}\nspec:\n  upstreamPathTemplate: /a\n  downstreamPathTemplate: /\n  downstreamHostAndPorts: [{{host: 127.0.0.1, port: 9001}}]\n  keepalive: {keepalive}\n")
    };
    std::fs::write(&path, route("{pingInterval: 10s, pongTimeout: 20s}")).unwrap();
    let (code, out) = wsgate(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "spec.keepalive.pongTimeout: InvalidParameters: must not be longer than pingInterval"
        ),
        "{out}"
    );
    std::fs::write(&path, route("{pingInterval: 30s, pongTimeout: 10s}")).unwrap();
    let (code, out) = wsgate(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}
