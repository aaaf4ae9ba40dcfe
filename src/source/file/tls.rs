//! `spec.tls` and `spec.backendTls` in routes files: PEM files named relative to the routes
//! file, read at every load (and watched, so editing them reloads). Problems name the field;
//! file contents never appear in a message.

use std::path::{Path, PathBuf};

use crate::api::WsRouteSpec;
use crate::model::{CaBundle, Route, ServerCertificate};

/// One problem: field path under the route, message, and whether the route may still load.
pub(super) struct TlsProblem {
    pub field: &'static str,
    pub message: String,
    pub warning: bool,
}

/// Fills `route.certificate` and `route.backend_tls.ca` from the files `spec` names, and
/// records every file it looked at in `read` (so the watcher follows them).
pub(super) fn resolve(
    spec: &WsRouteSpec,
    routes_file: &Path,
    route: &mut Route,
    read: &mut Vec<PathBuf>,
) -> Vec<TlsProblem> {
    let mut problems = Vec::new();
    let base = routes_file.parent().unwrap_or(Path::new(""));
    let mut error = |field, message: String| {
        problems.push(TlsProblem {
            field,
            message,
            warning: false,
        })
    };
    if let Some(tls) = &spec.tls {
        if tls.secret_name.is_some() {
            error(
                "spec.tls.secretName",
                "Secrets need a cluster; in standalone mode set `certFile` and `keyFile`".into(),
            );
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(cert), Some(key)) => {
                let cert_path = base.join(cert);
                let key_path = base.join(key);
                read.push(cert_path.clone());
                read.push(key_path.clone());
                match (std::fs::read(&cert_path), std::fs::read(&key_path)) {
                    (Err(e), _) => error(
                        "spec.tls.certFile",
                        format!("cannot read {}: {e}", cert_path.display()),
                    ),
                    (_, Err(e)) => error(
                        "spec.tls.keyFile",
                        format!("cannot read {}: {e}", key_path.display()),
                    ),
                    (Ok(c), Ok(k)) => match ServerCertificate::from_pem(
                        format!("file {}", cert_path.display()),
                        &c,
                        &k,
                    ) {
                        Ok(certificate) => route.certificate = Some(certificate),
                        Err(e) => error("spec.tls.certFile", e.to_string()),
                    },
                }
            }
            (Some(_), None) => error(
                "spec.tls.keyFile",
                "required with `certFile`: the PEM private key".into(),
            ),
            (None, Some(_)) => error(
                "spec.tls.certFile",
                "required with `keyFile`: the PEM certificate chain".into(),
            ),
            (None, None) if tls.secret_name.is_none() => error(
                "spec.tls",
                "set `certFile` and `keyFile` (PEM files, relative to this routes file)".into(),
            ),
            (None, None) => {}
        }
    }
    if let Some(backend) = &spec.backend_tls {
        if backend.ca_secret_name.is_some() {
            error(
                "spec.backendTls.caSecretName",
                "Secrets need a cluster; in standalone mode set `caFile`".into(),
            );
        }
        if let Some(ca) = &backend.ca_file {
            let path = base.join(ca);
            read.push(path.clone());
            match std::fs::read(&path) {
                Err(e) => error(
                    "spec.backendTls.caFile",
                    format!("cannot read {}: {e}", path.display()),
                ),
                Ok(pem) => match CaBundle::from_pem(format!("file {}", path.display()), &pem) {
                    Ok(bundle) => route.backend_tls.ca = Some(bundle),
                    Err(e) => error("spec.backendTls.caFile", e.to_string()),
                },
            }
        }
    }
    if route.insecure_skip_verify {
        problems.push(TlsProblem {
            field: "spec.dangerousAcceptAnyServerCertificateValidator",
            message: "backend certificates of this route are NOT verified: anyone on the network path to the backend can read and change its traffic".into(),
            warning: true,
        });
    }
    problems
}
