//! `compile`: routes in, immutable table and per-route problems out.

use std::collections::HashMap;
use std::sync::Arc;

use super::find::HostIndex;
use super::template::{DownstreamTemplate, UpstreamTemplate};
use super::CertificateMap;
use super::{CompileContext, CompiledRoute, RouteTable, UpstreamTls};
use crate::balance::Balancer;
use crate::model::{HostPattern, ProblemReason, Route, RouteProblem, Scheme};

const UPSTREAM_FIELD: &str = "spec.upstreamPathTemplate";
const DOWNSTREAM_FIELD: &str = "spec.downstreamPathTemplate";
const HOST_FIELD: &str = "spec.upstreamHost";

/// A route's host pattern and templates, parsed: depends on the route's text only, so a
/// table generation in which the route is unchanged shares it with the previous one.
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) host: Option<HostPattern>,
    pub(super) upstream: UpstreamTemplate,
    pub(super) downstream: DownstreamTemplate,
    /// The normalized upstream template, lower-cased: with the host, the bucket in which
    /// conflicting routes are looked for.
    conflict_key: String,
}

/// A route of this compile with its parsed templates, and the previous generation's
/// compiled route when the route did not change.
struct Candidate<'a> {
    route: &'a Route,
    parsed: Arc<Parsed>,
    previous: Option<&'a CompiledRoute>,
}

fn problem(route: &Route, reason: ProblemReason, field: &str, message: String) -> RouteProblem {
    RouteProblem {
        route: route.id.clone(),
        reason,
        field: field.to_string(),
        message,
    }
}

/// Parses the host pattern (the parser validation used, so a route from `route_from_spec`
/// always passes it; routes built otherwise may not) and the templates.
fn parse(route: &Route) -> Result<Parsed, Vec<RouteProblem>> {
    let invalid = |field, e: super::TemplateError| {
        problem(route, ProblemReason::InvalidTemplate, field, e.to_string())
    };
    let mut problems = Vec::new();
    let host = match route.upstream_host.as_deref().map(HostPattern::parse) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            problems.push(problem(
                route,
                ProblemReason::InvalidHost,
                HOST_FIELD,
                e.to_string(),
            ));
            None
        }
    };
    let templates = UpstreamTemplate::parse(&route.upstream_path_template, route.case_sensitive)
        .map_err(|e| invalid(UPSTREAM_FIELD, e))
        .and_then(|up| {
            DownstreamTemplate::parse(&route.downstream_path_template, &up.names)
                .map(|down| (up, down))
                .map_err(|e| invalid(DOWNSTREAM_FIELD, e))
        });
    match templates {
        Ok((upstream, downstream)) if problems.is_empty() => Ok(Parsed {
            host,
            conflict_key: upstream.normalized.to_ascii_lowercase(),
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
fn conflicts(a: &Candidate, b: &Candidate) -> bool {
    let same_template = if a.route.case_sensitive && b.route.case_sensitive {
        a.parsed.upstream.normalized == b.parsed.upstream.normalized
    } else {
        a.parsed
            .upstream
            .normalized
            .eq_ignore_ascii_case(&b.parsed.upstream.normalized)
    };
    let (ma, mb) = (&a.route.methods, &b.route.methods);
    same_template && (ma.is_empty() || mb.is_empty() || ma.iter().any(|m| mb.contains(m)))
}

/// Everything `compile` derives from a route is the same for `a` and `b`: they are equal
/// but for `order`, which only ranks the route among others (the table's position does).
fn same_apart_from_order(a: &Route, b: &Route) -> bool {
    // Destructured so that a new `Route` field cannot be forgotten here.
    let Route {
        id,
        order: _,
        upstream_path_template,
        upstream_host,
        methods,
        case_sensitive,
        priority,
        downstream_path_template,
        scheme,
        endpoints,
        load_balancer,
        pin_signalr_connections,
        insecure_skip_verify,
        timeouts,
        certificate,
        backend_tls,
        limits,
        rate_limit,
        authentication,
        allowed_origins,
        ip_rules,
        drain,
        rebalance,
        keepalive,
    } = a;
    *id == b.id
        && *upstream_path_template == b.upstream_path_template
        && *upstream_host == b.upstream_host
        && *methods == b.methods
        && *case_sensitive == b.case_sensitive
        && *priority == b.priority
        && *downstream_path_template == b.downstream_path_template
        && *scheme == b.scheme
        && *endpoints == b.endpoints
        && *load_balancer == b.load_balancer
        && *pin_signalr_connections == b.pin_signalr_connections
        && *insecure_skip_verify == b.insecure_skip_verify
        && *timeouts == b.timeouts
        && *certificate == b.certificate
        && *backend_tls == b.backend_tls
        && *limits == b.limits
        && *rate_limit == b.rate_limit
        && *authentication == b.authentication
        && *allowed_origins == b.allowed_origins
        && *ip_rules == b.ip_rules
        && *drain == b.drain
        && *rebalance == b.rebalance
        && *keepalive == b.keepalive
}

#[cfg(test)]
thread_local! {
    /// Compiles run on this thread: lets a test see how often one reload compiles (per
    /// thread, so tests running in parallel do not count each other's).
    static COMPILES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many compiles this thread has run.
#[cfg(test)]
pub(crate) fn compiles_on_this_thread() -> usize {
    COMPILES.with(std::cell::Cell::get)
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
    compile_from(generation, routes, ctx, &RouteTable::empty())
}

/// `compile`, reusing what `previous` already built for routes that did not change (equal
/// but for `order`): their parsed templates, balancer (so a round-robin turn carries on),
/// metric handles and backend TLS settings. A route whose endpoints, templates or options
/// changed is compiled afresh. The result is the table `compile` would build; `previous`
/// must come from the same `ctx` (its balancers hold `ctx.balance`'s counters).
pub fn compile_from(
    generation: u64,
    routes: &[Route],
    ctx: &CompileContext,
    previous: &RouteTable,
) -> (RouteTable, Vec<RouteProblem>) {
    #[cfg(test)]
    COMPILES.with(|n| n.set(n.get() + 1));
    let mut sorted: Vec<&Route> = routes.iter().collect();
    sorted.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.id.cmp(&b.id)));
    let before: HashMap<&str, &CompiledRoute> = previous
        .routes
        .iter()
        .map(|c| (c.route.id.0.as_str(), c))
        .collect();

    let mut problems = Vec::new();
    let mut candidates: Vec<Candidate> = Vec::with_capacity(sorted.len());
    for route in sorted {
        let unchanged = before
            .get(route.id.0.as_str())
            .copied()
            .filter(|c| same_apart_from_order(&c.route, route));
        let candidate = match unchanged {
            Some(c) => Candidate {
                route,
                parsed: Arc::clone(&c.parsed),
                previous: Some(c),
            },
            None => match parse(route) {
                Ok(parsed) => Candidate {
                    route,
                    parsed: Arc::new(parsed),
                    previous: None,
                },
                Err(mut ps) => {
                    problems.append(&mut ps);
                    continue;
                }
            },
        };
        candidates.push(candidate);
    }

    let mut accepted: Vec<usize> = Vec::with_capacity(candidates.len());
    let mut groups: HashMap<(Option<&HostPattern>, &str), Vec<usize>> = HashMap::new();
    for (at, candidate) in candidates.iter().enumerate() {
        let key = (
            candidate.parsed.host.as_ref(),
            candidate.parsed.conflict_key.as_str(),
        );
        let group = groups.entry(key).or_default();
        if let Some(&winner) = group
            .iter()
            .find(|&&w| conflicts(&candidates[w], candidate))
        {
            let (route, winner) = (candidate.route, candidates[winner].route);
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
        group.push(at);
        accepted.push(at);
    }

    let mut index = HostIndex::default();
    let mut certificates = CertificateMap::default();
    let compiled = accepted
        .into_iter()
        .enumerate()
        .map(|(idx, at)| {
            let Candidate {
                route,
                parsed,
                previous,
            } = &candidates[at];
            index.insert(
                idx,
                parsed.host.as_ref(),
                parsed.upstream.first_literal.as_deref(),
            );
            if let Some(cert) = &route.certificate {
                certificates.insert(parsed.host.as_ref(), cert);
            }
            // Counts outlive a change of the route's options: by id, not by equality.
            let admission = before
                .get(route.id.0.as_str())
                .map_or_else(Arc::default, |c| Arc::clone(&c.admission));
            match previous {
                Some(before) => CompiledRoute {
                    route: if before.route.order == route.order {
                        Arc::clone(&before.route)
                    } else {
                        Arc::new((*route).clone())
                    },
                    balancer: Arc::clone(&before.balancer),
                    metrics: before.metrics.clone(),
                    upstream_tls: before.upstream_tls.clone(),
                    parsed: Arc::clone(parsed),
                    admission,
                },
                None => CompiledRoute {
                    balancer: Arc::new(Balancer::for_route(route, ctx.balance)),
                    metrics: ctx.metrics.route(&route.id.0),
                    upstream_tls: (route.scheme == Scheme::Wss)
                        .then(|| Arc::new(UpstreamTls::new(route, ctx.backend_roots))),
                    route: Arc::new((*route).clone()),
                    parsed: Arc::clone(parsed),
                    admission,
                },
            }
        })
        .collect();
    (
        RouteTable {
            generation,
            routes: compiled,
            index,
            certificates,
            alive: None,
        },
        problems,
    )
}
