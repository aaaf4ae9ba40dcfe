//! `authenticationOptions.jwt.jwksSecretName` in a cluster: the JWKS in key `jwks.json` of a
//! Secret in the route's namespace, resolved against the Secrets store like certificates
//! (`secrets.rs`). A Secret that changes (a rotated key set) re-translates the route, so new
//! handshakes verify with the new keys; live connections keep theirs. A missing or unusable
//! Secret leaves the route in the table refusing every request with 401 (fail closed) and
//! is reported as `ResolvedRefs` False, `InvalidAuthRef`. Messages name the Secret and the
//! key, never the contents.

use super::secrets::{data, lookup, Secrets};
use crate::model::{FieldError, Jwks, JwksRef, JwksUnavailable, Route};

/// The Secret key that holds the JWKS.
pub const JWKS_KEY: &str = "jwks.json";

/// The key set in a Secret's `jwks.json`.
pub fn jwks(secrets: &Secrets, namespace: &str, name: &str) -> Result<Jwks, String> {
    let secret = lookup(secrets, namespace, name)?;
    let bytes = data(secret, namespace, name, JWKS_KEY)?;
    Jwks::from_json(format!("secret {namespace}/{name} {JWKS_KEY}"), bytes)
        .map_err(|e| e.to_string())
}

/// Loads the key set of `route`'s authentication from its Secret; returns the problems for
/// `ResolvedRefs` (empty = resolved). A `jwksFile` is a field error here.
pub(super) fn resolve(
    namespace: &str,
    secrets: &Secrets,
    route: &mut Route,
    field_errors: &mut Vec<FieldError>,
) -> Vec<String> {
    let Some(auth) = route.authentication.as_mut() else {
        return Vec::new();
    };
    match &auth.jwks_ref {
        JwksRef::File(_) => {
            field_errors.push(FieldError::new(
                "spec.authenticationOptions.jwt.jwksFile",
                "JWKS files are for standalone mode; in a cluster name a Secret with `jwks.json` in `jwksSecretName`",
            ));
            Vec::new()
        }
        JwksRef::Secret(name) => match jwks(secrets, namespace, name) {
            Ok(set) => {
                auth.jwks = Ok(set);
                Vec::new()
            }
            Err(e) => {
                auth.jwks = Err(JwksUnavailable::new(e.clone()));
                vec![format!(
                    "spec.authenticationOptions.jwt.jwksSecretName: {e}; every request is refused with 401 until it resolves"
                )]
            }
        },
    }
}
