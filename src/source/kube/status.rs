//! Pure status computation: one route's report + the table's verdict → `WsRouteStatus`
//! with Gateway-API-style conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::index::{BackendRef, RouteReport};
use super::resolve::Unresolved;
use crate::api::conditions::{accepted, insecure_backend_tls, programmed, resolved_refs, status};
use crate::api::WsRouteStatus;
use crate::model::{ProblemReason, RouteProblem};

/// The status a route should carry. `problems` are the table's problems for this route;
/// `programmed_generation` is the table generation serving now (`None` before the first
/// publish). A condition whose status, reason and message equal the previous one keeps its
/// `lastTransitionTime`; others get `now`.
pub fn compute_status(
    report: &RouteReport,
    problems: &[&RouteProblem],
    programmed_generation: Option<u64>,
    now: Time,
) -> WsRouteStatus {
    let generation = report.generation;
    let mut conditions = Vec::with_capacity(4);

    let (accepted_ok, reason, message) = accepted_condition(report, problems);
    conditions.push((accepted::TYPE, accepted_ok, reason, message));

    let (ok, reason, message) = match &report.backend {
        BackendRef::Static => (
            true,
            resolved_refs::RESOLVED_REFS,
            "static backends".to_string(),
        ),
        BackendRef::Service => (
            true,
            resolved_refs::RESOLVED_REFS,
            "Service and port resolved".to_string(),
        ),
        BackendRef::Unresolved(e @ Unresolved::PortNotFound { .. }) => {
            (false, resolved_refs::PORT_NOT_FOUND, e.to_string())
        }
        BackendRef::Unresolved(e) => (false, resolved_refs::BACKEND_NOT_FOUND, e.to_string()),
    };
    let (ok, reason, message) = match (ok, report.certificate_problems.is_empty()) {
        (_, true) => (ok, reason, message),
        (true, false) => (
            false,
            resolved_refs::INVALID_CERTIFICATE_REF,
            join(report.certificate_problems.iter().cloned()),
        ),
        (false, false) => (
            false,
            reason,
            join(std::iter::once(message).chain(report.certificate_problems.iter().cloned())),
        ),
    };
    let (ok, reason, message) = match (ok, report.auth_problems.is_empty()) {
        (_, true) => (ok, reason, message),
        (true, false) => (
            false,
            resolved_refs::INVALID_AUTH_REF,
            join(report.auth_problems.iter().cloned()),
        ),
        (false, false) => (
            false,
            reason,
            join(std::iter::once(message).chain(report.auth_problems.iter().cloned())),
        ),
    };
    conditions.push((resolved_refs::TYPE, ok, reason, message));

    let (ok, reason, message) = match (accepted_ok, programmed_generation) {
        (true, Some(_)) => (
            true,
            programmed::PROGRAMMED,
            "the data plane serves this route".to_string(),
        ),
        (true, None) => (
            false,
            programmed::PENDING,
            "waiting for the first route table".to_string(),
        ),
        (false, _) => (
            false,
            programmed::INVALID,
            "not in the route table: the route is not accepted".to_string(),
        ),
    };
    conditions.push((programmed::TYPE, ok, reason, message));
    if report.insecure_backend_tls {
        conditions.push((
            insecure_backend_tls::TYPE,
            true,
            insecure_backend_tls::DANGEROUS_ACCEPT_ANY,
            "backend certificates are not verified: anyone on the network path to the backends can read and change this route's traffic".to_string(),
        ));
    }

    let previous = report.previous.as_ref();
    WsRouteStatus {
        observed_generation: generation,
        ready_endpoints: report.ready_endpoints,
        conditions: conditions
            .into_iter()
            .map(|(type_, ok, reason, message)| {
                let status = if ok { status::TRUE } else { status::FALSE };
                let kept = previous
                    .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
                    .filter(|c| c.status == status && c.reason == reason && c.message == message)
                    .map(|c| c.last_transition_time.clone());
                Condition {
                    type_: type_.to_string(),
                    status: status.to_string(),
                    reason: reason.to_string(),
                    message,
                    observed_generation: generation,
                    last_transition_time: kept.unwrap_or_else(|| now.clone()),
                }
            })
            .collect(),
    }
}

fn accepted_condition(
    report: &RouteReport,
    problems: &[&RouteProblem],
) -> (bool, &'static str, String) {
    if !report.field_errors.is_empty() {
        // One reason for the condition: a template problem first, then a host problem,
        // else the generic one; the message lists every field.
        let reason = [ProblemReason::InvalidTemplate, ProblemReason::InvalidHost]
            .into_iter()
            .find(|r| report.field_errors.iter().any(|e| e.reason == *r))
            .unwrap_or(ProblemReason::InvalidParameters);
        return (
            false,
            reason.condition_reason(),
            join(report.field_errors.iter().map(|e| e.to_string())),
        );
    }
    // A conflict outranks a template problem: fixing the template would not admit the route.
    let mut sorted: Vec<&&RouteProblem> = problems.iter().collect();
    sorted.sort_by_key(|p| p.reason != ProblemReason::Conflicted);
    match sorted.first() {
        None => (true, accepted::ACCEPTED, "route is valid".to_string()),
        Some(p) => {
            let reason = p.reason.condition_reason();
            let msg = join(
                sorted
                    .iter()
                    .filter(|q| q.reason == p.reason)
                    .map(|q| format!("{}: {}", q.field, q.message)),
            );
            (false, reason, msg)
        }
    }
}

/// Condition messages are bounded (32 KiB in the API); a route with very many problems
/// gets the first ones.
fn join(parts: impl Iterator<Item = String>) -> String {
    let mut out = String::new();
    for part in parts {
        if out.len() + part.len() > 1024 {
            out.push_str("; …");
            break;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&part);
    }
    out
}

/// Whether two statuses say the same thing, ignoring `lastTransitionTime`.
pub fn same_ignoring_timestamps(a: &WsRouteStatus, b: &WsRouteStatus) -> bool {
    let strip = |s: &WsRouteStatus| {
        let mut conditions: Vec<_> = s
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                    c.observed_generation,
                )
            })
            .collect();
        conditions.sort();
        (s.observed_generation, s.ready_endpoints, conditions)
    };
    strip(a) == strip(b)
}
