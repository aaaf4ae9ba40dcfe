//! The SNI certificate map of one table generation: exact name, then the longest wildcard
//! suffix, then the default. Built in `compile`, so swapping the table swaps certificates
//! for new handshakes in the same step; live connections keep the keys they negotiated.

use std::collections::HashMap;

use super::host::RequestHost;
use crate::model::HostPattern;
use crate::model::ServerCertificate;

#[derive(Debug, Default)]
pub struct CertificateMap {
    /// Lower-cased names.
    exact: HashMap<String, ServerCertificate>,
    /// Lower-cased suffixes with their leading dot (`.example.com`).
    wildcard: HashMap<String, ServerCertificate>,
    /// `--default-cert` / `--default-cert-secret`, else the first route without a host.
    default: Option<ServerCertificate>,
    /// From the first host-less route with a certificate; used when no default is set.
    fallback: Option<ServerCertificate>,
}

impl CertificateMap {
    /// Adds a route's certificate under its host pattern (`None` = host-less route). The
    /// route declared first keeps a name; the port of a pattern plays no part in SNI.
    pub(crate) fn insert(&mut self, host: Option<&HostPattern>, cert: &ServerCertificate) {
        let slot = match host {
            Some(HostPattern::Exact { name, .. }) => self.exact.entry(name.clone()),
            Some(HostPattern::Wildcard { suffix, .. }) => self.wildcard.entry(suffix.clone()),
            None => {
                if self.fallback.is_none() {
                    self.fallback = Some(cert.clone());
                }
                return;
            }
        };
        slot.or_insert_with(|| cert.clone());
    }

    pub(crate) fn set_default(&mut self, cert: Option<ServerCertificate>) {
        self.default = cert;
    }

    /// Whether any certificate could be served.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.default.is_none()
            && self.fallback.is_none()
    }

    /// The certificate for a ClientHello's server name: exact, then the longest matching
    /// wildcard, then the default. No SNI gets the default.
    pub fn resolve(&self, sni: Option<&str>) -> Option<&ServerCertificate> {
        let named = sni.and_then(RequestHost::parse).and_then(|host| {
            let name = host.name.to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                let host = RequestHost {
                    name: &name,
                    port: None,
                };
                host.suffixes().find_map(|s| self.wildcard.get(s))
            })
        });
        named.or(self.default.as_ref()).or(self.fallback.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(name: &str) -> ServerCertificate {
        let key = rcgen::KeyPair::generate().expect("key");
        let c = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        ServerCertificate::from_pem(name, c.pem().as_bytes(), key.serialize_pem().as_bytes())
            .expect("parses")
    }

    fn pattern(p: &str) -> HostPattern {
        HostPattern::parse(p).expect("pattern")
    }

    fn source<'a>(map: &'a CertificateMap, sni: Option<&str>) -> Option<&'a str> {
        map.resolve(sni).map(ServerCertificate::source)
    }

    /// Exact name first, then the longest wildcard suffix, then the default; no SNI gets
    /// the default; names compare case-insensitively and ports play no part.
    #[test]
    fn resolve_prefers_exact_then_longest_wildcard_then_default() {
        let mut map = CertificateMap::default();
        map.insert(Some(&pattern("chat.example.com:8443")), &cert("exact"));
        map.insert(Some(&pattern("*.example.com")), &cert("wide"));
        map.insert(Some(&pattern("*.eu.example.com")), &cert("narrow"));
        map.set_default(Some(cert("default")));
        assert_eq!(source(&map, Some("Chat.Example.com")), Some("exact"));
        assert_eq!(source(&map, Some("a.eu.example.com")), Some("narrow"));
        assert_eq!(source(&map, Some("a.b.example.com")), Some("wide"));
        assert_eq!(source(&map, Some("other.org")), Some("default"));
        assert_eq!(source(&map, None), Some("default"));
    }

    /// The route declared first keeps a name; a host-less route's certificate serves only
    /// when no default is configured; with neither, nothing is served.
    #[test]
    fn first_declared_wins_and_hostless_route_is_the_fallback() {
        let mut map = CertificateMap::default();
        assert!(map.is_empty());
        assert_eq!(source(&map, Some("chat.example.com")), None);
        map.insert(Some(&pattern("chat.example.com")), &cert("first"));
        map.insert(Some(&pattern("chat.example.com")), &cert("second"));
        map.insert(None, &cert("hostless"));
        assert_eq!(source(&map, Some("chat.example.com")), Some("first"));
        assert_eq!(source(&map, Some("other.org")), Some("hostless"));
        map.set_default(Some(cert("default")));
        assert_eq!(source(&map, Some("other.org")), Some("default"));
    }
}
