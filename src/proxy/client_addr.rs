//! Which address a request comes from (docs/security.md): the TCP peer, or, when that peer
//! is a proxy named by `--trusted-proxies`, the address the proxies put in
//! `X-Forwarded-For`. That address is what the IP lists check, what the refusal log and
//! the connection's span name, and what `ConsistentHash` on `clientIp` hashes.
//!
//! `X-Forwarded-For` is walked from the right, the end the trusted proxies append to: the
//! first address that is not a trusted proxy is the client. Addresses further left were
//! written by the client itself (or by proxies nobody vouches for) and are never believed,
//! so a client cannot choose its address by sending the header. When every address is a
//! trusted proxy the leftmost is taken; an entry that is not an address stops the walk at
//! the last address reached. A peer that is not a trusted proxy is the client, whatever
//! the header says. Imports only `headers`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use super::headers::X_FORWARDED_FOR;
use crate::model::IpNet;

/// How the listeners learn client addresses (`--trusted-proxies`, `--proxy-protocol`).
#[derive(Clone, Debug, Default)]
pub struct ClientAddressOptions {
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Every connection on the traffic listeners starts with a PROXY protocol header
    /// (`proxy_protocol`) whose source address is the connection's peer.
    pub proxy_protocol: bool,
}

impl ClientAddressOptions {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }

    /// The client of a request from `peer` with `headers`: `peer` itself, or an address
    /// from `X-Forwarded-For` (with port 0: the header carries none) when `peer` is trusted.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if self.trusted_proxies.is_empty() || !self.trusts(peer.ip()) {
            return peer;
        }
        let mut client = peer.ip();
        // Later header lines were appended later: walk them last first.
        let entries = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|line| line.as_bytes().rsplit(|&b| b == b','));
        for entry in entries {
            let Some(ip) = parse_entry(entry) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        if client == peer.ip() {
            peer
        } else {
            SocketAddr::new(client.to_canonical(), 0)
        }
    }
}

/// One `X-Forwarded-For` entry: `203.0.113.7`, `2001:db8::1`, and the forms with a port
/// some proxies write (`203.0.113.7:4711`, `[2001:db8::1]:4711`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (ip, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn options(trusted: &[&str]) -> ClientAddressOptions {
        ClientAddressOptions {
            trusted_proxies: trusted.iter().map(|t| IpNet::parse(t).unwrap()).collect(),
            proxy_protocol: false,
        }
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Without trusted proxies, or from a peer that is not one, the header is ignored.
    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let h = headers(&["203.0.113.7"]);
        assert_eq!(
            options(&[]).client(peer("10.0.0.5:4000"), &h),
            peer("10.0.0.5:4000")
        );
        assert_eq!(
            options(&["10.0.0.0/8"]).client(peer("192.0.2.1:4000"), &h),
            peer("192.0.2.1:4000")
        );
    }

    /// From a trusted proxy, the rightmost address that is not a trusted proxy is the
    /// client: what the client wrote itself further left is not believed.
    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let o = options(&["10.0.0.0/8", "2001:db8::/32"]);
        let p = peer("10.0.0.5:4000");
        for (lines, want) in [
            (vec!["203.0.113.7"], "203.0.113.7:0"),
            (vec!["1.1.1.1, 203.0.113.7"], "203.0.113.7:0"),
            (vec!["1.1.1.1, 203.0.113.7, 10.9.9.9"], "203.0.113.7:0"),
            (vec!["1.1.1.1", "203.0.113.7, 10.1.1.1"], "203.0.113.7:0"),
            (vec!["10.1.1.1, 10.2.2.2"], "10.1.1.1:0"),
            (vec!["garbage, 203.0.113.7"], "203.0.113.7:0"),
            (vec!["203.0.113.7, garbage"], "10.0.0.5:4000"),
            (vec!["203.0.113.7:4711"], "203.0.113.7:0"),
            (vec!["[2001:db9::1]:4711, 2001:db8::2"], "[2001:db9::1]:0"),
            (vec!["::ffff:203.0.113.7"], "203.0.113.7:0"),
            (vec![], "10.0.0.5:4000"),
        ] {
            assert_eq!(o.client(p, &headers(&lines)), peer(want), "{lines:?}");
        }
    }
}
