//! `spec.keepalive`: wsgate's own pings on quiet upgraded connections (issue 21, item 4).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Keep-alive pings: when no bytes came from a side (client or backend) for `pingInterval`,
/// wsgate sends that side a WebSocket Ping of its own; its Pong is never forwarded. A side
/// that sends nothing within `pongTimeout` of that Ping is treated as gone: the other side
/// gets Close 1001 (the client is gone) or 1011 (the backend is gone). Absent = no pings
/// (quiet connections stay open). Durations are strings such as `30s`, `500ms`, `2m`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeepaliveSpec {
    /// How long a side may be quiet before it gets a Ping (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub ping_interval: Option<String>,
    /// How long a pinged side has to send anything (its Pong or any other bytes); at most
    /// `pingInterval` (default `10s`, or `pingInterval` when that is shorter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub pong_timeout: Option<String>,
}
