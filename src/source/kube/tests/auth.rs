//! `jwksSecretName`: the key set from a Secret's `jwks.json`, driven by watch events like
//! the certificate Secrets: resolved into the route, rotated by a Secret update, and a
//! missing or malformed Secret reported as `ResolvedRefs` False `InvalidAuthRef` with the
//! route kept (refusing every request).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;

use super::*;
use crate::api::{AuthenticationOptions, JwtOptions};
use crate::source::kube::JWKS_KEY;

/// A JWKS with one new Ed25519 public key named `kid`.
fn ed25519_jwks(kid: &str) -> String {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key");
    serde_json::json!({"keys": [{
        "kty": "OKP", "crv": "Ed25519", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
    }]})
    .to_string()
}

fn jwks_secret(data: &[(&str, &str)]) -> Secret {
    secret("apps", "chat-jwks", "Opaque", data)
}

/// The chat route (Service backend) authenticating with `jwksSecretName: chat-jwks`.
fn chat_world_with_jwt(edit: impl FnOnce(&mut JwtOptions)) -> World {
    let mut w = chat_world(&[("10.0.0.1", Pod::Ready)]);
    let mut r = service_route("apps", "chat", "chat", IntOrString::Int(80));
    let mut jwt = JwtOptions {
        issuer: Some("https://id.example.com".into()),
        jwks_secret_name: Some("chat-jwks".into()),
        ..Default::default()
    };
    edit(&mut jwt);
    r.spec.authentication_options = Some(AuthenticationOptions {
        jwt,
        ..Default::default()
    });
    w.route(r);
    w
}

fn resolved_refs_of(t: &Translation) -> (String, String, String) {
    let st = status_of(t, "apps/chat", &[], Some(1));
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == resolved_refs::TYPE)
        .unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// The Secret's `jwks.json` becomes the route's key set; an update of the Secret (a
/// rotation) replaces it in the next translation.
#[test]
fn jwks_secret_resolves_and_a_secret_update_rotates_the_keys() {
    let mut w = chat_world_with_jwt(|_| {});
    w.secret(jwks_secret(&[(JWKS_KEY, &ed25519_jwks("k1"))]));
    let t = w.translate();
    let auth = route_of(&t, "apps/chat").authentication.unwrap();
    let jwks = auth.jwks.as_ref().expect("key set resolved");
    assert_eq!(jwks.source(), "secret apps/chat-jwks jwks.json");
    assert!(jwks.select(Some("k1"), Algorithm::EdDSA).is_some());
    let (status, reason, _) = resolved_refs_of(&t);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        (cstatus::TRUE, resolved_refs::RESOLVED_REFS)
    );

    w.secret(jwks_secret(&[(JWKS_KEY, &ed25519_jwks("k2"))]));
    let auth = route_of(&w.translate(), "apps/chat")
        .authentication
        .unwrap();
    let jwks = auth.jwks.as_ref().unwrap();
    assert!(jwks.select(Some("k2"), Algorithm::EdDSA).is_some());
    assert!(jwks.select(Some("k1"), Algorithm::EdDSA).is_none());
}

/// A missing Secret, one without `jwks.json`, or one whose `jwks.json` is not a JWKS:
/// `ResolvedRefs` False with `InvalidAuthRef`, the route accepted and kept in the table
/// with no key set (so it refuses every request); no message quotes the contents.
#[test]
fn missing_or_malformed_jwks_secret_reports_invalid_auth_ref_and_fails_closed() {
    let garbage = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#;
    let cases: Vec<(&str, Option<Secret>, &str)> = vec![
        ("missing", None, "not found"),
        (
            "no jwks.json",
            Some(jwks_secret(&[("ca.crt", "x")])),
            "has no `jwks.json`",
        ),
        (
            "not a JWKS",
            Some(jwks_secret(&[(JWKS_KEY, "not json")])),
            "not a JWKS",
        ),
        (
            "short secret",
            Some(jwks_secret(&[(JWKS_KEY, garbage)])),
            "at least 32 bytes",
        ),
    ];
    for (case, s, expect) in cases {
        let mut w = chat_world_with_jwt(|_| {});
        if let Some(s) = s {
            w.secret(s);
        }
        let t = w.translate();
        let route = route_of(&t, "apps/chat");
        assert!(route.authentication.unwrap().jwks.is_err(), "{case}");
        let (status, reason, message) = resolved_refs_of(&t);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            (cstatus::FALSE, resolved_refs::INVALID_AUTH_REF),
            "{case}"
        );
        assert!(message.contains("apps/chat-jwks"), "{case}: {message}");
        assert!(message.contains(expect), "{case}: {message}");
        assert!(!message.contains("c2VjcmV0"), "{case}: leaks contents");
        let st = status_of(&t, "apps/chat", &[], Some(1));
        assert_eq!(
            condition(&st, accepted::TYPE),
            (cstatus::TRUE, accepted::ACCEPTED),
            "{case}"
        );
    }
}

/// A JWKS file in a cluster is a field error (Accepted False), like certificate files.
#[test]
fn jwks_file_in_a_cluster_is_invalid() {
    let w = chat_world_with_jwt(|jwt| {
        jwt.jwks_secret_name = None;
        jwt.jwks_file = Some("keys/jwks.json".into());
    });
    let t = w.translate();
    assert!(t.routes.iter().all(|r| r.id.0 != "apps/chat"));
    let r = report(&t, "apps/chat");
    assert_eq!(
        r.field_errors[0].field,
        "spec.authenticationOptions.jwt.jwksFile"
    );
}

/// A Secret carrying `jwks.json` keeps its data in the store.
#[test]
fn jwks_secret_data_is_kept() {
    let mut s = jwks_secret(&[(JWKS_KEY, "{}")]);
    strip_unusable(&mut s);
    assert!(s.data.is_some());
}
