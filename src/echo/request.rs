//! Reading a request: which special path it names, its query switches, its headers as JSON.

use std::str::FromStr;

use hyper::header::HeaderMap;
use hyper::StatusCode;
use serde_json::{Map, Value};

/// What a request path asks for, judged by its last segments so prefixes may be rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// `.../status/CODE`: answer CODE (200–599), upgrade or not.
    Status(StatusCode),
    /// `.../sse`: a Server-Sent Events stream.
    Sse,
    /// `.../poll`: a held answer, standing in for long polling.
    Poll,
    /// Anything else: echo the request.
    Echo,
}

impl Target {
    pub(super) fn of_path(path: &str) -> Target {
        let mut segments = path.trim_end_matches('/').rsplit('/');
        let last = segments.next().unwrap_or_default();
        match last {
            "sse" => Target::Sse,
            "poll" => Target::Poll,
            _ if segments.next() == Some("status") => status_code(last)
                .map(Target::Status)
                .unwrap_or(Target::Echo),
            _ => Target::Echo,
        }
    }
}

/// A final status a server may send with a body; 1xx are not final answers.
fn status_code(text: &str) -> Option<StatusCode> {
    let code = text.parse::<u16>().ok()?;
    if (200..=599).contains(&code) {
        StatusCode::from_u16(code).ok()
    } else {
        None
    }
}

/// The value of the first `key=value` pair named `key` in a raw query; `key` alone yields `""`.
pub(super) fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then_some(value)
    })
}

/// Whether the query switches `key` on (`key=1`).
pub(super) fn query_flag(query: Option<&str>, key: &str) -> bool {
    query_param(query, key) == Some("1")
}

/// A numeric query parameter: `default` when absent, an error message naming it when malformed.
pub(super) fn query_number<T: FromStr>(
    query: Option<&str>,
    key: &str,
    default: T,
) -> Result<T, String> {
    match query_param(query, key) {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|_| {
            format!("query parameter `{key}` must be a non-negative integer, got `{raw}`")
        }),
    }
}

/// Headers as JSON: lower-case name → value, or an array of values when the name repeats.
/// Values that are not UTF-8 are converted lossily.
pub(super) fn headers_json(headers: &HeaderMap) -> Value {
    let mut object = Map::new();
    for name in headers.keys() {
        let mut values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|value| Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        let value = if values.len() == 1 {
            values.remove(0)
        } else {
            Value::Array(values)
        };
        object.insert(name.as_str().to_owned(), value);
    }
    Value::Object(object)
}
