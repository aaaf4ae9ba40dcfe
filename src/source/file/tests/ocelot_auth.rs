//! ocelot.json's `AuthenticationOptions` with a provider given by `--jwt-provider`, and
//! `RouteClaimsRequirement` / `AddHeadersToRequest`.

use super::*;
use crate::model::ProblemReason;

const JWKS: &str = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

fn ocelot_with_auth(auth: &str) -> String {
    format!(
        r#"{{"Routes": [{{
  "UpstreamPathTemplate": "/chat/{{room}}",
  "DownstreamPathTemplate": "/{{room}}",
  "DownstreamScheme": "ws",
  "DownstreamHostAndPorts": [{{ "Host": "127.0.0.1", "Port": 5001 }}],
  {auth}
}}]}}"#
    )
}

/// A provider file in `dir` (its JWKS in `dir/keys/`), registered as `chat`.
fn provider(dir: &Path, jwks: Option<&str>) -> FileOptions {
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    if let Some(jwks) = jwks {
        std::fs::write(dir.join("keys/jwks.json"), jwks).unwrap();
    }
    let file = dir.join("chat-provider.yaml");
    std::fs::write(
        &file,
        "issuer: https://id.example.com\naudiences: [chat]\njwksFile: keys/jwks.json\nleeway: 5s\n",
    )
    .unwrap();
    FileOptions {
        jwt_providers: [("chat".to_string(), file)].into(),
    }
}

fn load_with_options(text: &str, options: &FileOptions) -> LoadedRoutes {
    parse_files_with(
        vec![(PathBuf::from("ocelot.json"), Ok(text.as_bytes().to_vec()))],
        options,
    )
    .unwrap()
}

/// The provider's settings, Ocelot's scopes, claims and claim headers become the route's
/// authentication; the provider file is watched with the routes.
#[test]
fn provider_key_names_the_jwt_settings_given_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let options = provider(dir.path(), Some(JWKS));
    let text = ocelot_with_auth(
        r#""AuthenticationOptions": { "AuthenticationProviderKey": "chat", "AllowedScopes": ["chat"], "CloseOnTokenExpiry": true },
  "RouteClaimsRequirement": { "role": "admin" },
  "AddHeadersToRequest": { "X-User-Id": "Claims[sub] > value" }"#,
    );
    let loaded = load_with_options(&text, &options);
    assert_eq!(summary(&loaded), []);
    let auth = loaded.routes[0].authentication.clone().unwrap();
    assert_eq!(auth.issuer.as_deref(), Some("https://id.example.com"));
    assert_eq!(auth.audiences, ["chat"]);
    assert_eq!(auth.allowed_scopes, ["chat"]);
    assert!(auth.close_on_token_expiry);
    assert_eq!(auth.required_claims, [("role".into(), "admin".into())]);
    assert_eq!(auth.claim_headers[0].header, "x-user-id");
    assert!(auth.jwks.is_ok(), "{:?}", auth.jwks);
    assert!(loaded.tls_files.contains(&options.jwt_providers["chat"]));
    // Ocelot's newer list form with one provider is the same.
    let list =
        ocelot_with_auth(r#""AuthenticationOptions": { "AuthenticationProviderKeys": ["chat"] }"#);
    assert!(load_with_options(&list, &options).routes[0]
        .authentication
        .is_some());
}

/// An unknown provider, several providers, or claims without authentication leave the
/// route out, naming the key; a provider whose key set cannot be read keeps the route
/// (refusing every request) with an `InvalidAuthRef` warning.
#[test]
fn provider_mistakes_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let options = provider(dir.path(), None);
    for (auth, field) in [
        (
            r#""AuthenticationOptions": { "AuthenticationProviderKey": "other" }"#,
            "Routes[0].AuthenticationOptions.AuthenticationProviderKey",
        ),
        (
            r#""AuthenticationOptions": { "AuthenticationProviderKeys": ["chat", "b"] }"#,
            "Routes[0].AuthenticationOptions.AuthenticationProviderKey",
        ),
        (
            r#""RouteClaimsRequirement": { "role": "admin" }"#,
            "Routes[0].RouteClaimsRequirement",
        ),
    ] {
        let loaded = load_with_options(&ocelot_with_auth(auth), &options);
        assert!(loaded.routes.is_empty(), "{auth}");
        assert_eq!(summary(&loaded), [(Severity::Error, None, field)], "{auth}");
    }
    let loaded = load_with_options(
        &ocelot_with_auth(r#""AuthenticationOptions": { "AuthenticationProviderKey": "chat" }"#),
        &options,
    );
    assert_eq!(loaded.routes.len(), 1);
    let p = &loaded.problems[0];
    assert_eq!(p.severity, Severity::Warning);
    assert_eq!(p.reason, Some(ProblemReason::InvalidAuthRef));
    assert!(p.message.contains("jwks.json"), "{p}");
    assert!(loaded.routes[0]
        .authentication
        .as_ref()
        .unwrap()
        .jwks
        .is_err());
}
