//! Why a route is left out, in the terms its status and `wsgate check` report: one reason
//! per kind of mistake, the field path (`spec.upstreamHost`) and a message. Produced by
//! validation (`route_from_spec`) and by `table::compile`; consumed by both sources.

use super::RouteId;
use crate::api::conditions::{accepted, resolved_refs};

/// The condition reason a problem is reported under (`Accepted`, but `ResolvedRefs` for
/// `InvalidAuthRef`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemReason {
    /// A path template cannot be parsed, or the downstream template uses a placeholder the
    /// upstream one does not capture.
    InvalidTemplate,
    /// `upstreamHost` is not a host pattern (`chat.example.com`, `*.example.com`, `:port`).
    InvalidHost,
    /// Any other field is invalid (method, balancer, timeout, servicePort...).
    InvalidParameters,
    /// Another route with the same host, template and an overlapping method was declared
    /// first.
    Conflicted,
    /// The route's key set (`jwksFile`, `jwksSecretName`) is missing or not a usable JWKS.
    /// The route is kept and refuses every request with 401 (fail closed); reported under
    /// `ResolvedRefs`.
    InvalidAuthRef,
}

impl ProblemReason {
    /// The `api::conditions::accepted` const this reason is written as.
    pub fn condition_reason(self) -> &'static str {
        match self {
            ProblemReason::InvalidTemplate => accepted::INVALID_TEMPLATE,
            ProblemReason::InvalidHost => accepted::INVALID_HOST,
            ProblemReason::InvalidParameters => accepted::INVALID_PARAMETERS,
            ProblemReason::Conflicted => accepted::CONFLICTED,
            ProblemReason::InvalidAuthRef => resolved_refs::INVALID_AUTH_REF,
        }
    }
}

impl std::fmt::Display for ProblemReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.condition_reason())
    }
}

/// Why one route was left out of the table; becomes a status condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{route}: {field}: {reason}: {message}")]
pub struct RouteProblem {
    pub route: RouteId,
    pub reason: ProblemReason,
    pub field: String,
    pub message: String,
}
