//! `WsRouteSpec` → `Route`: every field checked, every problem reported with its path.

use super::{parse_duration, Endpoint, LoadBalancer, Route, RouteId, Scheme, Timeouts};
use crate::api::{DownstreamScheme, WsRouteSpec};

/// One problem with one field of a route, named by its path (`spec.servicePort`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
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
            errors.push(FieldError::new(
                field,
                format!("`{value}` must start with `/`"),
            ));
        }
    }

    let upstream_host = match spec.upstream_host.as_deref().map(str::trim) {
        None => None,
        Some(h) => match check_host_pattern(h) {
            Ok(()) => Some(h.to_ascii_lowercase()),
            Err(message) => {
                errors.push(FieldError::new("spec.upstreamHost", message));
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

    let load_balancer = match spec
        .load_balancer_options
        .as_ref()
        .and_then(|o| o.kind.as_deref())
    {
        None | Some("NoLoadBalancer") => LoadBalancer::NoLoadBalancer,
        Some("RoundRobin") => LoadBalancer::RoundRobin,
        Some("LeastConnection") => LoadBalancer::LeastConnection,
        Some(other) => {
            errors.push(FieldError::new(
                "spec.loadBalancerOptions.type",
                format!("`{other}` is not a load balancer wsgate has; use NoLoadBalancer, RoundRobin or LeastConnection"),
            ));
            LoadBalancer::NoLoadBalancer
        }
    };

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
        insecure_skip_verify,
        timeouts,
    })
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

/// `chat.example.com`, `*.example.com`, either with an optional `:port`.
fn check_host_pattern(h: &str) -> Result<(), String> {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || h.starts_with('[') => (n, Some(p)),
        _ => (h, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("`{h}`: `{p}` is not a port"));
        }
    }
    let bare = name.strip_prefix("*.").unwrap_or(name);
    if bare.is_empty()
        || bare.contains('*')
        || !bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
    {
        return Err(format!(
            "`{h}` is not a host: use a name like `chat.example.com`, a wildcard like `*.example.com`, optionally with `:port`"
        ));
    }
    Ok(())
}
