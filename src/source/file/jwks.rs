//! `authenticationOptions.jwt.jwksFile` in routes files: a JWKS named relative to the routes
//! file, read at every load and watched with the routes files (a rotated key set reloads the
//! table, so new handshakes verify with the new keys; live connections keep theirs). A key
//! set that cannot be read or parsed leaves the route in place refusing every request with
//! 401 (fail closed), reported as `InvalidAuthRef`. Key material never appears in a message.

use std::path::{Path, PathBuf};

use crate::model::{Jwks, JwksRef, JwksUnavailable, Route};

/// One problem with a route's key set.
pub(super) struct JwksProblem {
    pub field: &'static str,
    pub message: String,
    /// The route stays (failing closed) rather than being left out.
    pub route_kept: bool,
}

const FILE_FIELD: &str = "spec.authenticationOptions.jwt.jwksFile";
const SECRET_FIELD: &str = "spec.authenticationOptions.jwt.jwksSecretName";

/// Loads the key set `route`'s authentication names, recording the file in `read` so the
/// watcher follows it.
pub(super) fn resolve(
    routes_file: &Path,
    route: &mut Route,
    read: &mut Vec<PathBuf>,
) -> Option<JwksProblem> {
    let auth = route.authentication.as_mut()?;
    let name = match &auth.jwks_ref {
        JwksRef::File(name) => name.clone(),
        JwksRef::Secret(_) => {
            return Some(JwksProblem {
                field: SECRET_FIELD,
                message: "Secrets need a cluster; in standalone mode set `jwksFile`".into(),
                route_kept: false,
            })
        }
    };
    let path = routes_file.parent().unwrap_or(Path::new("")).join(&name);
    read.push(path.clone());
    let loaded = match std::fs::read(&path) {
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        Ok(bytes) => {
            Jwks::from_json(format!("file {}", path.display()), &bytes).map_err(|e| e.to_string())
        }
    };
    match loaded {
        Ok(jwks) => {
            auth.jwks = Ok(jwks);
            None
        }
        Err(message) => {
            auth.jwks = Err(JwksUnavailable::new(message.clone()));
            Some(JwksProblem {
                field: FILE_FIELD,
                message: format!(
                    "{message}; every request on this route is refused with 401 until it loads"
                ),
                route_kept: true,
            })
        }
    }
}
