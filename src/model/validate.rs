//! `WsRouteSpec` → `Route`: every field checked, every problem reported with its path.

use std::time::Duration;

use super::{
    parse_duration, BackendTls, Endpoint, HashOn, HostPattern, LoadBalancer, ProblemReason, Route,
    RouteId, Scheme, Timeouts,
};
use super::{IpNet, IpRules, OriginPattern};
use crate::api::{DownstreamScheme, WsRouteSpec};
use crate::api::{LoadBalancerOptions, SecurityOptions};

/// One problem with one field of a route, named by its path (`spec.servicePort`), with
/// the reason its `Accepted` condition (and `wsgate check`) reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub reason: ProblemReason,
    pub message: String,
}

impl FieldError {
    /// A problem reported as `InvalidParameters`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_reason(field, ProblemReason::InvalidParameters, message)
    }

    pub fn with_reason(
        field: impl Into<String>,
        reason: ProblemReason,
        message: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            reason,
            message: message.into(),
        }
    }
}

/// Where a route's endpoints come from, decided by the source.
pub enum SpecBackends {
    /// Standalone: only `downstreamHostAndPorts` is allowed.
    Static,
    /// Cluster: the source resolved `serviceName`/`servicePort` (or the static list).
    Resolved(Vec<Endpoint>),
}

/// Validates a spec into a `Route`, or returns every problem found (not just the first).
pub fn route_from_spec(
    id: RouteId,
    order: u64,
    spec: &WsRouteSpec,
    backends: SpecBackends,
) -> Result<Route, Vec<FieldError>> {
    let mut errors = Vec::new();

    for (field, value) in [
        ("spec.upstreamPathTemplate", &spec.upstream_path_template),
        (
            "spec.downstreamPathTemplate",
            &spec.downstream_path_template,
        ),
    ] {
        if !value.starts_with('/') {
            errors.push(FieldError::with_reason(
                field,
                ProblemReason::InvalidTemplate,
                format!("`{value}` must start with `/`"),
            ));
        }
    }

    let upstream_host = match spec.upstream_host.as_deref().map(str::trim) {
        None => None,
        // The table parses the text again with the same parser to match requests.
        Some(h) => match HostPattern::parse(h) {
            Ok(_) => Some(h.to_ascii_lowercase()),
            Err(e) => {
                errors.push(FieldError::with_reason(
                    "spec.upstreamHost",
                    ProblemReason::InvalidHost,
                    e.to_string(),
                ));
                None
            }
        },
    };

    let mut methods = Vec::new();
    for (i, m) in spec.upstream_http_method.iter().enumerate() {
        match http::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
            Ok(method) if !m.trim().is_empty() => methods.push(method),
            _ => errors.push(FieldError::new(
                format!("spec.upstreamHttpMethod[{i}]"),
                format!("`{m}` is not an HTTP method"),
            )),
        }
    }

    let endpoints = match backends {
        SpecBackends::Static => {
            if spec.service_name.is_some() || spec.service_port.is_some() {
                errors.push(FieldError::new(
                    "spec.serviceName",
                    "service discovery needs a cluster; in standalone mode list the backends in `downstreamHostAndPorts`",
                ));
            }
            if spec.downstream_host_and_ports.is_empty() {
                errors.push(FieldError::new(
                    "spec.downstreamHostAndPorts",
                    "at least one backend `{host, port}` is required",
                ));
            }
            static_endpoints(spec, &mut errors)
        }
        SpecBackends::Resolved(endpoints) => {
            let has_service = spec.service_name.is_some();
            let has_static = !spec.downstream_host_and_ports.is_empty();
            if has_service == has_static {
                errors.push(FieldError::new(
                    "spec.serviceName",
                    "set exactly one of `serviceName` and `downstreamHostAndPorts`",
                ));
            }
            endpoints
        }
    };

    let load_balancer = load_balancer(spec.load_balancer_options.as_ref(), &mut errors);
    let pin_signalr_connections = spec
        .load_balancer_options
        .as_ref()
        .and_then(|o| o.pin_signalr_connections)
        .unwrap_or(false);

    let mut timeouts = Timeouts::default();
    if let Some(t) = &spec.timeouts {
        let mut parse =
            |field: &str, value: &Option<String>| match value.as_deref().map(parse_duration) {
                None => None,
                Some(Ok(d)) if !d.is_zero() => Some(d),
                Some(Ok(_)) => {
                    errors.push(FieldError::new(
                        format!("spec.timeouts.{field}"),
                        "must be greater than zero",
                    ));
                    None
                }
                Some(Err(e)) => {
                    errors.push(FieldError::new(
                        format!("spec.timeouts.{field}"),
                        e.to_string(),
                    ));
                    None
                }
            };
        if let Some(d) = parse("connect", &t.connect) {
            timeouts.connect = d;
        }
        if let Some(d) = parse("handshake", &t.handshake) {
            timeouts.handshake = d;
        }
        timeouts.idle = parse("idle", &t.idle);
    }

    let scheme = match spec.downstream_scheme.unwrap_or_default() {
        DownstreamScheme::Ws => Scheme::Ws,
        DownstreamScheme::Wss => Scheme::Wss,
    };
    let insecure_skip_verify = spec
        .dangerous_accept_any_server_certificate_validator
        .unwrap_or(false);

    let mut backend_tls = BackendTls::default();
    if let Some(name) = spec
        .backend_tls
        .as_ref()
        .and_then(|b| b.server_name.as_deref())
    {
        let name = name.trim();
        match rustls::pki_types::ServerName::try_from(name) {
            Ok(_) => backend_tls.server_name = Some(name.to_ascii_lowercase()),
            Err(_) => errors.push(FieldError::new(
                "spec.backendTls.serverName",
                format!("`{name}` is not a DNS name or IP address"),
            )),
        }
    }

    let limits = super::limits::limits(spec.limits.as_ref(), &mut errors);
    let rate_limit = super::limits::rate_limit(spec.rate_limit_options.as_ref(), &mut errors);
    let authentication = super::auth::authentication(spec, &mut errors);
    let allowed_origins = allowed_origins(spec.allowed_origins.as_deref(), &mut errors);
    let ip_rules = ip_rules(spec.security_options.as_ref(), &mut errors);
    let drain = super::drain::drain(spec.drain.as_ref(), &mut errors);
    let rebalance = super::drain::rebalance(spec.rebalance.as_ref(), &mut errors);
    let keepalive = super::keepalive::keepalive(spec.keepalive.as_ref(), &mut errors);

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Route {
        id,
        order,
        upstream_path_template: spec.upstream_path_template.clone(),
        upstream_host,
        methods,
        case_sensitive: spec.route_is_case_sensitive.unwrap_or(false),
        priority: spec.priority.unwrap_or(1),
        downstream_path_template: spec.downstream_path_template.clone(),
        scheme,
        endpoints,
        load_balancer,
        pin_signalr_connections,
        insecure_skip_verify,
        timeouts,
        limits,
        certificate: None,
        backend_tls,
        rate_limit,
        authentication,
        allowed_origins,
        ip_rules,
        drain,
        rebalance,
        keepalive,
    })
}

/// `spec.allowedOrigins`: every pattern parsed, each bad one named by its index; an empty
/// list is a mistake (leave the field out to allow any origin).
fn allowed_origins(
    origins: Option<&[String]>,
    errors: &mut Vec<FieldError>,
) -> Option<Vec<OriginPattern>> {
    let origins = origins?;
    if origins.is_empty() {
        errors.push(FieldError::new(
            "spec.allowedOrigins",
            "lists no origin, so no browser could connect; list at least one, or leave the field out to allow any origin",
        ));
        return None;
    }
    let mut patterns = Vec::with_capacity(origins.len());
    for (i, text) in origins.iter().enumerate() {
        match OriginPattern::parse(text) {
            Ok(p) => patterns.push(p),
            Err(e) => errors.push(FieldError::new(
                format!("spec.allowedOrigins[{i}]"),
                e.to_string(),
            )),
        }
    }
    Some(patterns)
}

/// `spec.securityOptions` (Ocelot's IP lists): every address or block parsed, each bad one
/// named by its list and index. Lists that are both empty leave the route open, as in
/// Ocelot.
fn ip_rules(options: Option<&SecurityOptions>, errors: &mut Vec<FieldError>) -> Option<IpRules> {
    let options = options?;
    let mut parse = |list: &[String], field: &str| {
        let mut nets = Vec::with_capacity(list.len());
        for (i, text) in list.iter().enumerate() {
            match IpNet::parse(text) {
                Ok(net) => nets.push(net),
                Err(e) => errors.push(FieldError::new(
                    format!("spec.securityOptions.{field}[{i}]"),
                    e.to_string(),
                )),
            }
        }
        nets
    };
    let rules = IpRules {
        allowed: parse(&options.ip_allowed_list, "ipAllowedList"),
        blocked: parse(&options.ip_blocked_list, "ipBlockedList"),
        exclude_allowed_from_blocked: options.exclude_allowed_from_blocked.unwrap_or(false),
    };
    (!rules.allowed.is_empty() || !rules.blocked.is_empty()).then_some(rules)
}

/// Ocelot's sticky-session lifetime when `expiry` is absent.
const DEFAULT_STICKY_EXPIRY: Duration = Duration::from_secs(3600);

const LB_FIELD: &str = "spec.loadBalancerOptions";

/// `loadBalancerOptions` → `LoadBalancer`. `key` and `expiry` on a type that does not use
/// them are ignored (Ocelot files carry them with every type); `hashOn` is wsgate's own
/// and only allowed with `ConsistentHash`.
fn load_balancer(
    options: Option<&LoadBalancerOptions>,
    errors: &mut Vec<FieldError>,
) -> LoadBalancer {
    let Some(o) = options else {
        return LoadBalancer::NoLoadBalancer;
    };
    let key = o.key.as_deref().map(str::trim).filter(|k| !k.is_empty());
    let kind = o.kind.as_deref().map(str::trim).filter(|k| !k.is_empty());
    if o.hash_on.is_some() && kind != Some("ConsistentHash") {
        errors.push(FieldError::new(
            format!("{LB_FIELD}.hashOn"),
            "only applies to `type: ConsistentHash`",
        ));
    }
    match kind {
        None | Some("NoLoadBalancer") => LoadBalancer::NoLoadBalancer,
        Some("RoundRobin") => LoadBalancer::RoundRobin,
        Some("LeastConnection") => LoadBalancer::LeastConnection,
        Some("CookieStickySessions") => {
            let expiry = match o.expiry {
                None | Some(0) => DEFAULT_STICKY_EXPIRY,
                Some(ms) if ms > 0 => Duration::from_millis(ms.unsigned_abs()),
                Some(ms) => {
                    errors.push(FieldError::new(
                        format!("{LB_FIELD}.expiry"),
                        format!("{ms} is negative; give milliseconds, e.g. 3600000 for one hour"),
                    ));
                    DEFAULT_STICKY_EXPIRY
                }
            };
            match key {
                Some(k) if is_cookie_name(k) => LoadBalancer::CookieStickySessions {
                    key: k.to_string(),
                    expiry,
                },
                Some(k) => {
                    errors.push(FieldError::new(
                        format!("{LB_FIELD}.key"),
                        format!("`{k}` is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)"),
                    ));
                    LoadBalancer::NoLoadBalancer
                }
                None => {
                    errors.push(FieldError::new(
                        format!("{LB_FIELD}.key"),
                        "CookieStickySessions needs `key`, the name of the cookie",
                    ));
                    LoadBalancer::NoLoadBalancer
                }
            }
        }
        Some("ConsistentHash") => match consistent_hash(o.hash_on.as_deref(), key) {
            Ok(on) => LoadBalancer::ConsistentHash { on },
            Err((field, message)) => {
                errors.push(FieldError::new(format!("{LB_FIELD}.{field}"), message));
                LoadBalancer::NoLoadBalancer
            }
        },
        Some(other) => {
            errors.push(FieldError::new(
                format!("{LB_FIELD}.type"),
                format!("`{other}` is not a load balancer wsgate has; use NoLoadBalancer, RoundRobin, LeastConnection, CookieStickySessions or ConsistentHash"),
            ));
            LoadBalancer::NoLoadBalancer
        }
    }
}

fn consistent_hash(
    hash_on: Option<&str>,
    key: Option<&str>,
) -> Result<HashOn, (&'static str, String)> {
    let named = |what: &str| {
        key.map(str::to_string).ok_or((
            "key",
            format!("`hashOn: {what}` needs `key`, the {what} name to hash"),
        ))
    };
    match hash_on.map(str::trim) {
        None => Err((
            "hashOn",
            "ConsistentHash needs `hashOn`: header, cookie, query or clientIp".into(),
        )),
        Some("clientIp") => Ok(HashOn::ClientIp),
        Some("header") => {
            let name = named("header")?;
            http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map(HashOn::Header)
                .map_err(|_| ("key", format!("`{name}` is not a header name")))
        }
        Some("cookie") => {
            let name = named("cookie")?;
            if is_cookie_name(&name) {
                Ok(HashOn::Cookie(name))
            } else {
                Err(("key", format!("`{name}` is not a cookie name")))
            }
        }
        Some("query") => Ok(HashOn::Query(named("query")?)),
        Some(other) => Err((
            "hashOn",
            format!("`{other}` is not one of header, cookie, query, clientIp"),
        )),
    }
}

/// RFC 6265 cookie-name: an RFC 7230 token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn static_endpoints(spec: &WsRouteSpec, errors: &mut Vec<FieldError>) -> Vec<Endpoint> {
    let mut endpoints = Vec::new();
    for (i, hp) in spec.downstream_host_and_ports.iter().enumerate() {
        let host = hp.host.trim();
        if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
            errors.push(FieldError::new(
                format!("spec.downstreamHostAndPorts[{i}].host"),
                format!("`{}` is not a host name or IP address", hp.host),
            ));
            continue;
        }
        match u16::try_from(hp.port) {
            Ok(port) if port > 0 => endpoints.push(Endpoint::new(host, port)),
            _ => errors.push(FieldError::new(
                format!("spec.downstreamHostAndPorts[{i}].port"),
                format!("{} is not a port (1-65535)", hp.port),
            )),
        }
    }
    endpoints
}
