//! Ocelot's authentication keys in ocelot.json: `AuthenticationOptions`
//! (`AuthenticationProviderKey` or a one-element `AuthenticationProviderKeys`,
//! `AllowedScopes`, and wsgate's `CloseOnTokenExpiry`), `RouteClaimsRequirement` and
//! `AddHeadersToRequest`. Ocelot names an ASP.NET authentication scheme registered in code;
//! here the key names a JWT provider given on the command line
//! (`--jwt-provider NAME=FILE`, `FileOptions::jwt_providers`): FILE is a YAML `jwt` block
//! whose `jwksFile` is relative to FILE.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{describe, is_empty, Fields, RouteReader};
use crate::api::{AuthenticationOptions, JwtOptions};

/// What the authentication keys of one Ocelot route came to.
#[derive(Default)]
pub(super) struct OcelotAuth {
    pub options: Option<AuthenticationOptions>,
    pub claims: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    /// The provider file read (watched with the routes files).
    pub provider_file: Option<PathBuf>,
}

const KEY: &str = "AuthenticationOptions";

impl RouteReader<'_> {
    /// Reads the route's authentication keys; every problem is an error (the route would
    /// otherwise be served more openly than written).
    pub(super) fn authentication(&mut self) -> OcelotAuth {
        let mut out = OcelotAuth {
            claims: self.string_map("RouteClaimsRequirement"),
            headers: self.string_map("AddHeadersToRequest"),
            ..OcelotAuth::default()
        };
        let Some(node) = self.fields.take(KEY) else {
            return out;
        };
        if is_empty(&node.value()) {
            return out;
        }
        let Some(entries) = node.entries() else {
            self.error(
                KEY,
                node.line(),
                format!("expected an object, found {}", describe(&node.value())),
            );
            return out;
        };
        let path = self.fields.path(KEY);
        let mut f = Fields::new(self.fields.file, entries, &path, self.fields.name.clone());
        let key = f.take("AuthenticationProviderKey");
        let keys = f.take("AuthenticationProviderKeys");
        let scopes = f.take("AllowedScopes");
        let close = f.take("CloseOnTokenExpiry");
        for (k, n) in f.rest() {
            let w = f.warn(&k, n.line(), "unknown key; ignored".into());
            f.problems.push(w);
        }
        self.fields.problems.append(&mut f.problems);

        let mut names: Vec<String> = Vec::new();
        if let Some(n) = &key {
            match n.value() {
                Value::String(s) if !s.trim().is_empty() => names.push(s.trim().to_string()),
                Value::Null => {}
                Value::String(_) => {}
                other => self.error(
                    &format!("{KEY}.AuthenticationProviderKey"),
                    n.line(),
                    format!("expected a string, found {}", describe(&other)),
                ),
            }
        }
        if let Some(n) = &keys {
            match n.value() {
                Value::Array(items) => names.extend(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                ),
                Value::Null => {}
                other => self.error(
                    &format!("{KEY}.AuthenticationProviderKeys"),
                    n.line(),
                    format!("expected a list of strings, found {}", describe(&other)),
                ),
            }
        }
        names.dedup();
        let line = key
            .as_ref()
            .or(keys.as_ref())
            .and_then(|n| n.line())
            .or(node.line());
        let provider_field = format!("{KEY}.AuthenticationProviderKey");
        let name = match names.as_slice() {
            [one] => one.clone(),
            [] => {
                self.error(
                    &provider_field,
                    line,
                    "required: the name of a JWT provider given with `--jwt-provider NAME=FILE`"
                        .into(),
                );
                return out;
            }
            _ => {
                self.error(
                    &provider_field,
                    line,
                    format!(
                        "{} providers named; wsgate verifies a route's tokens with one",
                        names.len()
                    ),
                );
                return out;
            }
        };
        let Some(file) = self.fields.file.options.jwt_providers.get(&name).cloned() else {
            let known: Vec<&str> = self
                .fields
                .file
                .options
                .jwt_providers
                .keys()
                .map(String::as_str)
                .collect();
            self.error(
                &provider_field,
                line,
                format!(
                    "`{name}` is not a JWT provider: give it with `--jwt-provider {name}=FILE` (known: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            );
            return out;
        };
        out.provider_file = Some(file.clone());
        let jwt = match read_provider(&file) {
            Ok(jwt) => jwt,
            Err(message) => {
                self.error(
                    &provider_field,
                    line,
                    format!("provider `{name}`: {message}"),
                );
                return out;
            }
        };
        let allowed_scopes = match scopes.map(|n| (n.line(), n.value())) {
            None | Some((_, Value::Null)) => Vec::new(),
            Some((_, Value::Array(items))) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some((line, other)) => {
                self.error(
                    &format!("{KEY}.AllowedScopes"),
                    line,
                    format!("expected a list of strings, found {}", describe(&other)),
                );
                Vec::new()
            }
        };
        let close_on_token_expiry = match close.map(|n| (n.line(), n.value())) {
            None | Some((_, Value::Null)) => None,
            Some((_, Value::Bool(b))) => Some(b),
            Some((line, other)) => {
                self.error(
                    &format!("{KEY}.CloseOnTokenExpiry"),
                    line,
                    format!("{} is not true or false", describe(&other)),
                );
                None
            }
        };
        out.options = Some(AuthenticationOptions {
            jwt,
            allowed_scopes,
            close_on_token_expiry,
        });
        out
    }

    /// An object of strings (`{"role": "admin"}`); `null` or absent is empty.
    fn string_map(&mut self, key: &str) -> BTreeMap<String, String> {
        let Some(n) = self.fields.take(key) else {
            return BTreeMap::new();
        };
        match n.value() {
            Value::Null => BTreeMap::new(),
            Value::Object(map) => {
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    match v {
                        Value::String(s) => {
                            out.insert(k, s);
                        }
                        other => self.error(
                            &format!("{key}.{k}"),
                            n.line(),
                            format!("expected a string, found {}", describe(&other)),
                        ),
                    }
                }
                out
            }
            other => {
                self.error(
                    key,
                    n.line(),
                    format!("expected an object of strings, found {}", describe(&other)),
                );
                BTreeMap::new()
            }
        }
    }
}

/// A provider file: a YAML (or JSON) `jwt` block; its `jwksFile` is made relative to the
/// provider file's folder.
fn read_provider(file: &Path) -> Result<JwtOptions, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut jwt: JwtOptions = serde_yaml::from_str(&text).map_err(|e| {
        format!(
            "{}: not a `jwt` block (issuer, audiences, jwksFile, leeway): {e}",
            file.display()
        )
    })?;
    if jwt.jwks_secret_name.is_some() {
        return Err(format!(
            "{}: `jwksSecretName` needs a cluster; set `jwksFile`",
            file.display()
        ));
    }
    if let Some(jwks) = &jwt.jwks_file {
        // Absolute, so that it does not depend on where the routes file is.
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let base = file.parent().unwrap_or(Path::new(""));
        jwt.jwks_file = Some(base.join(jwks).to_string_lossy().into_owned());
    }
    Ok(jwt)
}
