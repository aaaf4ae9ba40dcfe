//! `compile`: routes in, immutable table and per-route problems out.

use std::collections::HashMap;

use super::find::HostIndex;
use super::host::HostPattern;
use super::template::{DownstreamTemplate, UpstreamTemplate};
use super::{CompileContext, CompiledRoute, ProblemReason, RouteProblem, RouteTable};
use crate::balance::Balancer;
use crate::model::Route;

const UPSTREAM_FIELD: &str = "spec.upstreamPathTemplate";
const DOWNSTREAM_FIELD: &str = "spec.downstreamPathTemplate";
const HOST_FIELD: &str = "spec.upstreamHost";

struct Parsed<'a> {
    route: &'a Route,
    host: Option<HostPattern>,
    upstream: UpstreamTemplate,
    downstream: DownstreamTemplate,
}

fn problem(route: &Route, reason: ProblemReason, field: &str, message: String) -> RouteProblem {
    RouteProblem {
        route: route.id.clone(),
        reason,
        field: field.to_string(),
        message,
    }
}

fn parse(route: &Route) -> Result<Parsed<'_>, Vec<RouteProblem>> {
    let invalid = |field, message| problem(route, ProblemReason::InvalidTemplate, field, message);
    let mut problems = Vec::new();
    let host = match route.upstream_host.as_deref().map(HostPattern::parse) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(m)) => {
            problems.push(invalid(HOST_FIELD, m));
            None
        }
    };
    let templates = UpstreamTemplate::parse(&route.upstream_path_template, route.case_sensitive)
        .map_err(|m| invalid(UPSTREAM_FIELD, m))
        .and_then(|up| {
            DownstreamTemplate::parse(&route.downstream_path_template, &up.names)
                .map(|down| (up, down))
                .map_err(|m| invalid(DOWNSTREAM_FIELD, m))
        });
    match templates {
        Ok((upstream, downstream)) if problems.is_empty() => Ok(Parsed {
            route,
            host,
            upstream,
            downstream,
        }),
        Ok(_) => Err(problems),
        Err(p) => {
            problems.insert(0, p);
            Err(problems)
        }
    }
}

/// Both routes would answer the same requests: same host pattern (checked by the caller),
/// same template up to placeholder names (and case unless both are case-sensitive), and a
/// method in common.
fn conflicts(a: &Parsed, b: &Parsed) -> bool {
    let same_template = if a.route.case_sensitive && b.route.case_sensitive {
        a.upstream.normalized == b.upstream.normalized
    } else {
        a.upstream
            .normalized
            .eq_ignore_ascii_case(&b.upstream.normalized)
    };
    let (ma, mb) = (&a.route.methods, &b.route.methods);
    same_template && (ma.is_empty() || mb.is_empty() || ma.iter().any(|m| mb.contains(m)))
}

/// Pure: no I/O, no clocks. Invalid routes are left out and reported; the rest form the table.
///
/// Routes are taken in declaration order (`order`, then id), whatever the order of the
/// slice, so the table and the problems do not depend on how a source listed them. Of two
/// conflicting routes the one declared first stays.
pub fn compile(
    generation: u64,
    routes: &[Route],
    ctx: &CompileContext,
) -> (RouteTable, Vec<RouteProblem>) {
    let mut sorted: Vec<&Route> = routes.iter().collect();
    sorted.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.id.cmp(&b.id)));

    let mut problems = Vec::new();
    let mut accepted: Vec<Parsed> = Vec::with_capacity(sorted.len());
    let mut groups: HashMap<(Option<HostPattern>, String), Vec<usize>> = HashMap::new();
    for route in sorted {
        let parsed = match parse(route) {
            Ok(p) => p,
            Err(mut ps) => {
                problems.append(&mut ps);
                continue;
            }
        };
        let key = (
            parsed.host.clone(),
            parsed.upstream.normalized.to_ascii_lowercase(),
        );
        let group = groups.entry(key).or_default();
        if let Some(&winner) = group.iter().find(|&&w| conflicts(&accepted[w], &parsed)) {
            let winner = accepted[winner].route;
            problems.push(problem(
                route,
                ProblemReason::Conflicted,
                UPSTREAM_FIELD,
                format!(
                    "`{}` is already served by `{}` (same host, template and method, declared first with order {})",
                    route.upstream_path_template, winner.id, winner.order
                ),
            ));
            continue;
        }
        group.push(accepted.len());
        accepted.push(parsed);
    }

    let mut index = HostIndex::default();
    let compiled = accepted
        .into_iter()
        .enumerate()
        .map(|(idx, p)| {
            index.insert(idx, p.host.as_ref(), p.upstream.first_literal.as_deref());
            CompiledRoute {
                balancer: Balancer::new(&p.route.load_balancer, &p.route.endpoints, ctx.loads),
                metrics: ctx.metrics.route(&p.route.id.0),
                route: p.route.clone(),
                upstream: p.upstream,
                downstream: p.downstream,
            }
        })
        .collect();
    (
        RouteTable {
            generation,
            routes: compiled,
            index,
        },
        problems,
    )
}
