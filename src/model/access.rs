//! Who may use a route (docs/security.md): the origins a browser may open its WebSockets
//! from (`spec.allowedOrigins`, against Cross-Site WebSocket Hijacking) and the client
//! addresses allowed or blocked (`spec.securityOptions`, Ocelot's IP lists). Parsed and
//! checked here once, when a route is validated; `proxy::access` asks them per request.
//! The CIDR type is also what `--trusted-proxies` is made of.

use std::fmt;
use std::net::IpAddr;

use super::host::{split_port, HostPattern, HostPatternError};

/// One entry of `allowedOrigins`: `https://app.example.com`, `https://*.example.com`,
/// `http://localhost:3000`. Scheme and host compare ASCII-case-insensitively, the port
/// exactly (a missing port is the scheme's default: 80 for `http`, 443 for `https`); `*.`
/// stands for one or more leftmost labels (`https://*.example.com` takes
/// `https://a.b.example.com`, not `https://example.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    https: bool,
    /// Lower-cased, without port: `HostPattern::Exact` or `Wildcard` with `port: None`.
    host: HostPattern,
    port: u16,
}

/// Why text is not an origin pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginPatternError {
    #[error("`{0}` must start with `http://` or `https://` (an origin is scheme://host[:port])")]
    Scheme(String),
    #[error("`{0}` has a path, query or user: an origin is only scheme://host[:port], as browsers send it")]
    NotAnOrigin(String),
    #[error("`{pattern}`: {source}")]
    Host {
        pattern: String,
        #[source]
        source: HostPatternError,
    },
}

impl OriginPattern {
    pub fn parse(pattern: &str) -> Result<OriginPattern, OriginPatternError> {
        let trimmed = pattern.trim();
        let (https, rest) = match split_scheme(trimmed) {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            _ => return Err(OriginPatternError::Scheme(pattern.to_string())),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(OriginPatternError::NotAnOrigin(pattern.to_string()));
        }
        let host = HostPattern::parse(rest).map_err(|source| OriginPatternError::Host {
            pattern: pattern.to_string(),
            source,
        })?;
        let default_port = if https { 443 } else { 80 };
        let (host, port) = match host {
            HostPattern::Exact { name, port } => (HostPattern::Exact { name, port: None }, port),
            HostPattern::Wildcard { suffix, port } => {
                (HostPattern::Wildcard { suffix, port: None }, port)
            }
        };
        Ok(OriginPattern {
            https,
            host,
            port: port.unwrap_or(default_port),
        })
    }

    /// Whether the serialized origin a browser sent (`Origin: https://app.example.com`)
    /// is one this pattern allows. `null`, a list of origins and anything that does not
    /// parse as scheme://host[:port] never match.
    pub fn matches(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let Some((scheme, rest)) = split_scheme(origin.trim()) else {
            return false;
        };
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return false;
        };
        if https != self.https || rest.contains(['/', '?', '#', '@', ' ', ',']) {
            return false;
        }
        let (name, port) = split_port(rest);
        let port = match port {
            None => Some(if https { 443 } else { 80 }),
            Some(p) => p.parse::<u16>().ok(),
        };
        if port != Some(self.port) {
            return false;
        }
        let name = name.strip_suffix('.').unwrap_or(name);
        match &self.host {
            HostPattern::Exact { name: want, .. } => name.eq_ignore_ascii_case(want),
            HostPattern::Wildcard { suffix, .. } => {
                name.len() > suffix.len()
                    && name.is_char_boundary(name.len() - suffix.len())
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

/// `scheme://rest` → (`scheme`, `rest`).
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        "https"
    } else if scheme.eq_ignore_ascii_case("http") {
        "http"
    } else {
        scheme
    };
    Some((scheme, rest))
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match &self.host {
            HostPattern::Exact { name, .. } => write!(f, "{scheme}://{name}:{}", self.port),
            HostPattern::Wildcard { suffix, .. } => {
                write!(f, "{scheme}://*{suffix}:{}", self.port)
            }
        }
    }
}

/// An address or a block of addresses: `10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address (host bits cleared).
    network: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error(
        "`{0}` is not an IP address or CIDR block (`10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`)"
    )]
    Syntax(String),
    #[error("`{text}`: prefix length {prefix} is longer than the address ({max} bits)")]
    Prefix { text: String, prefix: u8, max: u8 },
}

impl IpNet {
    pub fn parse(text: &str) -> Result<IpNet, IpNetError> {
        let trimmed = text.trim();
        let syntax = || IpNetError::Syntax(text.to_string());
        let (addr, prefix) = match trimmed.split_once('/') {
            Some((addr, prefix)) => {
                // Digits only: `u8::from_str` would take `+8`.
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                (addr, Some(prefix.parse::<u8>().map_err(|_| syntax())?))
            }
            None => (trimmed, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(IpNetError::Prefix {
                text: text.to_string(),
                prefix,
                max,
            });
        }
        Ok(IpNet {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` is in this block. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what
    /// a dual-stack socket reports for an IPv4 client) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

/// Ocelot's `SecurityOptions`: a client in `blocked` is refused; when `allowed` is not
/// empty, a client outside it is refused too. With `exclude_allowed_from_blocked`, the
/// allowed addresses are cut out of the blocked blocks (block `10.0.0.0/8`, allow
/// `10.1.0.0/16`: 10.1.x.x gets in); without it, blocked wins over allowed (Ocelot).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IpRules {
    pub allowed: Vec<IpNet>,
    pub blocked: Vec<IpNet>,
    pub exclude_allowed_from_blocked: bool,
}

impl IpRules {
    pub fn allows(&self, ip: IpAddr) -> bool {
        let allowed = self.allowed.iter().any(|net| net.contains(ip));
        let blocked = self.blocked.iter().any(|net| net.contains(ip))
            && !(self.exclude_allowed_from_blocked && allowed);
        !blocked && (self.allowed.is_empty() || allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Scheme, host and port compare exactly (host and scheme without case), default
    /// ports included; a wildcard takes one or more leftmost labels and never the bare
    /// domain.
    #[test]
    fn origins_match_scheme_host_and_port() {
        let exact = OriginPattern::parse("https://App.Example.com").unwrap();
        for yes in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
        ] {
            assert!(exact.matches(yes.as_bytes()), "{yes}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://evil-app.example.com",
            "https://app.example.com.evil.com",
            "https://app.example.com/",
            "https://app.example.com, https://evil.com",
            "null",
            "",
            "app.example.com",
        ] {
            assert!(!exact.matches(no.as_bytes()), "{no}");
        }
        let wildcard = OriginPattern::parse("https://*.example.com").unwrap();
        for yes in ["https://a.example.com", "https://a.b.example.com"] {
            assert!(wildcard.matches(yes.as_bytes()), "{yes}");
        }
        for no in [
            "https://example.com",
            "https://.example.com",
            "https://aexample.com",
            "http://a.example.com",
        ] {
            assert!(!wildcard.matches(no.as_bytes()), "{no}");
        }
        let local = OriginPattern::parse("http://localhost:3000").unwrap();
        assert!(local.matches(b"http://localhost:3000"));
        assert!(!local.matches(b"http://localhost"));
        let v6 = OriginPattern::parse("http://[::1]:8080").unwrap();
        assert!(v6.matches(b"http://[::1]:8080"));
        assert!(!v6.matches(b"http://[::1]"));
        assert!(!exact.matches(&[0xff, 0xfe]));
    }

    /// Each malformed pattern says why.
    #[test]
    fn bad_origin_patterns_are_named() {
        for (bad, why) in [
            ("app.example.com", "must start with"),
            ("ftp://app.example.com", "must start with"),
            ("https://app.example.com/", "has a path"),
            ("https://user@app.example.com", "has a path"),
            ("https://", "is empty"),
            ("https://*", "`*` may only stand"),
            ("https://a.*.example.com", "`*` may only stand"),
            ("https://app.example.com:0", "port 0"),
            ("https://app.example.com:99999", "is not a port"),
            ("https://app_example.com", "is not allowed in a host name"),
        ] {
            let e = OriginPattern::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// Addresses and blocks of both families; a mapped IPv4 address is its IPv4 address.
    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let net = IpNet::parse("10.1.2.3/16").unwrap();
        assert_eq!(net.to_string(), "10.1.0.0/16");
        assert!(net.contains(ip("10.1.255.255")));
        assert!(net.contains(ip("::ffff:10.1.0.7")));
        assert!(!net.contains(ip("10.2.0.0")));
        assert!(!net.contains(ip("::a01:7")));
        let one = IpNet::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("2001:db8::1")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(IpNet::parse("::/0").unwrap().contains(ip("::1")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x",
            "",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
        assert!(IpNet::parse("10.0.0.0/33")
            .unwrap_err()
            .to_string()
            .contains("longer than the address (32 bits)"));
    }

    /// Ocelot's rules: blocked refuses, a non-empty allowed list refuses the rest; blocked
    /// wins over allowed unless `excludeAllowedFromBlocked`.
    #[test]
    fn ip_rules_follow_ocelot() {
        let nets = |list: &[&str]| list.iter().map(|s| IpNet::parse(s).unwrap()).collect();
        let rules = IpRules {
            allowed: nets(&["10.0.0.0/8"]),
            blocked: nets(&["10.1.0.0/16"]),
            exclude_allowed_from_blocked: false,
        };
        assert!(rules.allows(ip("10.2.0.1")));
        assert!(!rules.allows(ip("10.1.0.1")));
        assert!(!rules.allows(ip("192.0.2.1")));
        let carve = IpRules {
            allowed: nets(&["10.1.2.0/24"]),
            blocked: nets(&["10.0.0.0/8"]),
            exclude_allowed_from_blocked: true,
        };
        assert!(carve.allows(ip("10.1.2.9")));
        assert!(!carve.allows(ip("10.1.3.9")));
        let block_only = IpRules {
            allowed: vec![],
            blocked: nets(&["2001:db8::/32"]),
            exclude_allowed_from_blocked: false,
        };
        assert!(block_only.allows(ip("127.0.0.1")));
        assert!(!block_only.allows(ip("2001:db8::5")));
        assert!(IpRules::default().allows(ip("127.0.0.1")));
    }
}
