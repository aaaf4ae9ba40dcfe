//! Condition types and reasons written to `WsRoute.status.conditions`, in Gateway API
//! style. Code and tests compare these consts, never string literals.

/// The route's spec is valid and no older route owns the same host and template.
pub mod accepted {
    pub const TYPE: &str = "Accepted";
    pub const ACCEPTED: &str = "Accepted";
    /// A path template does not parse (or does not start with `/`).
    pub const INVALID_TEMPLATE: &str = "InvalidTemplate";
    /// `upstreamHost` is not a host pattern (empty label, misplaced `*`, bad port...).
    pub const INVALID_HOST: &str = "InvalidHost";
    /// Another field is invalid (method, balancer, timeout, servicePort...).
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    /// An older route already owns the same host and upstream template.
    pub const CONFLICTED: &str = "Conflicted";
}

/// The backend the route points at exists: the Service and the port.
pub mod resolved_refs {
    pub const TYPE: &str = "ResolvedRefs";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// The Service, or every EndpointSlice of it, does not exist.
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// The Service has no port with the number or name of `servicePort`.
    pub const PORT_NOT_FOUND: &str = "PortNotFound";
    /// `tls.secretName` or `backendTls.caSecretName` names a missing or malformed Secret.
    /// The route keeps serving without that certificate.
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    /// `authenticationOptions.jwt.jwksSecretName` names a missing Secret, one without
    /// `jwks.json`, or one whose `jwks.json` is not a usable JWKS. The route keeps its place
    /// and refuses every request with 401 (fail closed).
    pub const INVALID_AUTH_REF: &str = "InvalidAuthRef";
}

/// Present (True) only while the route skips verification of its `wss` backends
/// (`dangerousAcceptAnyServerCertificateValidator: true`), so `kubectl describe` shows it.
pub mod insecure_backend_tls {
    pub const TYPE: &str = "wsgate.io/InsecureBackendTLS";
    pub const DANGEROUS_ACCEPT_ANY: &str = "DangerousAcceptAnyServerCertificateValidator";
}

/// The data plane serves this generation of the route.
pub mod programmed {
    pub const TYPE: &str = "Programmed";
    pub const PROGRAMMED: &str = "Programmed";
    /// Accepted, but no route table has been published yet.
    pub const PENDING: &str = "Pending";
    /// The route is not accepted, so it is not in the route table.
    pub const INVALID: &str = "Invalid";
}

/// Condition `status` values.
pub mod status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
}
