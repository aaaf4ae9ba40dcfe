//! Recognising and validating a client's WebSocket upgrade request (RFC 6455 §4.2.1).

use base64::Engine;
use http::header::{self, HeaderMap};
use http::Method;

use super::headers::has_token;
use super::Error;

/// True when the request asks to switch to WebSocket. Such a request is then validated
/// strictly; a request with no `Upgrade: websocket` is plain HTTP.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
}

/// Checks the rest of the upgrade request; the error says which part is wrong.
pub fn validate(method: &Method, version: http::Version, headers: &HeaderMap) -> Result<(), Error> {
    if method != Method::GET {
        return Err(Error::BadHandshake("a WebSocket upgrade must use GET"));
    }
    if version != http::Version::HTTP_11 {
        return Err(Error::BadHandshake("a WebSocket upgrade needs HTTP/1.1"));
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(Error::BadHandshake(
            "`Connection` header must contain `upgrade`",
        ));
    }
    match headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
    {
        Some(b"13") => {}
        Some(_) => return Err(Error::BadHandshake("`Sec-WebSocket-Version` must be 13")),
        None => {
            return Err(Error::BadHandshake(
                "`Sec-WebSocket-Version` header is missing",
            ))
        }
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Error::BadHandshake("`Sec-WebSocket-Key` header is missing"))?;
    match base64::engine::general_purpose::STANDARD.decode(key.as_bytes()) {
        Ok(k) if k.len() == 16 => Ok(()),
        _ => Err(Error::BadHandshake(
            "`Sec-WebSocket-Key` must be 16 bytes in base64",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn good() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        h
    }

    fn err(method: Method, h: &HeaderMap) -> String {
        validate(&method, http::Version::HTTP_11, h)
            .unwrap_err()
            .to_string()
    }

    /// A browser-shaped upgrade passes; each broken part is named.
    #[test]
    fn each_broken_part_is_named() {
        assert!(validate(&Method::GET, http::Version::HTTP_11, &good()).is_ok());
        assert!(err(Method::POST, &good()).contains("GET"));
        let mut h = good();
        h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(err(Method::GET, &h).contains("Sec-WebSocket-Version"));
        let mut h = good();
        h.remove(header::SEC_WEBSOCKET_KEY);
        assert!(err(Method::GET, &h).contains("Sec-WebSocket-Key` header is missing"));
        let mut h = good();
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("short"));
        assert!(err(Method::GET, &h).contains("16 bytes"));
        let mut h = good();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(err(Method::GET, &h).contains("Connection"));
    }
}
