//! A route's authentication (src/proxy/auth.rs with src/model/auth.rs): the token from the
//! `Authorization` header or the `access_token` query parameter, verified against a JWKS.
//!
//! Input: three parts separated by `\n\n`: the `Authorization` header value (empty: none),
//! the query string, the JWKS (any bytes). Checks: nothing panics; a refusal is 401 or 403;
//! an accepted request's backend target carries no `access_token` parameter; a request
//! without any token is refused with 401.

use wsgate::fuzzing::authenticate;

/// One input: panics when a property does not hold.
pub fn check(data: &[u8]) {
    let (authorization, rest) = split_blank_line(data);
    let (query, jwks) = split_blank_line(rest);
    let query = String::from_utf8_lossy(query);
    let authorization = (!authorization.is_empty()).then_some(authorization);
    match authenticate(jwks, authorization, &query) {
        Ok(target) => {
            let q = target.split_once('?').map_or("", |(_, q)| q);
            assert!(
                !q.split('&')
                    .any(|p| p.split('=').next() == Some("access_token")),
                "access_token reached the backend: {target}"
            );
            assert!(
                authorization.is_some() || query.contains("access"),
                "accepted without a token"
            );
        }
        Err(status) => assert!(status == 401 || status == 403, "status {status}"),
    }
}

fn split_blank_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[]),
    }
}
