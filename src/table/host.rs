//! Host patterns of routes and the `Host` header of requests.
//!
//! A route host `chat.example.com` matches that name on any port; `chat.example.com:8080`
//! only that port; `*.example.com` any name ending in `.example.com` with at least one label
//! before it. Names compare ASCII-case-insensitively and a trailing dot is ignored. A request
//! without a port in its `Host` matches only port-less patterns: the default port depends on
//! the listener, which the table does not know.

/// Longest DNS name (RFC 1035); longer patterns can never match a real `Host`.
const MAX_NAME: usize = 253;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HostPattern {
    /// Lower-cased name without trailing dot.
    Exact { name: String, port: Option<u16> },
    /// Lower-cased suffix including its leading dot: `.example.com`.
    Wildcard { suffix: String, port: Option<u16> },
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let lowered = pattern.trim().to_ascii_lowercase();
        let (name, port) = split_port(&lowered);
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return Err(format!("`{pattern}`: `{p}` is not a port (1-65535)")),
            },
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let bad = || {
            format!(
                "`{pattern}` is not a host pattern: use `chat.example.com` or `*.example.com`, optionally with `:port`"
            )
        };
        if name.len() > MAX_NAME {
            return Err(format!("`{pattern}` is longer than {MAX_NAME} characters"));
        }
        match name.strip_prefix("*.") {
            Some(rest) if !rest.is_empty() && !rest.contains('*') && !rest.starts_with('.') => {
                Ok(HostPattern::Wildcard {
                    suffix: format!(".{rest}"),
                    port,
                })
            }
            Some(_) => Err(bad()),
            None if name.is_empty() || name.contains('*') => Err(bad()),
            None => Ok(HostPattern::Exact {
                name: name.to_string(),
                port,
            }),
        }
    }
}

/// `name:port` → (`name`, `port`); IPv6 literals keep their brackets (`[::1]:80`).
fn split_port(host: &str) -> (&str, Option<&str>) {
    match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            (name, Some(port))
        }
        _ => (host, None),
    }
}

/// A request's `Host` header split into its name (case as received) and port.
pub(crate) struct RequestHost<'a> {
    pub name: &'a str,
    pub port: Option<u16>,
}

impl<'a> RequestHost<'a> {
    /// `None` for an empty or unusable header: such a request matches host-less routes only.
    pub fn parse(header: &'a str) -> Option<Self> {
        let (name, port) = split_port(header.trim());
        let port = match port {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok()?),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        (!name.is_empty()).then_some(RequestHost { name, port })
    }

    /// Wildcard suffixes this name can match, longest first: `a.b.c` → `.b.c`, `.c`.
    pub fn suffixes(&self) -> impl Iterator<Item = &'a str> + 'a {
        let name = self.name;
        name.char_indices()
            .filter(|&(i, c)| c == '.' && i > 0)
            .map(move |(i, _)| &name[i..])
    }
}

/// FNV-1a over ASCII-lower-cased bytes: lets the table key its maps by folded text without
/// lower-casing the request into a new string. Collisions only add candidates, which are
/// then compared in full.
pub(crate) fn fold_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
