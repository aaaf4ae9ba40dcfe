//! JWTs for tests: keys generated per test binary (RSA with the `rsa` crate, EC P-256/P-384
//! and Ed25519 with rcgen), their public JWKs, and tokens signed with them.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A signing key and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    /// A new 2048-bit RSA key (RS256 by default).
    pub fn rsa(kid: &str) -> TestKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::PrivateKey::new(&mut getrandom_sys_rng::SysRng, 2048)
            .expect("generate an RSA key");
        let der = key.to_pkcs1_der().expect("RSA key as PKCS#1");
        let n = key.n().to_be_bytes_trimmed_vartime();
        let e = key.e().to_be_bytes_trimmed_vartime();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "kid": kid, "use": "sig",
                "n": URL_SAFE_NO_PAD.encode(&n), "e": URL_SAFE_NO_PAD.encode(&e),
            }),
        }
    }

    /// The same RSA key signing with another RSA algorithm (RS384, PS256...).
    pub fn with_alg(&self, alg: Algorithm) -> TestKey {
        TestKey {
            kid: self.kid.clone(),
            alg,
            encoding: self.encoding.clone(),
            jwk: self.jwk.clone(),
        }
    }

    /// A new EC key on P-256 (ES256) or P-384 (ES384).
    pub fn ec(kid: &str, alg: Algorithm) -> TestKey {
        let (curve, crv, len) = match alg {
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256", 32),
            Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384", 48),
            other => panic!("not an EC algorithm: {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(curve).expect("generate an EC key");
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 1 + 2 * len, "uncompressed point");
        TestKey {
            kid: kid.into(),
            alg,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "EC", "kid": kid, "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&point[1..1 + len]),
                "y": URL_SAFE_NO_PAD.encode(&point[1 + len..]),
            }),
        }
    }

    /// A new Ed25519 key (EdDSA).
    pub fn ed25519(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: json!({
                "kty": "OKP", "kid": kid, "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
            }),
        }
    }

    /// An HMAC secret, published as an `oct` JWK.
    pub fn hmac(kid: &str, secret: &[u8]) -> TestKey {
        TestKey {
            kid: kid.into(),
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret).expect("an HMAC key"),
            jwk: json!({ "kty": "oct", "kid": kid, "k": URL_SAFE_NO_PAD.encode(secret) }),
        }
    }

    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A token with `claims`, signed by this key, its `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign a token")
    }

    /// A token whose header has no `kid`.
    pub fn sign_without_kid(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.encoding).expect("sign")
    }
}

/// One RSA key per test binary: generating one costs a noticeable fraction of a second.
pub fn shared_rsa() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| TestKey::rsa("rsa-1"))
}

/// A JWKS document with the public keys of `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims valid for an hour with `iss` and `aud` as the test routes expect, and `extra`.
pub fn claims(extra: Value) -> Value {
    let mut c = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-42",
        "iat": now(), "exp": now() + 3600,
    });
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

pub const ISSUER: &str = "https://id.example.com";
pub const AUDIENCE: &str = "chat";

/// `header.payload.` with `alg: none` and no signature.
pub fn unsigned_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// An HS256 token whose HMAC secret is the RSA key's public JWK `n` bytes and the JWK
/// text: the classic algorithm-confusion forgery.
pub fn hs256_with_public_key_as_secret(key: &TestKey, claims: &Value) -> Vec<String> {
    let n = URL_SAFE_NO_PAD
        .decode(key.jwk["n"].as_str().expect("an RSA key"))
        .unwrap();
    [n, key.jwk.to_string().into_bytes()]
        .iter()
        .map(|secret| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(key.kid.clone());
            jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret).unwrap())
                .unwrap()
        })
        .collect()
}
