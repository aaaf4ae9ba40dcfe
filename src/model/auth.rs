//! Authentication in the model: what a route requires of a JWT (`Authentication`, from
//! `spec.authenticationOptions`, `spec.routeClaimsRequirement` and
//! `spec.addHeadersToRequest`) and the keys that verify it (`Jwks`, parsed from the bytes a
//! source read: a file or a Secret). Verifying a token is the data plane's work
//! (`proxy::auth`); here every field is checked and every key is bound to the algorithms
//! its type allows, so an RSA public key can never be used as an HMAC secret.
//!
//! Key material never appears in `Debug` output or errors: a key set compares and prints by
//! a digest.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha1::{Digest, Sha1};

use super::{parse_duration, FieldError};
use crate::api::WsRouteSpec;

/// Clock skew allowed on `exp` and `nbf` when `leeway` is absent (Envoy's and
/// jsonwebtoken's default).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// A key set larger than this is refused: a JWKS is a few kilobytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// A key set with more keys than this is refused.
pub const MAX_JWKS_KEYS: usize = 100;
/// RSA keys shorter than this are refused (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;
/// HMAC secrets shorter than this are refused (RFC 7518 §3.2: at least the hash size).
const MIN_HMAC_BYTES: usize = 32;

/// What a route requires of a request's token.
#[derive(Clone, Debug, PartialEq)]
pub struct Authentication {
    /// Required `iss`; `None` = any issuer.
    pub issuer: Option<String>,
    /// The token's `aud` must contain one of these; empty = any audience.
    pub audiences: Vec<String>,
    pub leeway: Duration,
    /// Every one must be in `scope` (space-separated) or `scp` (array or string).
    pub allowed_scopes: Vec<String>,
    /// Close a live WebSocket when its token expires.
    pub close_on_token_expiry: bool,
    /// Claim name and the value it must have (or contain, for an array claim).
    pub required_claims: Vec<(String, String)>,
    /// Headers the backend gets from the token's claims.
    pub claim_headers: Vec<ClaimHeader>,
    /// Where the key set comes from, as written.
    pub jwks_ref: JwksRef,
    /// The key set, filled by the source. Until then, and whenever it cannot be used, every
    /// request on the route is refused with 401 (fail closed).
    pub jwks: Result<Jwks, JwksUnavailable>,
}

/// Where a route's key set comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksRef {
    /// `jwksFile`, relative to the routes file.
    File(String),
    /// `jwksSecretName`: key `jwks.json` of a Secret in the route's namespace.
    Secret(String),
}

/// Why a route has no usable key set (a missing or malformed file or Secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct JwksUnavailable {
    pub reason: String,
}

impl JwksUnavailable {
    pub fn new(reason: impl Into<String>) -> Self {
        JwksUnavailable {
            reason: reason.into(),
        }
    }
}

/// One header of `addHeadersToRequest`: `X-User-Id: "Claims[sub] > value"` (Ocelot's
/// claims-to-headers syntax; `Claims[sub] > value[1] > |` takes the second `|`-separated
/// part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimHeader {
    pub header: http::HeaderName,
    pub claim: String,
    pub selector: ClaimSelector,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimSelector {
    /// `value`: the whole claim.
    Whole,
    /// `value[index] > delimiter`: one part of the claim split at `delimiter`.
    Part { index: usize, delimiter: String },
}

impl ClaimHeader {
    /// Parses Ocelot's `Claims[NAME] > value` or `Claims[NAME] > value[N] > DELIMITER`.
    pub fn parse(header: &str, value: &str) -> Result<ClaimHeader, String> {
        let header = http::HeaderName::from_bytes(header.trim().as_bytes())
            .map_err(|_| format!("`{header}` is not a header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str())
            || header.as_str().starts_with("sec-websocket-")
        {
            return Err(format!(
                "`{header}` is set by wsgate or the WebSocket handshake and cannot come from a claim"
            ));
        }
        let syntax = || {
            format!("`{value}` is not `Claims[NAME] > value` or `Claims[NAME] > value[INDEX] > DELIMITER`")
        };
        let parts: Vec<&str> = value.split('>').map(str::trim).collect();
        let claim = parts
            .first()
            .and_then(|p| p.strip_prefix("Claims["))
            .and_then(|p| p.strip_suffix(']'))
            .filter(|c| !c.is_empty())
            .ok_or_else(syntax)?;
        let selector = match parts.get(1..) {
            Some(["value"]) => ClaimSelector::Whole,
            Some([indexed, delimiter]) if !delimiter.is_empty() => {
                let index = indexed
                    .strip_prefix("value[")
                    .and_then(|i| i.strip_suffix(']'))
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(syntax)?;
                ClaimSelector::Part {
                    index,
                    delimiter: (*delimiter).to_string(),
                }
            }
            _ => return Err(syntax()),
        };
        Ok(ClaimHeader {
            header,
            claim: claim.to_string(),
            selector,
        })
    }

    /// The header's value from a claim's text (`None`: no such part).
    pub fn select<'c>(&self, claim: &'c str) -> Option<&'c str> {
        match &self.selector {
            ClaimSelector::Whole => Some(claim),
            ClaimSelector::Part { index, delimiter } => claim.split(delimiter.as_str()).nth(*index),
        }
    }
}

/// Headers a claim may not set: hop-by-hop ones, and those wsgate sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "proxy-authorization",
    "proxy-connection",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

const AUTH_FIELD: &str = "spec.authenticationOptions";

/// `spec.authenticationOptions`, `spec.routeClaimsRequirement` and
/// `spec.addHeadersToRequest` → `Authentication` (the key set not yet loaded).
pub(super) fn authentication(
    spec: &WsRouteSpec,
    errors: &mut Vec<FieldError>,
) -> Option<Authentication> {
    let Some(options) = &spec.authentication_options else {
        for (set, field) in [
            (
                !spec.route_claims_requirement.is_empty(),
                "spec.routeClaimsRequirement",
            ),
            (
                !spec.add_headers_to_request.is_empty(),
                "spec.addHeadersToRequest",
            ),
        ] {
            if set {
                errors.push(FieldError::new(
                    field,
                    "needs `authenticationOptions`: without a verified token there are no claims",
                ));
            }
        }
        return None;
    };
    let jwt = &options.jwt;
    let before = errors.len();
    let jwks_ref = match (&jwt.jwks_file, &jwt.jwks_secret_name) {
        (Some(file), None) if !file.trim().is_empty() => Some(JwksRef::File(file.clone())),
        (None, Some(name)) if !name.trim().is_empty() => Some(JwksRef::Secret(name.clone())),
        (Some(_), Some(_)) => {
            errors.push(FieldError::new(
                format!("{AUTH_FIELD}.jwt.jwksSecretName"),
                "set one of `jwksSecretName` (cluster) and `jwksFile` (standalone), not both",
            ));
            None
        }
        (Some(_), None) => {
            errors.push(FieldError::new(
                format!("{AUTH_FIELD}.jwt.jwksFile"),
                "must not be empty",
            ));
            None
        }
        (None, Some(_)) => {
            errors.push(FieldError::new(
                format!("{AUTH_FIELD}.jwt.jwksSecretName"),
                "must not be empty",
            ));
            None
        }
        (None, None) => {
            errors.push(FieldError::new(
                format!("{AUTH_FIELD}.jwt"),
                "needs the keys that sign tokens: `jwksSecretName` (cluster) or `jwksFile` (standalone)",
            ));
            None
        }
    };
    let issuer = match jwt.issuer.as_deref() {
        Some(i) if i.trim().is_empty() => {
            errors.push(FieldError::new(
                format!("{AUTH_FIELD}.jwt.issuer"),
                "must not be empty; leave it out to accept any issuer",
            ));
            None
        }
        other => other.map(str::to_string),
    };
    for (i, a) in jwt.audiences.iter().enumerate() {
        if a.trim().is_empty() {
            errors.push(FieldError::new(
                format!("{AUTH_FIELD}.jwt.audiences[{i}]"),
                "must not be empty",
            ));
        }
    }
    let leeway = match jwt.leeway.as_deref().map(parse_duration) {
        None => DEFAULT_LEEWAY,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(FieldError::new(
                format!("{AUTH_FIELD}.jwt.leeway"),
                e.to_string(),
            ));
            DEFAULT_LEEWAY
        }
    };
    for (i, s) in options.allowed_scopes.iter().enumerate() {
        if s.is_empty() || s.contains(char::is_whitespace) {
            errors.push(FieldError::new(
                format!("{AUTH_FIELD}.allowedScopes[{i}]"),
                format!("`{s}` is not a scope (one word, no spaces)"),
            ));
        }
    }
    let mut required_claims = Vec::new();
    for (name, value) in &spec.route_claims_requirement {
        if name.trim().is_empty() {
            errors.push(FieldError::new(
                "spec.routeClaimsRequirement",
                "a claim name must not be empty",
            ));
        } else {
            required_claims.push((name.clone(), value.clone()));
        }
    }
    let mut claim_headers = Vec::new();
    for (header, value) in &spec.add_headers_to_request {
        match ClaimHeader::parse(header, value) {
            Ok(h) => claim_headers.push(h),
            Err(message) => errors.push(FieldError::new(
                format!("spec.addHeadersToRequest.{header}"),
                message,
            )),
        }
    }
    let jwks_ref = jwks_ref?;
    if errors.len() != before {
        return None;
    }
    Some(Authentication {
        issuer,
        audiences: jwt.audiences.clone(),
        leeway,
        allowed_scopes: options.allowed_scopes.clone(),
        close_on_token_expiry: options.close_on_token_expiry.unwrap_or(false),
        required_claims,
        claim_headers,
        jwks_ref,
        jwks: Err(JwksUnavailable::new("the key set has not been loaded")),
    })
}

/// Why bytes are not a usable JWKS. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("{source_name}: {size} bytes; a JWKS may have at most {MAX_JWKS_BYTES}")]
    TooLarge { source_name: String, size: usize },
    #[error("{source_name}: not a JWKS (a JSON object with `keys`): {reason}")]
    NotJwks { source_name: String, reason: String },
    #[error("{source_name}: {count} keys; a JWKS may have at most {MAX_JWKS_KEYS}")]
    TooManyKeys { source_name: String, count: usize },
    #[error("{source_name}: key {index}{kid}: {reason}")]
    BadKey {
        source_name: String,
        index: usize,
        /// ` (kid "…")`, or empty.
        kid: String,
        reason: String,
    },
    #[error("{source_name}: no key wsgate can verify signatures with (RSA, EC P-256/P-384, Ed25519, oct)")]
    NoUsableKey { source_name: String },
}

/// One verification key with the algorithms its type (and its `alg`, when set) allows.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// A parsed key set. Clones share the keys and the tokens verified with them.
#[derive(Clone)]
pub struct Jwks {
    /// Where it came from (`file keys/jwks.json`, `secret apps/chat-jwks`), for logs.
    source: Arc<str>,
    keys: Arc<[VerifyingKey]>,
    digest: [u8; 20],
    /// Tokens whose signature (and issuer and audience) these keys verified, with their
    /// claims: a client that reconnects, or a SignalR client's negotiate and WebSocket,
    /// presents the same token, and an RS256 verification costs about twenty proxied
    /// handshakes (bench/edge-cost.sh, bench/RESULTS.md). A new key set starts empty, so a
    /// rotation drops every entry.
    pub verified: Arc<VerifiedTokens>,
}

/// Claims of verified tokens, by `VerifiedTokens::key` (the token itself, with the
/// settings it was verified under, so a hit is an exact match, never a hash collision):
/// 16 shards of at most 64 entries (a full shard is emptied before the next insert), so
/// memory stays under 1,024 tokens and their claims per key set whatever clients send,
/// and handshakes on different shards never wait for each other.
#[derive(Default)]
pub struct VerifiedTokens {
    shards: [std::sync::Mutex<VerifiedShard>; 16],
}

/// A token's claims, as verified.
pub type Claims = serde_json::Map<String, serde_json::Value>;
type VerifiedShard = std::collections::HashMap<Box<str>, Arc<Claims>>;

impl VerifiedTokens {
    const SHARD_CAPACITY: usize = 64;

    /// The key of `token` verified for `issuer` and `audiences`: all three, so a token
    /// verified under one route's settings is never taken for another's. (A SHA-256 of them
    /// cost more than the rest of the handshake's checks: bench/edge-cost.sh.)
    pub fn key(issuer: Option<&str>, audiences: &[String], token: &str) -> Box<str> {
        let settings =
            issuer.map_or(0, str::len) + audiences.iter().map(|a| a.len() + 1).sum::<usize>();
        let mut key = String::with_capacity(settings + 1 + token.len());
        key.push_str(issuer.unwrap_or(""));
        for audience in audiences {
            key.push('\n');
            key.push_str(audience);
        }
        // Neither issuer nor audience nor a JWT holds a NUL.
        key.push('\0');
        key.push_str(token);
        key.into_boxed_str()
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, VerifiedShard> {
        // The token's last bytes are its signature: spread well enough.
        let spread = key.as_bytes().last().copied().unwrap_or(0);
        self.shards[usize::from(spread & 15)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Arc<Claims>> {
        self.shard(key).get(key).cloned()
    }

    pub fn insert(&self, key: Box<str>, claims: Arc<Claims>) {
        let mut shard = self.shard(&key);
        if shard.len() >= Self::SHARD_CAPACITY {
            shard.clear();
        }
        shard.insert(key, claims);
    }

    /// Entries held (tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Jwks {
    /// Parses a JWKS (RFC 7517). Keys for encryption (`use: enc`) and of types wsgate does
    /// not verify with are skipped; a malformed key fails the whole set, so a typo never
    /// silently drops the key that signs tokens.
    pub fn from_json(source: impl Into<String>, bytes: &[u8]) -> Result<Jwks, JwksError> {
        let source: String = source.into();
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge {
                source_name: source,
                size: bytes.len(),
            });
        }
        let not_jwks = |reason: String| JwksError::NotJwks {
            source_name: source.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| not_jwks(e.to_string()))?;
        let entries = value
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| not_jwks("no `keys` list".into()))?;
        if entries.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys {
                source_name: source,
                count: entries.len(),
            });
        }
        let mut keys = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(serde_json::Value::as_str);
            let bad = |reason: String| JwksError::BadKey {
                source_name: source.clone(),
                index,
                kid: kid.map(|k| format!(" (kid {k:?})")).unwrap_or_default(),
                reason,
            };
            let kty = entry.get("kty").and_then(serde_json::Value::as_str);
            if !matches!(kty, Some("RSA" | "EC" | "OKP" | "oct")) {
                continue;
            }
            let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| bad(e.to_string()))?;
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(family) = algorithms_of(&jwk.algorithm).map_err(bad)? else {
                continue;
            };
            let algorithms = match &jwk.common.key_algorithm {
                None => family.to_vec(),
                Some(alg) => match signing_algorithm(*alg).filter(|a| family.contains(a)) {
                    Some(a) => vec![a],
                    None => {
                        return Err(bad(format!(
                            "`alg: {alg:?}` does not fit a key of this type"
                        )))
                    }
                },
            };
            let key = DecodingKey::from_jwk(&jwk).map_err(|e| bad(e.to_string()))?;
            keys.push(VerifyingKey {
                kid: jwk.common.key_id.clone(),
                algorithms,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                source_name: source,
            });
        }
        Ok(Jwks {
            source: source.into(),
            keys: keys.into(),
            digest: Sha1::digest(bytes).into(),
            verified: Arc::default(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }

    /// The key for a token signed with `alg`: the key named by `kid` (which must allow
    /// `alg`), or without `kid` the only key that allows `alg`. `None` when there is no such
    /// key, or several without a `kid` to choose.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Option<&VerifyingKey> {
        let mut candidates = self.keys.iter().filter(|k| k.algorithms.contains(&alg));
        match kid {
            Some(kid) => candidates.find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let first = candidates.next()?;
                candidates.next().is_none().then_some(first)
            }
        }
    }
}

impl PartialEq for Jwks {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.source == other.source
    }
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest: String = self.digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .field("keys", &self.keys.len())
            .field("sha1", &digest)
            .finish()
    }
}

/// The algorithms a key of this type may verify (`Ok(None)`: a type wsgate skips).
fn algorithms_of(params: &AlgorithmParameters) -> Result<Option<&'static [Algorithm]>, String> {
    use Algorithm::*;
    Ok(match params {
        AlgorithmParameters::RSA(rsa) => {
            let n = base64_len(&rsa.n).ok_or("`n` is not base64url")?;
            if n * 8 < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {} bits is too short (at least {MIN_RSA_BITS})",
                    n * 8
                ));
            }
            Some(&[RS256, RS384, RS512, PS256, PS384, PS512])
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (algorithms, size): (&'static [Algorithm], usize) = match ec.curve {
                EllipticCurve::P256 => (&[ES256], 32),
                EllipticCurve::P384 => (&[ES384], 48),
                _ => return Ok(None),
            };
            for (name, coordinate) in [("x", &ec.x), ("y", &ec.y)] {
                if base64_len(coordinate) != Some(size) {
                    return Err(format!("`{name}` is not a {size}-byte coordinate"));
                }
            }
            Some(algorithms)
        }
        // The verifier reads exactly 32 bytes of `x`: a shorter one must not get that far.
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 if base64_len(&okp.x) == Some(32) => Some(&[EdDSA]),
            EllipticCurve::Ed25519 => return Err("`x` is not a 32-byte Ed25519 key".into()),
            _ => None,
        },
        // Only ever from a key set the operator wrote: an `oct` key is a shared secret.
        AlgorithmParameters::OctetKey(oct) => match base64_len(&oct.value) {
            Some(n) if n >= MIN_HMAC_BYTES => Some(&[HS256, HS384, HS512]),
            _ => {
                return Err(format!(
                    "an `oct` key must be at least {MIN_HMAC_BYTES} bytes (base64url in `k`)"
                ))
            }
        },
        _ => None,
    })
}

/// A JWK's `alg` as a signature algorithm (`None` for encryption algorithms).
fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match alg {
        KeyAlgorithm::HS256 => HS256,
        KeyAlgorithm::HS384 => HS384,
        KeyAlgorithm::HS512 => HS512,
        KeyAlgorithm::ES256 => ES256,
        KeyAlgorithm::ES384 => ES384,
        KeyAlgorithm::RS256 => RS256,
        KeyAlgorithm::RS384 => RS384,
        KeyAlgorithm::RS512 => RS512,
        KeyAlgorithm::PS256 => PS256,
        KeyAlgorithm::PS384 => PS384,
        KeyAlgorithm::PS512 => PS512,
        KeyAlgorithm::EdDSA => EdDSA,
        _ => return None,
    })
}

/// Decoded length of unpadded base64url text, without decoding it (leading zero bytes of
/// an RSA modulus are not counted: RFC 7518 forbids them).
fn base64_len(text: &str) -> Option<usize> {
    let text = text.trim_end_matches('=');
    if !text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(text.len() * 3 / 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AuthenticationOptions, JwtOptions};
    use crate::model::{route_from_spec, RouteId, SpecBackends};

    fn spec_with(auth: Option<AuthenticationOptions>) -> WsRouteSpec {
        WsRouteSpec {
            authentication_options: auth,
            ..crate::model::tests::spec()
        }
    }

    fn jwt_file() -> AuthenticationOptions {
        AuthenticationOptions {
            jwt: JwtOptions {
                jwks_file: Some("keys/jwks.json".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn fields(spec: &WsRouteSpec) -> Vec<String> {
        match route_from_spec(RouteId("r".into()), 0, spec, SpecBackends::Static) {
            Ok(_) => vec![],
            Err(errors) => errors.into_iter().map(|e| e.field).collect(),
        }
    }

    /// Each mistake is reported under the field that holds it.
    #[test]
    fn mistakes_name_their_field() {
        let mut no_keys = jwt_file();
        no_keys.jwt.jwks_file = None;
        assert_eq!(
            fields(&spec_with(Some(no_keys))),
            ["spec.authenticationOptions.jwt"]
        );
        let mut both = jwt_file();
        both.jwt.jwks_secret_name = Some("k".into());
        assert_eq!(
            fields(&spec_with(Some(both))),
            ["spec.authenticationOptions.jwt.jwksSecretName"]
        );
        let mut bad = jwt_file();
        bad.jwt.leeway = Some("soon".into());
        bad.jwt.audiences = vec!["a".into(), " ".into()];
        bad.allowed_scopes = vec!["two words".into()];
        assert_eq!(
            fields(&spec_with(Some(bad))),
            [
                "spec.authenticationOptions.jwt.audiences[1]",
                "spec.authenticationOptions.jwt.leeway",
                "spec.authenticationOptions.allowedScopes[0]"
            ]
        );
        let mut s = spec_with(None);
        s.route_claims_requirement
            .insert("role".into(), "admin".into());
        s.add_headers_to_request
            .insert("X-User-Id".into(), "Claims[sub] > value".into());
        assert_eq!(
            fields(&s),
            ["spec.routeClaimsRequirement", "spec.addHeadersToRequest"]
        );
        let mut s = spec_with(Some(jwt_file()));
        s.add_headers_to_request
            .insert("X-User-Id".into(), "Claims[sub]".into());
        s.add_headers_to_request
            .insert("Host".into(), "Claims[sub] > value".into());
        assert_eq!(
            fields(&s),
            [
                "spec.addHeadersToRequest.Host",
                "spec.addHeadersToRequest.X-User-Id"
            ]
        );
    }

    /// A valid block becomes the model, its key set not loaded yet (so it fails closed).
    #[test]
    fn valid_block_is_modelled_with_keys_unloaded() {
        let mut s = spec_with(Some(jwt_file()));
        s.route_claims_requirement
            .insert("role".into(), "admin".into());
        let route = route_from_spec(RouteId("r".into()), 0, &s, SpecBackends::Static).unwrap();
        let auth = route.authentication.unwrap();
        assert_eq!(auth.jwks_ref, JwksRef::File("keys/jwks.json".into()));
        assert_eq!(auth.leeway, DEFAULT_LEEWAY);
        assert_eq!(auth.required_claims, [("role".into(), "admin".into())]);
        assert!(auth.jwks.is_err());
    }

    /// Ocelot's two forms of a claims-to-header rule.
    #[test]
    fn claim_header_syntax() {
        let whole = ClaimHeader::parse("X-User-Id", "Claims[sub] > value").unwrap();
        assert_eq!(whole.select("u|1"), Some("u|1"));
        let part = ClaimHeader::parse("X-Id", "Claims[sub] > value[1] > |").unwrap();
        assert_eq!(part.claim, "sub");
        assert_eq!(part.select("usertype|42"), Some("42"));
        assert_eq!(part.select("usertype"), None);
        for bad in [
            "Claims[] > value",
            "sub > value",
            "Claims[sub] > value[x] > |",
            "Claims[sub] > value[1]",
        ] {
            assert!(ClaimHeader::parse("X", bad).is_err(), "{bad}");
        }
    }

    /// Keys are bound to the algorithms of their type; malformed keys fail the set; keys
    /// for encryption and unknown types are skipped.
    #[test]
    fn key_set_binds_each_key_to_its_algorithms() {
        use base64::Engine;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        let set = format!(
            r#"{{"keys": [
                {{"kty": "oct", "kid": "h", "k": "{secret}"}},
                {{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}},
                {{"kty": "XYZ", "kid": "future"}}
            ]}}"#
        );
        let jwks = Jwks::from_json("test", set.as_bytes()).unwrap();
        assert_eq!(jwks.keys().len(), 1);
        assert!(jwks.select(Some("h"), Algorithm::HS256).is_some());
        assert!(jwks.select(None, Algorithm::HS512).is_some());
        assert!(jwks.select(Some("h"), Algorithm::RS256).is_none());
        assert!(jwks.select(Some("other"), Algorithm::HS256).is_none());
        assert!(!format!("{jwks:?}").contains(&secret));

        for (set, wanted) in [
            (
                r#"{"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#,
                "too short",
            ),
            (
                r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AQAB"}]}"#,
                "32-byte",
            ),
            (
                r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AQAB", "y": "AQAB"}]}"#,
                "coordinate",
            ),
            (
                r#"{"keys": [{"kty": "oct", "k": "AQAB"}]}"#,
                "at least 32 bytes",
            ),
            (r#"{"keys": []}"#, "no key"),
            (r#"{"other": 1}"#, "no `keys`"),
            ("not json", "not a JWKS"),
        ] {
            let e = Jwks::from_json("f", set.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(wanted), "{set}: {e}");
        }
    }
}
