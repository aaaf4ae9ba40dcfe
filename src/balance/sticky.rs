//! `CookieStickySessions` cookies: `<endpoint>.<expires-ms>.<mac>`, signed with HMAC-SHA1
//! under the gateway's sticky key. Any replica holding the same key honours a cookie
//! another one set, with no shared state; a client can neither forge one for an endpoint
//! of its choosing nor stretch its expiry. The endpoint part is itself keyed, so a cookie
//! does not reveal pod addresses.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::{header, HeaderMap, HeaderValue};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Shortest key accepted from a flag or Secret.
pub const MIN_STICKY_KEY_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StickyKeyError {
    #[error("the sticky-session key has {len} bytes; it needs at least {MIN_STICKY_KEY_BYTES}")]
    TooShort { len: usize },
}

/// The secret that signs sticky-session cookies. Replicas that must honour each other's
/// cookies share it.
#[derive(Clone)]
pub struct StickyKey(Arc<[u8]>);

impl StickyKey {
    pub fn new(bytes: &[u8]) -> Result<Self, StickyKeyError> {
        if bytes.len() < MIN_STICKY_KEY_BYTES {
            return Err(StickyKeyError::TooShort { len: bytes.len() });
        }
        Ok(StickyKey(bytes.into()))
    }

    /// 32 random bytes: cookies then hold only for this process.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: fall back to std's per-process random SipHash keys, which
            // are seeded from the OS too when it has anything to give.
            use std::hash::{BuildHasher, Hasher};
            for chunk in bytes.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(chunk.as_ptr() as usize);
                chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
            }
        }
        StickyKey(bytes.into())
    }

    fn mac(&self) -> HmacSha1 {
        // HMAC takes keys of any length; this cannot fail.
        HmacSha1::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    /// The keyed identity of an endpoint as it appears in cookies.
    pub(crate) fn endpoint_id(&self, authority: &str) -> u64 {
        let mut m = self.mac();
        m.update(b"endpoint\0");
        m.update(authority.as_bytes());
        let tag = m.finalize().into_bytes();
        u64::from_be_bytes(tag[..8].try_into().unwrap_or([0; 8]))
    }
}

impl Default for StickyKey {
    fn default() -> Self {
        Self::random()
    }
}

impl fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StickyKey(..)")
    }
}

/// One route's sticky cookie: its name, lifetime and the key that signs it.
#[derive(Debug, Clone)]
pub(crate) struct StickyCookie {
    name: String,
    expiry: Duration,
    key: StickyKey,
}

impl StickyCookie {
    pub(crate) fn new(name: &str, expiry: Duration, key: &StickyKey) -> Self {
        StickyCookie {
            name: name.to_string(),
            expiry,
            key: key.clone(),
        }
    }

    pub(crate) fn key(&self) -> &StickyKey {
        &self.key
    }

    /// The endpoint id of the first cookie of this name that is authentic and unexpired.
    pub(crate) fn read(&self, headers: &HeaderMap, now_ms: u64) -> Option<u64> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name.trim() == self.name).then(|| value.trim().trim_matches('"'))
            })
            .find_map(|value| self.verify(value, now_ms))
    }

    fn verify(&self, value: &str, now_ms: u64) -> Option<u64> {
        let (signed, mac) = value.rsplit_once('.')?;
        let (endpoint, expires) = signed.split_once('.')?;
        let endpoint = u64::from_str_radix(endpoint, 16).ok()?;
        let expires: u64 = expires.parse().ok()?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        let mut m = self.signer();
        m.update(signed.as_bytes());
        m.verify_slice(&mac).ok()?;
        (expires > now_ms).then_some(endpoint)
    }

    fn signer(&self) -> HmacSha1 {
        let mut m = self.key.mac();
        m.update(b"cookie\0");
        m.update(self.name.as_bytes());
        m.update(b"\0");
        m
    }

    /// The cookie value naming `endpoint` until `now + expiry`.
    pub(crate) fn value(&self, endpoint: u64, now_ms: u64) -> String {
        let expires =
            now_ms.saturating_add(u64::try_from(self.expiry.as_millis()).unwrap_or(u64::MAX));
        let signed = format!("{endpoint:016x}.{expires}");
        let mut m = self.signer();
        m.update(signed.as_bytes());
        let mac = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
        format!("{signed}.{mac}")
    }

    /// The `Set-Cookie` header value: whole site, not readable by scripts, sent on
    /// top-level navigations; `Secure` when the client reached wsgate over TLS.
    pub(crate) fn set_cookie(&self, endpoint: u64, now_ms: u64, secure: bool) -> HeaderValue {
        let max_age = self.expiry.as_secs().max(1);
        let text = format!(
            "{}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            self.name,
            self.value(endpoint, now_ms),
            if secure { "; Secure" } else { "" }
        );
        // Name is a validated token and the value is hex, digits and base64url.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}
