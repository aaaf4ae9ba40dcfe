//! `spec.keepalive` → [`Keepalive`]: both durations checked, each problem named by its field.

use std::time::Duration;

use super::{parse_duration, FieldError};
use crate::api::KeepaliveSpec;

/// A route's keep-alive, validated: wsgate pings a side quiet for `ping_interval` and
/// treats it as gone when it sends nothing within `pong_timeout` of the Ping (carried out
/// by `proxy::relay::machine`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub ping_interval: Duration,
    /// Never longer than `ping_interval`: a peer that does not answer within the quiet time
    /// that asked for a Ping is not answering (and a dead peer is found within twice the
    /// interval at most).
    pub pong_timeout: Duration,
}

pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// Validates `spec.keepalive`. Both durations must be above zero, and `pongTimeout` no
/// longer than `pingInterval`; an absent one takes its default (`pongTimeout`: 10 s, or
/// `pingInterval` when shorter).
pub(super) fn keepalive(
    spec: Option<&KeepaliveSpec>,
    errors: &mut Vec<FieldError>,
) -> Option<Keepalive> {
    let spec = spec?;
    let before = errors.len();
    let mut parse = |field: &str, value: Option<&str>| -> Option<Duration> {
        let field = format!("spec.keepalive.{field}");
        match parse_duration(value?) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                errors.push(FieldError::new(field, "must be greater than zero"));
                None
            }
            Err(e) => {
                errors.push(FieldError::new(field, e.to_string()));
                None
            }
        }
    };
    let interval = parse("pingInterval", spec.ping_interval.as_deref());
    let timeout = parse("pongTimeout", spec.pong_timeout.as_deref());
    if errors.len() > before {
        return None;
    }
    let ping_interval = interval.unwrap_or(DEFAULT_PING_INTERVAL);
    let pong_timeout = timeout.unwrap_or(DEFAULT_PONG_TIMEOUT.min(ping_interval));
    if pong_timeout > ping_interval {
        errors.push(FieldError::new(
            "spec.keepalive.pongTimeout",
            format!(
                "must not be longer than pingInterval ({pong_timeout:?} > {ping_interval:?}): a side that stays silent for a whole interval after a Ping is not answering"
            ),
        ));
        return None;
    }
    Some(Keepalive {
        ping_interval,
        pong_timeout,
    })
}
