//! Certificates from Secrets: `tls.secretName` (a `kubernetes.io/tls` Secret with `tls.crt`
//! and `tls.key`), `backendTls.caSecretName` (`ca.crt`) and `--default-cert-secret`.
//! Messages name the Secret and the key, never the contents.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;

use crate::model::{CaBundle, ServerCertificate};

pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";

/// Secrets by `(namespace, name)`.
pub type Secrets = BTreeMap<(String, String), Arc<Secret>>;

pub fn index(secrets: impl IntoIterator<Item = Arc<Secret>>) -> Secrets {
    secrets
        .into_iter()
        .filter_map(|s| {
            let key = (s.metadata.namespace.clone()?, s.metadata.name.clone()?);
            Some((key, s))
        })
        .collect()
}

/// Drops the data of Secrets wsgate can never use (neither TLS nor carrying `ca.crt` or
/// `jwks.json`), so
/// the reflector store holds no unrelated secret material.
pub fn strip_unusable(secret: &mut Secret) {
    let tls = secret.type_.as_deref() == Some(TLS_SECRET_TYPE);
    let ca = secret.data.as_ref().is_some_and(|d| d.contains_key(CA_KEY));
    let jwks = secret
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key(super::auth::JWKS_KEY));
    if !tls && !ca && !jwks {
        secret.data = None;
    }
    secret.string_data = None;
}

pub(super) fn lookup<'a>(
    secrets: &'a Secrets,
    namespace: &str,
    name: &str,
) -> Result<&'a Secret, String> {
    secrets
        .get(&(namespace.to_string(), name.to_string()))
        .map(|s| s.as_ref())
        .ok_or_else(|| format!("Secret {namespace}/{name} not found"))
}

pub(super) fn data<'a>(
    secret: &'a Secret,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<&'a [u8], String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("Secret {namespace}/{name} has no `{key}`"))
}

/// The server certificate in a `kubernetes.io/tls` Secret.
pub fn server_certificate(
    secrets: &Secrets,
    namespace: &str,
    name: &str,
) -> Result<ServerCertificate, String> {
    let secret = lookup(secrets, namespace, name)?;
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        return Err(format!(
            "Secret {namespace}/{name} is of type `{}`, not `{TLS_SECRET_TYPE}`",
            secret.type_.as_deref().unwrap_or("Opaque")
        ));
    }
    let cert = data(secret, namespace, name, TLS_CERT_KEY)?;
    let key = data(secret, namespace, name, TLS_KEY_KEY)?;
    ServerCertificate::from_pem(format!("secret {namespace}/{name}"), cert, key)
        .map_err(|e| e.to_string())
}

/// The CA bundle in a Secret's `ca.crt`.
pub fn ca_bundle(secrets: &Secrets, namespace: &str, name: &str) -> Result<CaBundle, String> {
    let secret = lookup(secrets, namespace, name)?;
    let pem = data(secret, namespace, name, CA_KEY)?;
    CaBundle::from_pem(format!("secret {namespace}/{name} {CA_KEY}"), pem)
        .map_err(|e| e.to_string())
}
