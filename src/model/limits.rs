//! `spec.limits` and `spec.rateLimitOptions` → `Limits` and `RateLimit`: every value
//! checked, every problem named by its field.

use std::net::IpAddr;
use std::time::Duration;

use super::{parse_duration, FieldError, Limits};
use crate::api::{LimitsSpec, RateLimitOptionsSpec};

/// Ocelot's `RateLimitOptions`, validated: at most `limit` handshakes and plain HTTP
/// requests per client address per `period` (a fixed window from the client's first
/// request); a client over it is refused with 429 until `wait` has passed since it went
/// over (or, with `wait` zero, until its window ends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub period: Duration,
    /// Ocelot's `PeriodTimespan`.
    pub wait: Duration,
    pub limit: u64,
    /// Clients never counted (`clientWhitelist`).
    pub whitelist: Vec<AddrRange>,
}

impl RateLimit {
    /// Whether `ip` is on the whitelist.
    pub fn exempt(&self, ip: IpAddr) -> bool {
        self.whitelist.iter().any(|r| r.contains(ip))
    }
}

/// An address or a CIDR block (`10.0.0.1`, `10.1.0.0/16`, `2001:db8::/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrRange {
    network: IpAddr,
    prefix: u8,
}

impl AddrRange {
    /// Parses an address (a block of one) or `address/prefix`. The address of a block is
    /// masked to its prefix, so `10.1.2.3/16` means `10.1.0.0/16`.
    pub fn parse(text: &str) -> Result<AddrRange, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(AddrRange {
            network: mask(ip, prefix),
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack socket reports) as the
/// IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

const LIMITS: &str = "spec.limits";
/// Most `clientWhitelist` entries (the CRD's `maxItems`).
const MAX_WHITELIST: usize = 1024;
const RATE: &str = "spec.rateLimitOptions";

/// `spec.limits` → `Limits`: every value at least 1; `messageBurst` only with
/// `messagesPerSecond`.
pub(super) fn limits(spec: Option<&LimitsSpec>, errors: &mut Vec<FieldError>) -> Limits {
    let Some(s) = spec else {
        return Limits::default();
    };
    let mut positive = |field: &str, value: Option<i64>, max: u64| -> Option<u64> {
        let v = value?;
        match u64::try_from(v) {
            Ok(n) if n >= 1 && n <= max => Some(n),
            _ => {
                errors.push(FieldError::new(
                    format!("{LIMITS}.{field}"),
                    format!("{v} is not a limit: give a whole number from 1 to {max}"),
                ));
                None
            }
        }
    };
    let u32_max = u64::from(u32::MAX);
    let to_u32 = |n: Option<u64>| n.and_then(|n| u32::try_from(n).ok());
    let limits = Limits {
        max_message_bytes: positive("maxMessageBytes", s.max_message_bytes, i64::MAX as u64),
        messages_per_second: to_u32(positive(
            "messagesPerSecond",
            s.messages_per_second,
            u32_max,
        )),
        message_burst: to_u32(positive("messageBurst", s.message_burst, u32_max)),
        max_connections: to_u32(positive("maxConnections", s.max_connections, u32_max)),
        max_connections_per_client: to_u32(positive(
            "maxConnectionsPerClient",
            s.max_connections_per_client,
            u32_max,
        )),
    };
    if s.message_burst.is_some() && s.messages_per_second.is_none() {
        errors.push(FieldError::new(
            format!("{LIMITS}.messageBurst"),
            "needs `messagesPerSecond`: the burst is the size of that rate's bucket",
        ));
    }
    limits
}

/// `spec.rateLimitOptions` → `RateLimit`; `None` when absent or `enableRateLimiting: false`.
pub(super) fn rate_limit(
    spec: Option<&RateLimitOptionsSpec>,
    errors: &mut Vec<FieldError>,
) -> Option<RateLimit> {
    let s = spec?;
    if s.enable_rate_limiting == Some(false) {
        return None;
    }
    let before = errors.len();
    let period = match s.period.as_deref() {
        None => {
            errors.push(FieldError::new(
                format!("{RATE}.period"),
                "required: the window requests are counted in, e.g. `1s`, `5m`, `1h`, `1d`",
            ));
            None
        }
        Some(text) => match parse_period(text) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                errors.push(FieldError::new(
                    format!("{RATE}.period"),
                    format!("`{text}` is not a period: write a whole number followed by ms, s, m, h or d (e.g. `1s`)"),
                ));
                None
            }
        },
    };
    let wait = match s.period_timespan {
        None => Duration::ZERO,
        Some(secs) => match Duration::try_from_secs_f64(secs) {
            // A day is more than any client will wait for; more is a typo.
            Ok(d) if d <= Duration::from_secs(86_400) => d,
            _ => {
                errors.push(FieldError::new(
                    format!("{RATE}.periodTimespan"),
                    format!("{secs} is not a number of seconds from 0 to 86400"),
                ));
                Duration::ZERO
            }
        },
    };
    let limit = match s.limit {
        None => {
            errors.push(FieldError::new(
                format!("{RATE}.limit"),
                "required: the requests a client may make per period",
            ));
            None
        }
        Some(n) if n >= 1 => Some(n.unsigned_abs()),
        Some(n) => {
            errors.push(FieldError::new(
                format!("{RATE}.limit"),
                format!("{n} is not a limit: give a whole number of at least 1"),
            ));
            None
        }
    };
    // Checked per request by a scan; the CRD has the same bound.
    if s.client_whitelist.len() > MAX_WHITELIST {
        errors.push(FieldError::new(
            format!("{RATE}.clientWhitelist"),
            format!(
                "{} entries; at most {MAX_WHITELIST} (use CIDR blocks)",
                s.client_whitelist.len()
            ),
        ));
    }
    let mut whitelist = Vec::with_capacity(s.client_whitelist.len().min(MAX_WHITELIST));
    for (i, entry) in s.client_whitelist.iter().enumerate().take(MAX_WHITELIST) {
        match AddrRange::parse(entry) {
            Ok(r) => whitelist.push(r),
            Err(message) => errors.push(FieldError::new(
                format!("{RATE}.clientWhitelist[{i}]"),
                message,
            )),
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(RateLimit {
        period: period?,
        wait,
        limit: limit?,
        whitelist,
    })
}

/// Ocelot's periods: the route files' durations plus days (`1d`).
fn parse_period(text: &str) -> Option<Duration> {
    let t = text.trim();
    match t.strip_suffix('d') {
        Some(days) if !days.is_empty() && days.bytes().all(|b| b.is_ascii_digit()) => days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(86_400))
            .map(Duration::from_secs),
        _ => parse_duration(t).ok(),
    }
}

#[cfg(test)]
mod tests;
