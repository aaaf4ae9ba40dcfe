//! Authentication fields of a route (issue 20, item 4), with Ocelot's names:
//! `authenticationOptions` (a JWT verified by wsgate, `allowedScopes`), and at the route's
//! top level `routeClaimsRequirement` and `addHeadersToRequest`.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Who may use the route: a JWT wsgate verifies on every handshake and plain HTTP request
/// (Ocelot's `AuthenticationOptions`, with the provider's settings inline).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthenticationOptions {
    /// How tokens are verified.
    pub jwt: JwtOptions,
    /// Every listed scope must be in the token's `scope` (space-separated) or `scp` claim
    /// (Ocelot's `AllowedScopes`); otherwise 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_scopes: Vec<String>,
    /// Close a live WebSocket when its token expires (Close 1008 to the client, 1001 to the
    /// backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_on_token_expiry: Option<bool>,
}

/// JWT settings: who issues tokens, for whom, and the keys that sign them.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema, Default)]
#[x_kube(
    validation = Rule::new("has(self.jwksFile) != has(self.jwksSecretName)")
        .message("set jwksSecretName (cluster) or jwksFile (standalone)")
        .reason(Reason::FieldValueInvalid)
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtOptions {
    /// Required `iss` of every token. Absent: any issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub issuer: Option<String>,
    /// The token's `aud` must contain one of these. Empty: any audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Standalone: a JWKS (RFC 7517) file, relative to the routes file; watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub jwks_file: Option<String>,
    /// Cluster: a Secret in the route's namespace whose key `jwks.json` holds the JWKS;
    /// watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub jwks_secret_name: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub leeway: Option<String>,
}
