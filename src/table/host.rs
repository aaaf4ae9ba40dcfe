//! The `Host` header of requests, matched against the routes' `model::HostPattern`s
//! (whose rules are in `model/host.rs`). A request without a port in its `Host` matches
//! only port-less patterns: the default port depends on the listener, which the table does
//! not know.

use crate::model::host::split_port;

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
