use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, StatusCode};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::request::{headers_json, query_flag, query_number, query_param, Target};
use super::websocket::{first_offered_protocol, Plan};

/// Special paths are recognised by their last segments, whatever prefix a gateway left.
#[test]
fn target_of_path_matches_last_segments_under_any_prefix() {
    assert_eq!(Target::of_path("/sse"), Target::Sse);
    assert_eq!(Target::of_path("/api/v1/sse"), Target::Sse);
    assert_eq!(Target::of_path("/api/sse/"), Target::Sse);
    assert_eq!(Target::of_path("/chat/poll"), Target::Poll);
    assert_eq!(
        Target::of_path("/gw/status/418"),
        Target::Status(StatusCode::IM_A_TEAPOT)
    );
    assert_eq!(Target::of_path("/"), Target::Echo);
    assert_eq!(Target::of_path("/sse/more"), Target::Echo);
}

/// `status/CODE` only names final statuses (200–599); anything else is a plain echo path.
#[test]
fn target_of_path_with_non_final_or_malformed_status_is_echo() {
    for path in [
        "/status/101",
        "/status/600",
        "/status/abc",
        "/status/",
        "/status",
    ] {
        assert_eq!(Target::of_path(path), Target::Echo, "{path}");
    }
    assert_eq!(
        Target::of_path("/status/599"),
        Target::Status(StatusCode::from_u16(599).unwrap())
    );
}

/// Query switches are found anywhere in the query, by exact key.
#[test]
fn query_param_finds_key_anywhere_and_only_exact_keys() {
    let query = Some("a=1&hello=1&xhello=2&flag&close=4000");
    assert_eq!(query_param(query, "hello"), Some("1"));
    assert_eq!(query_param(query, "close"), Some("4000"));
    assert_eq!(query_param(query, "flag"), Some(""));
    assert_eq!(query_param(query, "missing"), None);
    assert_eq!(query_param(None, "hello"), None);
    assert!(query_flag(query, "hello"));
    assert!(!query_flag(query, "xhello"));
}

/// Numbers default when absent and fail with a message naming the parameter when malformed.
#[test]
fn query_number_defaults_when_absent_and_names_bad_parameter() {
    assert_eq!(query_number(Some("events=7"), "events", 3_u64), Ok(7));
    assert_eq!(query_number(Some("other=7"), "events", 3_u64), Ok(3));
    let error = query_number(Some("events=-1"), "events", 3_u64).unwrap_err();
    assert!(
        error.contains("`events`") && error.contains("`-1`"),
        "{error}"
    );
}

/// A repeated header becomes an array, a single one a string; names are lower-case.
#[test]
fn headers_json_groups_repeated_values_into_arrays() {
    let mut headers = HeaderMap::new();
    headers.insert("X-One", HeaderValue::from_static("a"));
    headers.append("x-many", HeaderValue::from_static("b"));
    headers.append("x-many", HeaderValue::from_static("c"));
    assert_eq!(
        headers_json(&headers),
        json!({ "x-one": "a", "x-many": ["b", "c"] })
    );
}

/// The first offered subprotocol wins, across comma lists and repeated header lines.
#[test]
fn first_offered_protocol_picks_first_across_lines() {
    let mut headers = HeaderMap::new();
    assert_eq!(first_offered_protocol(&headers), None);
    headers.append(
        "sec-websocket-protocol",
        HeaderValue::from_static(" , chat.v2, chat.v1"),
    );
    headers.append("sec-websocket-protocol", HeaderValue::from_static("other"));
    assert_eq!(
        first_offered_protocol(&headers),
        Some(HeaderValue::from_static("chat.v2"))
    );
}

/// `close=CODE` accepts only codes allowed on the wire and names the parameter otherwise.
#[test]
fn plan_rejects_close_codes_not_allowed_on_the_wire() {
    let plan_for = |uri: &str| Plan::from_request(&Request::get(uri).body(()).unwrap(), "e");
    let plan = plan_for("/ws?close=4000").unwrap();
    assert_eq!(plan.close, Some(CloseCode::from(4000)));
    for bad in ["1005", "1006", "999", "5000", "x"] {
        let error = plan_for(&format!("/ws?close={bad}")).unwrap_err();
        assert!(error.contains("`close`"), "{error}");
    }
}

/// `hello=1` describes the handshake request: name, path, query and headers.
#[test]
fn plan_hello_describes_the_handshake_request() {
    let request = Request::get("/chat/ws?hello=1&room=a")
        .header("x-custom", "yes")
        .body(())
        .unwrap();
    let plan = Plan::from_request(&request, "echo-1").unwrap();
    let hello: serde_json::Value = serde_json::from_str(plan.hello.as_deref().unwrap()).unwrap();
    assert_eq!(
        hello,
        json!({
            "echo": "echo-1",
            "path": "/chat/ws",
            "query": "hello=1&room=a",
            "headers": { "x-custom": "yes" },
        })
    );
    assert!(!plan.drop_after_first);
    assert_eq!(plan.close, None);
}
