//! A route's authentication on a request (WebSocket handshake or plain HTTP), before any
//! backend is dialled: the token from `Authorization: Bearer` or else the `access_token`
//! query parameter, verified with the route's key set (`model::Jwks`), `iss`, `aud`, `exp`
//! and `nbf` checked with the leeway, then `allowedScopes` and `routeClaimsRequirement`.
//! An accepted request gets its claim headers, and loses `access_token` from its query
//! and any client-sent header a claim header replaces (`Authorized::apply`).
//!
//! The token itself is never logged nor put in an answer: errors name only what was
//! wrong with it. Imports nothing of `proxy` but `error`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::error::{Error, Forbidden, TokenRejected};
use crate::model::{Authentication, Jwks, Route, VerifiedTokens};

/// The query parameter browsers and the SignalR client send the token in.
pub const ACCESS_TOKEN_PARAM: &str = "access_token";

/// A request that may go on, with what its authentication adds to it.
#[derive(Debug, Default)]
pub struct Authorized {
    /// When the token stops being valid (its `exp` plus the leeway), when the route has
    /// `closeOnTokenExpiry`: the relay closes the connection then (Close 1008 to the client,
    /// 1001 to the backend).
    pub close_at: Option<Instant>,
    /// Headers from claims (`addHeadersToRequest`), set by `apply`.
    claim_headers: Vec<(HeaderName, HeaderValue)>,
    /// Whether the route authenticates: `apply` strips `access_token` and the claim
    /// headers' names only then.
    authenticated: bool,
}

/// Checks the request against `route`'s authentication; `Ok` with nothing to apply when the
/// route has none.
pub fn check(route: &Route, headers: &HeaderMap, query: Option<&str>) -> Result<Authorized, Error> {
    let Some(auth) = &route.authentication else {
        return Ok(Authorized::default());
    };
    let token = bearer_token(headers, query).map_err(Error::Unauthorized)?;
    let claims = verify(auth, &token, SystemTime::now()).map_err(Error::Unauthorized)?;
    authorize(auth, &claims).map_err(Error::Forbidden)?;
    let close_at = if auth.close_on_token_expiry {
        expiry(&claims, auth.leeway, SystemTime::now(), Instant::now())
    } else {
        None
    };
    let claim_headers = auth
        .claim_headers
        .iter()
        .filter_map(|h| {
            let text = claim_text(claims.get(&h.claim)?)?;
            let value = HeaderValue::from_str(h.select(&text)?).ok()?;
            Some((h.header.clone(), value))
        })
        .collect();
    Ok(Authorized {
        close_at,
        claim_headers,
        authenticated: true,
    })
}

impl Authorized {
    /// Applies the authentication to what goes to the backend: client-sent headers with a
    /// claim header's name removed, the claim headers added, `access_token` removed from
    /// the query of `downstream` (path and query as rendered for the backend).
    pub fn apply(self, route: &Route, headers: &mut HeaderMap, downstream: &mut String) {
        if !self.authenticated {
            return;
        }
        if let Some(auth) = &route.authentication {
            for h in &auth.claim_headers {
                headers.remove(&h.header);
            }
        }
        for (name, value) in self.claim_headers {
            headers.insert(name, value);
        }
        strip_access_token(downstream);
    }
}

/// The request's token: `Authorization: Bearer`, else `access_token` in the query.
fn bearer_token(headers: &HeaderMap, query: Option<&str>) -> Result<String, TokenRejected> {
    for value in headers.get_all(header::AUTHORIZATION) {
        let value = value.as_bytes();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ") {
            let token = value[7..].trim_ascii();
            if !token.is_empty() {
                return String::from_utf8(token.to_vec()).map_err(|_| TokenRejected::Malformed);
            }
        }
    }
    let mut found = None;
    for (name, value) in query_pairs(query.unwrap_or("")) {
        if name == ACCESS_TOKEN_PARAM.as_bytes() {
            if found.is_some() {
                return Err(TokenRejected::Ambiguous);
            }
            found = Some(value);
        }
    }
    match found {
        Some(value) if !value.is_empty() => String::from_utf8(percent_decode(value).into_owned())
            .map_err(|_| TokenRejected::Malformed),
        _ => Err(TokenRejected::Missing),
    }
}

/// Verifies `token` with the route's keys and checks its registered claims at `now`.
fn verify(
    auth: &Authentication,
    token: &str,
    now: SystemTime,
) -> Result<Arc<Map<String, Value>>, TokenRejected> {
    let jwks = auth
        .jwks
        .as_ref()
        .map_err(|_| TokenRejected::KeysUnavailable)?;
    let cache_key = VerifiedTokens::key(auth.issuer.as_deref(), &auth.audiences, token);
    let claims = match jwks.verified.get(&cache_key) {
        Some(claims) => claims,
        None => {
            let claims = Arc::new(verify_signature(auth, jwks, token)?);
            jwks.verified.insert(cache_key, Arc::clone(&claims));
            claims
        }
    };
    check_times(auth, claims, now)
}

/// The token's signature, issuer and audience against `jwks`: its claims, unchecked for
/// time (which `check_times` does on every use, cached or not).
fn verify_signature(
    auth: &Authentication,
    jwks: &Jwks,
    token: &str,
) -> Result<Map<String, Value>, TokenRejected> {
    // `alg: none` and unknown algorithms fail here: they are not `Algorithm`s.
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejected::Malformed)?;
    // The key must allow the token's algorithm: an HS256 token never meets an RSA key.
    let key = jwks
        .select(header.kid.as_deref(), header.alg)
        .ok_or(TokenRejected::NoKey {
            alg: algorithm_name(header.alg),
        })?;
    let mut validation = Validation::new(header.alg);
    // Time claims are checked below against `now`, which tests and the fuzzer pass in.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    validation.validate_aud = !auth.audiences.is_empty();
    if validation.validate_aud {
        validation.set_audience(&auth.audiences);
        validation.required_spec_claims.insert("aud".into());
    }
    if let Some(issuer) = &auth.issuer {
        validation.set_issuer(&[issuer]);
        validation.required_spec_claims.insert("iss".into());
    }
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        .map_err(|e| rejected(e.kind()))?;
    Ok(data.claims)
}

/// `exp` (required) and `nbf` against `now`, with the leeway.
fn check_times(
    auth: &Authentication,
    claims: Arc<Map<String, Value>>,
    now: SystemTime,
) -> Result<Arc<Map<String, Value>>, TokenRejected> {
    let now = unix_seconds(now);
    let leeway = auth.leeway.as_secs();
    // `exp` is required and must be a number; so must `nbf` when present (a string `nbf`
    // must never count as absent).
    let exp = match claims.get("exp") {
        None => return Err(TokenRejected::MissingClaim("exp")),
        Some(v) => numeric_date(v).ok_or(TokenRejected::InvalidClaims)?,
    };
    if exp.saturating_add(leeway) <= now {
        return Err(TokenRejected::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf).ok_or(TokenRejected::InvalidClaims)?;
        if nbf > now.saturating_add(leeway) {
            return Err(TokenRejected::NotYetValid);
        }
    }
    Ok(claims)
}

/// `allowedScopes` and `routeClaimsRequirement` against a verified token's claims.
fn authorize(auth: &Authentication, claims: &Map<String, Value>) -> Result<(), Forbidden> {
    if !auth.allowed_scopes.is_empty() {
        let mut granted: Vec<&str> = Vec::new();
        for name in ["scope", "scp"] {
            match claims.get(name) {
                Some(Value::String(s)) => granted.extend(s.split_ascii_whitespace()),
                Some(Value::Array(items)) => {
                    granted.extend(items.iter().filter_map(Value::as_str));
                }
                _ => {}
            }
        }
        if let Some(missing) = auth
            .allowed_scopes
            .iter()
            .find(|s| !granted.contains(&s.as_str()))
        {
            return Err(Forbidden::Scope {
                missing: missing.clone(),
            });
        }
    }
    for (claim, required) in &auth.required_claims {
        let met = match claims.get(claim) {
            Some(Value::Array(items)) => items
                .iter()
                .any(|v| claim_text(v).as_deref() == Some(required.as_str())),
            Some(v) => claim_text(v).as_deref() == Some(required.as_str()),
            None => false,
        };
        if !met {
            return Err(Forbidden::Claim {
                claim: claim.clone(),
            });
        }
    }
    Ok(())
}

/// A claim as text: strings as they are, numbers and booleans written out, the first
/// element of an array; objects and null have no text.
fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => items.first().and_then(claim_text),
        _ => None,
    }
}

/// The instant a verified token stops being valid (`exp` plus `leeway`), on the monotonic
/// clock, given the wall clock and the monotonic clock read at the same moment.
fn expiry(
    claims: &Map<String, Value>,
    leeway: Duration,
    now: SystemTime,
    now_instant: Instant,
) -> Option<Instant> {
    let exp = numeric_date(claims.get("exp")?)?;
    let until = exp
        .saturating_add(leeway.as_secs())
        .saturating_sub(unix_seconds(now));
    now_instant.checked_add(Duration::from_secs(until))
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional; negative
/// ones count as 0.
fn numeric_date(value: &Value) -> Option<u64> {
    let n = value.as_number()?;
    n.as_u64()
        .or_else(|| n.as_i64().map(|i| i.max(0) as u64))
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.max(0.0) as u64)
        })
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rejected(kind: &ErrorKind) -> TokenRejected {
    match kind {
        ErrorKind::InvalidSignature => TokenRejected::BadSignature,
        ErrorKind::ExpiredSignature => TokenRejected::Expired,
        ErrorKind::ImmatureSignature => TokenRejected::NotYetValid,
        ErrorKind::InvalidIssuer => TokenRejected::WrongIssuer,
        ErrorKind::InvalidAudience => TokenRejected::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => TokenRejected::MissingClaim("iss"),
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenRejected::MissingClaim("aud"),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName => TokenRejected::Malformed,
        _ => TokenRejected::InvalidClaims,
    }
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        ES256 => "ES256",
        ES384 => "ES384",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        EdDSA => "EdDSA",
        _ => "other",
    }
}

/// `name=value` pairs of a query string, as raw bytes (names compared undecoded but for
/// `%5F`, which some clients write for `_`).
fn query_pairs(query: &str) -> impl Iterator<Item = (std::borrow::Cow<'_, [u8]>, &[u8])> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(name.as_bytes()), value.as_bytes())
    })
}

/// Removes every `access_token` parameter from the query of a rendered path and query.
fn strip_access_token(path_and_query: &mut String) {
    let Some(q) = path_and_query.find('?') else {
        return;
    };
    let query = &path_and_query[q + 1..];
    if !query
        .split('&')
        .any(|p| is_access_token(p.split('=').next().unwrap_or("")))
    {
        return;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !is_access_token(p.split('=').next().unwrap_or("")))
        .collect();
    let mut out = path_and_query[..q].to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    *path_and_query = out;
}

/// `path_and_query` for a log line: every `access_token` parameter's value replaced by
/// `[redacted]` (the parameter stays, so a reader sees that a token came in the query).
/// Borrowed when there is none.
pub(crate) fn redact_access_token(path_and_query: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.into();
    };
    fn name(param: &str) -> &str {
        param.split('=').next().unwrap_or("")
    }
    if !query.split('&').any(|p| is_access_token(name(p))) {
        return path_and_query.into();
    }
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, param) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let name = name(param);
        if is_access_token(name) {
            out.push_str(name);
            out.push_str("=[redacted]");
        } else {
            out.push_str(param);
        }
    }
    out.into()
}

fn is_access_token(name: &str) -> bool {
    *percent_decode(name.as_bytes()) == *ACCESS_TOKEN_PARAM.as_bytes()
}

/// `%XX` escapes decoded and `+` as a space (form encoding); a malformed escape is kept as
/// written. Borrowed when there is nothing to decode (a JWT is base64url and dots: a copy
/// byte by byte cost ~10 instructions per byte of every token, bench/edge-cost.sh).
fn percent_decode(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    // `contains` on bytes is core's word-at-a-time memchr: two passes beat one byte loop.
    if !input.contains(&b'%') && !input.contains(&b'+') {
        return std::borrow::Cow::Borrowed(input);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A route requiring HS256 tokens of `https://id.test` for `aud`, with its key set.
    fn hs256_route(aud: &str, secret: &[u8]) -> Route {
        use crate::api::{AuthenticationOptions, JwtOptions, WsRouteSpec};
        use crate::model::{route_from_spec, RouteId, SpecBackends};
        let mut spec = WsRouteSpec::with_static_backends(
            "/{everything}",
            "/{everything}",
            &["127.0.0.1:1".parse().expect("an address")],
        );
        spec.authentication_options = Some(AuthenticationOptions {
            jwt: JwtOptions {
                issuer: Some("https://id.test".into()),
                audiences: vec![aud.into()],
                jwks_file: Some("jwks.json".into()),
                leeway: Some("0s".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let mut route =
            route_from_spec(RouteId("t".into()), 0, &spec, SpecBackends::Static).expect("valid");
        let k = base64_url(secret);
        let jwks = format!(r#"{{"keys": [{{"kty": "oct", "alg": "HS256", "k": "{k}"}}]}}"#);
        route.authentication.as_mut().expect("auth").jwks =
            Ok(Jwks::from_json("test", jwks.as_bytes()).expect("jwks"));
        route
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A verified token's claims are kept with the key set: the next use of the same token
    /// skips the signature (one entry, however often it comes), time claims are checked on
    /// every use, and a route with another audience never takes the entry for its own.
    #[test]
    fn verified_tokens_are_cached_per_key_set_and_settings() {
        let secret = [7u8; 32];
        let route = hs256_route("chat", &secret);
        let auth = route.authentication.as_ref().expect("auth");
        let now = SystemTime::now();
        let exp = unix_seconds(now) + 60;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"iss": "https://id.test", "aud": "chat", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(&secret).expect("an HMAC key"),
        )
        .expect("sign");
        let jwks = auth.jwks.as_ref().expect("keys");
        assert!(jwks.verified.is_empty());
        for _ in 0..3 {
            verify(auth, &token, now).expect("valid");
        }
        assert_eq!(jwks.verified.len(), 1);
        // The cached token still expires.
        let later = now + Duration::from_secs(120);
        assert_eq!(verify(auth, &token, later), Err(TokenRejected::Expired));
        // The same key set under another audience: not a hit, and refused.
        let mut other = auth.clone();
        other.audiences = vec!["admin".into()];
        assert_eq!(
            verify(&other, &token, now),
            Err(TokenRejected::WrongAudience)
        );
        // A tampered token is verified (and refused), never matched to the cached one.
        let mut tampered = token.clone();
        tampered.pop();
        assert!(verify(auth, &tampered, now).is_err());
    }

    /// `access_token` leaves the query wherever it stands, and only it.
    #[test]
    fn access_token_is_removed_from_the_query_and_nothing_else() {
        for (before, after) in [
            ("/a?access_token=x", "/a"),
            ("/a?access_token=x&id=1", "/a?id=1"),
            ("/a?id=1&access_token=x", "/a?id=1"),
            ("/a?id=1&access%5Ftoken=x&b=2", "/a?id=1&b=2"),
            ("/a?id=1&access_tokens=x", "/a?id=1&access_tokens=x"),
            ("/a?id=1", "/a?id=1"),
            ("/a", "/a"),
        ] {
            let mut s = before.to_string();
            strip_access_token(&mut s);
            assert_eq!(s, after, "{before}");
        }
    }

    /// The header wins over the query; two `access_token`s are refused; none is `Missing`.
    #[test]
    fn token_comes_from_the_header_else_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h, Some("access_token=q")), Ok("q".into()));
        assert_eq!(bearer_token(&h, Some("a=1")), Err(TokenRejected::Missing));
        assert_eq!(
            bearer_token(&h, Some("access_token=a&access_token=b")),
            Err(TokenRejected::Ambiguous)
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  hdr "),
        );
        assert_eq!(bearer_token(&h, Some("access_token=q")), Ok("hdr".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h, None), Err(TokenRejected::Missing));
    }

    /// The expiry instant is `exp` plus the leeway, on the monotonic clock read with the
    /// wall clock; an `exp` already past (within the leeway) gives a near instant, never a
    /// panic.
    #[test]
    fn expiry_is_exp_plus_leeway_from_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let base = Instant::now();
        let claims = |exp: Value| {
            let mut m = Map::new();
            m.insert("exp".into(), exp);
            m
        };
        let at = |exp: Value, leeway| expiry(&claims(exp), Duration::from_secs(leeway), now, base);
        assert_eq!(at(1_000_002.into(), 0), Some(base + Duration::from_secs(2)));
        assert_eq!(
            at(1_000_002.into(), 30),
            Some(base + Duration::from_secs(32))
        );
        assert_eq!(at(999_990.into(), 30), Some(base + Duration::from_secs(20)));
        assert_eq!(at(999_000.into(), 0), Some(base));
        assert_eq!(at("soon".into(), 0), None);
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(&*percent_decode(b"a%2Eb%zz%4"), b"a.b%zz%4");
    }

    #[test]
    fn access_token_values_are_redacted_for_logs() {
        assert_eq!(redact_access_token("/a?x=1"), "/a?x=1");
        assert_eq!(redact_access_token("/a"), "/a");
        assert_eq!(
            redact_access_token("/a?x=1&access_token=eyJ.secret&y=2&%61ccess_token=s2"),
            "/a?x=1&access_token=[redacted]&y=2&%61ccess_token=[redacted]"
        );
        assert!(matches!(
            redact_access_token("/a?x=1"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
