//! Ocelot's ocelot.json: each entry of `Routes` (older files: `ReRoutes`) becomes a
//! `WsRouteSpec` and goes through the same validation as a WsRoute document.
//!
//! Keys are matched case-insensitively and scalars are converted the way .NET's
//! configuration binder does (`"Port": "5001"` is a port). Ocelot keys wsgate does not
//! support are reported one by one: as warnings when ignoring them is harmless (the route
//! is kept), as errors when ignoring them would open or widen the route (authentication,
//! header matching: the route is left out). A key whose value is empty
//! (`{}`, `[]`, `""`, `0`, `false`, `null`, or an object of such values) does nothing in
//! Ocelot either and is accepted silently, so files generated from Ocelot's full route
//! template load without noise.

use serde_json::Value;

use super::json::{Doc, Node};
use super::{FileCtx, FileProblem, LoadedRoutes, Severity};
use crate::api::{
    DownstreamScheme, HostAndPort, LimitsSpec, LoadBalancerOptions, RateLimitOptionsSpec,
    SecurityOptions, WsRouteSpec,
};
use crate::model::{route_from_spec, FieldError, ProblemReason, RouteId, SpecBackends};

mod auth;

pub(super) fn is_routes_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("Routes") || key.eq_ignore_ascii_case("ReRoutes")
}

const IGNORED: &str = "not supported by wsgate and ignored; remove it or see README";

/// Route keys wsgate cannot honour and that would make the route more open than written.
const FAIL_CLOSED_ROUTE_KEYS: &[(&str, &str)] = &[
    (
        "UpstreamHeaderTemplates",
        "wsgate does not route on headers, so this route would take requests meant for others; it is left out",
    ),
];

/// Route keys of Ocelot's schema that wsgate ignores (with a warning when set).
const WARN_ROUTE_KEYS: &[&str] = &[
    "AddClaimsToRequest",
    "AddQueriesToRequest",
    "CacheOptions",
    "ChangeDownstreamPathTemplate",
    "ConnectionClose",
    "DelegatingHandlers",
    "DownstreamHeaderTransform",
    "DownstreamHttpMethod",
    "DownstreamHttpVersion",
    "DownstreamHttpVersionPolicy",
    "FileCacheOptions",
    "HttpHandlerOptions",
    "Metadata",
    "QoSOptions",
    "RateLimitRule",
    "RequestIdKey",
    "ServiceNamespace",
    "SwaggerKey",
    "Timeout",
    "UpstreamHeaderTransform",
    "UseServiceDiscovery",
];

const FAIL_CLOSED_GLOBAL_KEYS: &[(&str, &str)] = &[
    (
        "AuthenticationOptions",
        "wsgate does not authenticate requests, so every route of this file would be open to anyone; all of them are left out",
    ),
    (
        "SecurityOptions",
        "wsgate reads SecurityOptions on each route, not as a global default, so every route of this file would accept every client; all of them are left out. Set SecurityOptions on each route",
    ),
];

/// Global keys that set defaults for routes; wsgate reads each route on its own.
const PER_ROUTE_GLOBAL_KEYS: &[&str] = &["DownstreamScheme", "LoadBalancerOptions"];

pub(super) fn load(file: &FileCtx<'_>, text: &str, out: &mut LoadedRoutes) {
    let whole = |severity, line, field: &str, message: String| {
        file.problem(severity, None, None, line, field, message)
    };
    let doc = match Doc::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let message = e.to_string();
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.as_str(), |(m, _)| m);
            out.problems.push(whole(
                Severity::Error,
                Some(e.line()).filter(|&l| l > 0),
                "",
                format!("not valid JSON: {message}"),
            ));
            return;
        }
    };
    let Some(entries) = doc.root().and_then(|r| r.entries()) else {
        out.problems.push(whole(
            Severity::Error,
            Some(1),
            "",
            "ocelot.json must be a JSON object with `Routes`".into(),
        ));
        return;
    };

    let mut top = Fields::new(file, entries, "", None);
    let routes = top.take("Routes");
    let reroutes = top.take("ReRoutes");
    let global = top.take("GlobalConfiguration");
    let (section, routes) = match (routes, reroutes) {
        (Some(r), Some(old)) => {
            top.problems.push(
                top.warn(
                    "ReRoutes",
                    old.line(),
                    "ignored because `Routes` is present (Ocelot 16 and later read only `Routes`)"
                        .into(),
                ),
            );
            ("Routes", r)
        }
        (Some(r), None) => ("Routes", r),
        (None, Some(old)) => ("ReRoutes", old),
        // `detect` only sends files with one of the two keys here.
        (None, None) => return,
    };
    for key in ["DynamicRoutes", "Aggregates"] {
        if let Some(node) = top.take(key) {
            if !is_empty(&node.value()) {
                top.problems
                    .push(top.warn(key, node.line(), IGNORED.into()));
            }
        }
    }
    for (key, node) in top.rest() {
        top.problems
            .push(top.warn(&key, node.line(), "unknown key; ignored".into()));
    }
    out.problems.append(&mut top.problems);

    let global_closed = global.is_some_and(|g| check_global(file, g, out));

    let Some(items) = routes.items() else {
        out.problems.push(whole(
            Severity::Error,
            routes.line(),
            section,
            format!(
                "must be a list of routes, found {}",
                describe(&routes.value())
            ),
        ));
        return;
    };
    for (i, node) in items.into_iter().enumerate() {
        let path = format!("{section}[{i}]");
        let id = RouteId(format!("{}#{path}", file.label));
        let mut reader = RouteReader::new(file, node, &path);
        if global_closed {
            reader.error(
                "",
                node.line(),
                "left out because of GlobalConfiguration (see the error there)".into(),
            );
        }
        let spec = reader.read();
        out.problems.append(&mut reader.fields.problems);
        out.tls_files.extend(reader.provider_file.take());
        let Some(spec) = spec.filter(|_| !reader.failed) else {
            continue;
        };
        match route_from_spec(id, file.order_base + i as u64, &spec, SpecBackends::Static) {
            Ok(mut route) => {
                if let Some(p) = super::jwks::resolve(file.path, &mut route, &mut out.tls_files) {
                    // The key set of the provider: the route stays, refusing every request.
                    let field = format!("{path}.AuthenticationOptions.AuthenticationProviderKey");
                    let line = node.line();
                    let mut problem = reader.fields.problem(
                        if p.route_kept {
                            Severity::Warning
                        } else {
                            Severity::Error
                        },
                        line,
                        &field,
                        p.message,
                    );
                    problem.reason = Some(ProblemReason::InvalidAuthRef);
                    out.problems.push(problem);
                    if !p.route_kept {
                        continue;
                    }
                }
                if route.insecure_skip_verify {
                    let segs =
                        spec_path_to_ocelot("spec.dangerousAcceptAnyServerCertificateValidator");
                    let line = line_at(node, &segs).or(node.line());
                    out.problems.push(reader.fields.problem(
                        Severity::Warning,
                        line,
                        &segs_to_string(&path, &segs),
                        "backend certificates of this route are NOT verified: anyone on the network path to the backend can read and change its traffic".into(),
                    ));
                }
                out.routes.push(route)
            }
            Err(errors) => {
                for FieldError {
                    field,
                    reason,
                    message,
                } in errors
                {
                    let segs = spec_path_to_ocelot(&field);
                    let line = line_at(node, &segs).or(node.line());
                    let mut problem = reader.fields.problem(
                        Severity::Error,
                        line,
                        &segs_to_string(&path, &segs),
                        message,
                    );
                    problem.reason = Some(reason);
                    out.problems.push(problem);
                }
            }
        }
    }
}

/// Reports GlobalConfiguration keys; true when one of them must keep every route out.
fn check_global(file: &FileCtx<'_>, node: Node<'_>, out: &mut LoadedRoutes) -> bool {
    let Some(entries) = node.entries() else {
        if !node.value().is_null() {
            out.problems.push(file.problem(
                Severity::Warning,
                None,
                None,
                node.line(),
                "GlobalConfiguration",
                format!(
                    "expected an object, found {}; ignored",
                    describe(&node.value())
                ),
            ));
        }
        return false;
    };
    let mut fields = Fields::new(file, entries, "GlobalConfiguration", None);
    let mut closed = false;
    // Where the gateway itself is reachable: meaningful to Ocelot's admin API only.
    fields.take("BaseUrl");
    for (key, message) in FAIL_CLOSED_GLOBAL_KEYS {
        if let Some(n) = fields.take(key) {
            if !is_empty(&n.value()) {
                closed = true;
                fields.problems.push(fields.problem(
                    Severity::Error,
                    n.line(),
                    &fields.path(key),
                    (*message).into(),
                ));
            }
        }
    }
    for key in PER_ROUTE_GLOBAL_KEYS {
        if let Some(n) = fields.take(key) {
            if !is_empty(&n.value()) {
                fields.problems.push(fields.warn(
                    key,
                    n.line(),
                    "wsgate does not apply GlobalConfiguration defaults to routes; set it on each route".into(),
                ));
            }
        }
    }
    for (key, n) in fields.rest() {
        if !is_empty(&n.value()) {
            fields
                .problems
                .push(fields.warn(&key, n.line(), IGNORED.into()));
        }
    }
    out.problems.append(&mut fields.problems);
    closed
}

/// Reads one Ocelot route into a spec, collecting problems.
struct RouteReader<'a> {
    node: Node<'a>,
    fields: Fields<'a>,
    /// Set by any error: the route is left out.
    failed: bool,
    /// The `--jwt-provider` file `AuthenticationOptions` named (watched with the routes).
    provider_file: Option<std::path::PathBuf>,
}

impl<'a> RouteReader<'a> {
    fn new(file: &'a FileCtx<'a>, node: Node<'a>, path: &str) -> Self {
        let entries = node.entries();
        let name = entries.as_ref().and_then(|e| {
            let string = |key: &str| {
                e.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .and_then(|(_, n)| n.value().as_str().map(str::to_string))
                    .filter(|s| !s.is_empty())
            };
            string("Key").or_else(|| string("UpstreamPathTemplate"))
        });
        let fields = Fields::new(file, entries.clone().unwrap_or_default(), path, name);
        let mut reader = RouteReader {
            node,
            fields,
            failed: false,
            provider_file: None,
        };
        if entries.is_none() {
            reader.error(
                "",
                node.line(),
                format!("expected a route object, found {}", describe(&node.value())),
            );
        }
        reader
    }

    fn error(&mut self, key: &str, line: Option<usize>, message: String) {
        self.failed = true;
        let field = self.fields.path(key);
        let p = self.fields.problem(Severity::Error, line, &field, message);
        self.fields.problems.push(p);
    }

    fn read(&mut self) -> Option<WsRouteSpec> {
        if self.failed {
            return None;
        }
        let upstream_path_template = self.required_string("UpstreamPathTemplate");
        let downstream_path_template = self.required_string("DownstreamPathTemplate");
        let upstream_host = self.string("UpstreamHost").filter(|h| !h.is_empty());
        let upstream_http_method = self.string_list("UpstreamHttpMethod");
        let route_is_case_sensitive = self.bool("RouteIsCaseSensitive");
        let priority = self.int("Priority");
        let downstream_scheme = self.scheme();
        let service_name = self.string("ServiceName").filter(|s| !s.is_empty());
        let downstream_host_and_ports = self.host_and_ports();
        let load_balancer_options = self.load_balancer();
        let dangerous_accept_any_server_certificate_validator =
            self.bool("DangerousAcceptAnyServerCertificateValidator");
        let limits = self.limits();
        let rate_limit_options = self.rate_limit_options();
        // Names the route for aggregates in Ocelot; here it only names it in problems.
        self.fields.take("Key");
        let auth = self.authentication();
        self.provider_file = auth.provider_file.clone();
        // wsgate's own key, in Ocelot's spelling; an empty list does nothing, as in Ocelot.
        let allowed_origins = Some(self.string_list("AllowedOrigins")).filter(|o| !o.is_empty());
        let security_options = self.security_options();

        for (key, message) in FAIL_CLOSED_ROUTE_KEYS {
            if let Some(n) = self.fields.take(key) {
                if !is_empty(&n.value()) {
                    self.error(key, n.line(), (*message).into());
                }
            }
        }
        for key in WARN_ROUTE_KEYS {
            if let Some(n) = self.fields.take(key) {
                if !is_empty(&n.value()) && !harmless(key, &n.value()) {
                    let w = self.fields.warn(key, n.line(), IGNORED.into());
                    self.fields.problems.push(w);
                }
            }
        }
        for (key, n) in self.fields.rest() {
            let w = self.fields.warn(
                &key,
                n.line(),
                "unknown key (not part of Ocelot's route schema); ignored".into(),
            );
            self.fields.problems.push(w);
        }

        Some(WsRouteSpec {
            upstream_path_template: upstream_path_template?,
            upstream_host,
            upstream_http_method,
            route_is_case_sensitive,
            priority,
            downstream_path_template: downstream_path_template?,
            downstream_scheme,
            service_name,
            service_port: None,
            downstream_host_and_ports,
            load_balancer_options,
            dangerous_accept_any_server_certificate_validator,
            timeouts: None,
            tls: None,
            backend_tls: None,
            limits,
            rate_limit_options,
            authentication_options: auth.options,
            route_claims_requirement: auth.claims,
            add_headers_to_request: auth.headers,
            allowed_origins,
            security_options,
            // Not Ocelot keys: ocelot.json routes drain by the process's default.
            drain: None,
            rebalance: None,
            keepalive: None,
        })
    }

    /// Ocelot's `SecurityOptions`: `IPAllowedList`, `IPBlockedList` (lists of addresses
    /// and CIDR blocks) and `ExcludeAllowedFromBlocked`.
    fn security_options(&mut self) -> Option<SecurityOptions> {
        const KEY: &str = "SecurityOptions";
        let n = self.fields.take(KEY).filter(|n| !n.value().is_null())?;
        let Some(entries) = n.entries() else {
            self.error(
                KEY,
                n.line(),
                format!(
                    "expected {{IPAllowedList, IPBlockedList, ExcludeAllowedFromBlocked}}, found {}",
                    describe(&n.value())
                ),
            );
            return None;
        };
        let mut inner = RouteReader {
            node: n,
            fields: Fields::new(
                self.fields.file,
                entries,
                &self.fields.path(KEY),
                self.fields.name.clone(),
            ),
            failed: false,
            provider_file: None,
        };
        let options = SecurityOptions {
            ip_allowed_list: inner.string_list("IPAllowedList"),
            ip_blocked_list: inner.string_list("IPBlockedList"),
            exclude_allowed_from_blocked: inner.bool("ExcludeAllowedFromBlocked"),
        };
        for (k, n) in inner.fields.rest() {
            let w = inner.fields.warn(
                &k,
                n.line(),
                "unknown key (Ocelot reads IPAllowedList, IPBlockedList and ExcludeAllowedFromBlocked); ignored".into(),
            );
            inner.fields.problems.push(w);
        }
        self.failed |= inner.failed;
        self.fields.problems.append(&mut inner.fields.problems);
        (options != SecurityOptions::default()).then_some(options)
    }

    fn required_string(&mut self, key: &str) -> Option<String> {
        let found = self.fields.take(key);
        match found {
            None => {
                self.error(key, self.node.line(), "required".into());
                None
            }
            Some(n) => match n.value() {
                Value::String(s) => Some(s),
                other => {
                    self.error(
                        key,
                        n.line(),
                        format!("expected a string, found {}", describe(&other)),
                    );
                    None
                }
            },
        }
    }

    fn string(&mut self, key: &str) -> Option<String> {
        let n = self.fields.take(key)?;
        match n.value() {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => {
                self.error(
                    key,
                    n.line(),
                    format!("expected a string, found {}", describe(&other)),
                );
                None
            }
        }
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        self.converted(key, binder_bool, "true or false")
    }

    fn int(&mut self, key: &str) -> Option<i32> {
        self.converted(key, binder_int, "a whole number")
    }

    /// A scalar converted the way .NET's configuration binder does; a value it would
    /// reject is reported as "`<value>` is not <what>".
    fn converted<T>(
        &mut self,
        key: &str,
        convert: fn(&Value) -> Result<Option<T>, ()>,
        what: &str,
    ) -> Option<T> {
        let n = self.fields.take(key)?;
        let v = n.value();
        match convert(&v) {
            Ok(x) => x,
            Err(()) => {
                self.error(key, n.line(), format!("{} is not {what}", describe(&v)));
                None
            }
        }
    }

    fn string_list(&mut self, key: &str) -> Vec<String> {
        let Some(n) = self.fields.take(key) else {
            return Vec::new();
        };
        match n.value() {
            Value::Null => Vec::new(),
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s),
                        other => self.error(
                            &format!("{key}[{i}]"),
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
                    format!("expected a list of strings, found {}", describe(&other)),
                );
                Vec::new()
            }
        }
    }

    fn scheme(&mut self) -> Option<DownstreamScheme> {
        const KEY: &str = "DownstreamScheme";
        let n = self.fields.take(KEY)?;
        let s = match n.value() {
            Value::Null => return None,
            Value::String(s) => s,
            other => {
                self.error(
                    KEY,
                    n.line(),
                    format!("expected `ws` or `wss`, found {}", describe(&other)),
                );
                return None;
            }
        };
        match s.to_ascii_lowercase().as_str() {
            "" | "ws" => Some(DownstreamScheme::Ws),
            "wss" => Some(DownstreamScheme::Wss),
            plain @ ("http" | "https") => {
                let ws = if plain == "http" { "ws" } else { "wss" };
                let w = self.fields.warn(
                    KEY,
                    n.line(),
                    format!("`{s}` read as `{ws}`: WebSocket upgrades go to the backend as {ws}, plain requests as {plain}"),
                );
                self.fields.problems.push(w);
                Some(if ws == "ws" {
                    DownstreamScheme::Ws
                } else {
                    DownstreamScheme::Wss
                })
            }
            _ => {
                self.error(
                    KEY,
                    n.line(),
                    format!("`{s}` is not a scheme wsgate can use: write `ws` or `wss`"),
                );
                None
            }
        }
    }

    fn host_and_ports(&mut self) -> Vec<HostAndPort> {
        const KEY: &str = "DownstreamHostAndPorts";
        let Some(n) = self.fields.take(KEY) else {
            return Vec::new();
        };
        if n.value().is_null() {
            return Vec::new();
        }
        let Some(items) = n.items() else {
            self.error(
                KEY,
                n.line(),
                format!(
                    "expected a list of {{Host, Port}}, found {}",
                    describe(&n.value())
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("{}[{i}]", self.fields.path(KEY));
            let Some(entries) = item.entries() else {
                let field = format!("{KEY}[{i}]");
                self.error(
                    &field,
                    item.line(),
                    format!("expected {{Host, Port}}, found {}", describe(&item.value())),
                );
                continue;
            };
            let mut hp = Fields::new(self.fields.file, entries, &path, self.fields.name.clone());
            let host = hp.take("Host");
            let port = hp.take("Port");
            for (key, n) in hp.rest() {
                let w = hp.warn(
                    &key,
                    n.line(),
                    "unknown key (Ocelot reads only Host and Port); ignored".into(),
                );
                hp.problems.push(w);
            }
            self.fields.problems.append(&mut hp.problems);
            let host = match host.map(|h| (h, h.value())) {
                Some((_, Value::String(s))) => Some(s),
                Some((h, other)) => {
                    self.error(
                        &format!("{KEY}[{i}].Host"),
                        h.line(),
                        format!("expected a host name, found {}", describe(&other)),
                    );
                    None
                }
                None => {
                    self.error(&format!("{KEY}[{i}].Host"), item.line(), "required".into());
                    None
                }
            };
            let port = match port.map(|p| (p, binder_int(&p.value()))) {
                Some((_, Ok(Some(p)))) => Some(p),
                Some((p, _)) => {
                    self.error(
                        &format!("{KEY}[{i}].Port"),
                        p.line(),
                        format!("{} is not a port (1-65535)", describe(&p.value())),
                    );
                    None
                }
                None => {
                    self.error(&format!("{KEY}[{i}].Port"), item.line(), "required".into());
                    None
                }
            };
            if let (Some(host), Some(port)) = (host, port) {
                out.push(HostAndPort { host, port });
            }
        }
        out
    }

    fn load_balancer(&mut self) -> Option<LoadBalancerOptions> {
        const KEY: &str = "LoadBalancerOptions";
        // Ocelot before 13 had a plain `LoadBalancer` string.
        let legacy = self
            .fields
            .take("LoadBalancer")
            .and_then(|n| match n.value() {
                Value::String(s) if !s.is_empty() => Some((n, s)),
                _ => None,
            });
        let mut options = LoadBalancerOptions::default();
        if let Some(n) = self.fields.take(KEY).filter(|n| !n.value().is_null()) {
            let Some(entries) = n.entries() else {
                self.error(
                    KEY,
                    n.line(),
                    format!(
                        "expected {{Type, Key, Expiry}}, found {}",
                        describe(&n.value())
                    ),
                );
                return None;
            };
            let mut lb = Fields::new(
                self.fields.file,
                entries,
                &self.fields.path(KEY),
                self.fields.name.clone(),
            );
            let kind = lb.take("Type");
            let key = lb.take("Key");
            let expiry = lb.take("Expiry");
            for (k, n) in lb.rest() {
                let w = lb.warn(
                    &k,
                    n.line(),
                    "unknown key (Ocelot reads Type, Key and Expiry); ignored".into(),
                );
                lb.problems.push(w);
            }
            self.fields.problems.append(&mut lb.problems);
            match kind.map(|n| (n, n.value())) {
                None | Some((_, Value::Null)) => {}
                Some((_, Value::String(s))) => options.kind = Some(s).filter(|s| !s.is_empty()),
                Some((n, other)) => self.error(
                    &format!("{KEY}.Type"),
                    n.line(),
                    format!("expected a load balancer name, found {}", describe(&other)),
                ),
            }
            match key.map(|n| (n, n.value())) {
                None | Some((_, Value::Null)) => {}
                Some((_, Value::String(s))) => options.key = Some(s).filter(|s| !s.is_empty()),
                Some((n, other)) => self.error(
                    &format!("{KEY}.Key"),
                    n.line(),
                    format!("expected a string, found {}", describe(&other)),
                ),
            }
            if let Some(n) = expiry {
                match binder_int(&n.value()) {
                    Ok(e) => options.expiry = e.map(i64::from),
                    Err(()) => self.error(
                        &format!("{KEY}.Expiry"),
                        n.line(),
                        format!(
                            "{} is not a whole number of milliseconds",
                            describe(&n.value())
                        ),
                    ),
                }
            }
        }
        if let Some((n, s)) = legacy {
            if options.kind.is_none() {
                options.kind = Some(s.clone());
                let w = self.fields.warn(
                    "LoadBalancer",
                    n.line(),
                    format!("old key, read as `LoadBalancerOptions.Type: {s}`"),
                );
                self.fields.problems.push(w);
            } else {
                let w = self.fields.warn(
                    "LoadBalancer",
                    n.line(),
                    "old key, ignored because LoadBalancerOptions.Type is set".into(),
                );
                self.fields.problems.push(w);
            }
        }
        (options != LoadBalancerOptions::default()).then_some(options)
    }
}

impl<'a> RouteReader<'a> {
    /// The object under `key` as `Fields` (with its path), or `None` when absent, `null`
    /// or, for one of Ocelot's sections (`ocelots`), empty (as Ocelot's full route template
    /// writes unused sections: zeros there mean "off"); anything else is an error naming
    /// `what` the object should hold.
    fn section(&mut self, key: &str, what: &str, ocelots: bool) -> Option<Fields<'a>> {
        let n = self.fields.take(key)?;
        if n.value().is_null() || (ocelots && is_empty(&n.value())) {
            return None;
        }
        let Some(entries) = n.entries() else {
            self.error(
                key,
                n.line(),
                format!("expected {what}, found {}", describe(&n.value())),
            );
            return None;
        };
        Some(Fields::new(
            self.fields.file,
            entries,
            &self.fields.path(key),
            self.fields.name.clone(),
        ))
    }

    /// One scalar of a section, converted as .NET's binder does; `None` when absent.
    fn section_value<T>(
        &mut self,
        section: &mut Fields<'a>,
        key: &str,
        convert: fn(&Value) -> Result<Option<T>, ()>,
        what: &str,
    ) -> Option<T> {
        let n = section.take(key)?;
        match convert(&n.value()) {
            Ok(v) => v,
            Err(()) => {
                self.error(
                    &format!("{}.{key}", section.path.rsplit('.').next().unwrap_or("")),
                    n.line(),
                    format!("{} is not {what}", describe(&n.value())),
                );
                None
            }
        }
    }

    /// wsgate's `Limits` (the WsRoute's `limits` in PascalCase).
    fn limits(&mut self) -> Option<LimitsSpec> {
        const KEY: &str = "Limits";
        let mut f = self.section(
            KEY,
            "{MaxMessageBytes, MessagesPerSecond, MessageBurst, MaxConnections, MaxConnectionsPerClient}",
            false,
        )?;
        let whole = "a whole number";
        let spec = LimitsSpec {
            max_message_bytes: self.section_value(&mut f, "MaxMessageBytes", binder_i64, whole),
            messages_per_second: self.section_value(&mut f, "MessagesPerSecond", binder_i64, whole),
            message_burst: self.section_value(&mut f, "MessageBurst", binder_i64, whole),
            max_connections: self.section_value(&mut f, "MaxConnections", binder_i64, whole),
            max_connections_per_client: self.section_value(
                &mut f,
                "MaxConnectionsPerClient",
                binder_i64,
                whole,
            ),
        };
        for (k, n) in f.rest() {
            let w = f.warn(
                &k,
                n.line(),
                "unknown key (wsgate reads MaxMessageBytes, MessagesPerSecond, MessageBurst, MaxConnections and MaxConnectionsPerClient); ignored".into(),
            );
            f.problems.push(w);
        }
        self.fields.problems.append(&mut f.problems);
        Some(spec)
    }

    /// Ocelot's `RateLimitOptions`, counted per client address.
    fn rate_limit_options(&mut self) -> Option<RateLimitOptionsSpec> {
        const KEY: &str = "RateLimitOptions";
        let mut f = self.section(
            KEY,
            "{EnableRateLimiting, Period, PeriodTimespan, Limit, ClientWhitelist}",
            true,
        )?;
        let enable_rate_limiting =
            self.section_value(&mut f, "EnableRateLimiting", binder_bool, "true or false");
        let period = self.section_value(&mut f, "Period", binder_string, "a period such as `1s`");
        let period_timespan =
            self.section_value(&mut f, "PeriodTimespan", binder_f64, "a number of seconds");
        let limit = self.section_value(&mut f, "Limit", binder_i64, "a whole number");
        let mut client_whitelist = Vec::new();
        if let Some(n) = f.take("ClientWhitelist") {
            match n.value() {
                Value::Null => {}
                Value::Array(items) => {
                    for (i, item) in items.into_iter().enumerate() {
                        match item {
                            Value::String(s) => client_whitelist.push(s),
                            other => self.error(
                                &format!("{KEY}.ClientWhitelist[{i}]"),
                                n.line(),
                                format!("expected an address, found {}", describe(&other)),
                            ),
                        }
                    }
                }
                other => self.error(
                    &format!("{KEY}.ClientWhitelist"),
                    n.line(),
                    format!("expected a list of addresses, found {}", describe(&other)),
                ),
            }
        }
        for (k, n) in f.rest() {
            let message = if k.eq_ignore_ascii_case("ClientIdHeader") {
                "wsgate counts requests per client address, not per client id header; ignored"
            } else {
                "not read by wsgate (it reads EnableRateLimiting, Period, PeriodTimespan, Limit and ClientWhitelist); ignored"
            };
            let w = f.warn(&k, n.line(), message.into());
            f.problems.push(w);
        }
        self.fields.problems.append(&mut f.problems);
        Some(RateLimitOptionsSpec {
            enable_rate_limiting,
            period,
            period_timespan,
            limit,
            client_whitelist,
        })
    }
}

/// Entries of one JSON object, taken out by case-insensitive key.
struct Fields<'a> {
    entries: Vec<(String, Node<'a>)>,
    /// Path of the object (`Routes[2]`), prefixed to every key in problems.
    path: String,
    name: Option<String>,
    file: &'a FileCtx<'a>,
    problems: Vec<FileProblem>,
}

impl<'a> Fields<'a> {
    fn new(
        file: &'a FileCtx<'a>,
        entries: Vec<(String, Node<'a>)>,
        path: &str,
        name: Option<String>,
    ) -> Self {
        Fields {
            entries,
            path: path.to_string(),
            name,
            file,
            problems: Vec::new(),
        }
    }

    fn path(&self, key: &str) -> String {
        match (self.path.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.path.clone(),
            (false, false) => format!("{}.{key}", self.path),
        }
    }

    /// Removes every entry whose key matches `key` ignoring case. Given twice, the last wins
    /// (as in .NET's binder) and a warning names the duplicate.
    fn take(&mut self, key: &str) -> Option<Node<'a>> {
        let mut found: Option<Node<'a>> = None;
        let mut i = 0;
        while i < self.entries.len() {
            if self.entries[i].0.eq_ignore_ascii_case(key) {
                let (written, node) = self.entries.remove(i);
                if found.is_some() {
                    let w = self.warn(
                        key,
                        node.line(),
                        format!("`{written}` given again (keys are case-insensitive); the last one is used"),
                    );
                    self.problems.push(w);
                }
                found = Some(node);
            } else {
                i += 1;
            }
        }
        found
    }

    /// The entries nobody took.
    fn rest(&mut self) -> Vec<(String, Node<'a>)> {
        std::mem::take(&mut self.entries)
    }

    fn warn(&self, key: &str, line: Option<usize>, message: String) -> FileProblem {
        self.problem(Severity::Warning, line, &self.path(key), message)
    }

    fn problem(
        &self,
        severity: Severity,
        line: Option<usize>,
        field: &str,
        message: String,
    ) -> FileProblem {
        FileProblem {
            severity,
            file: self.file.path.to_path_buf(),
            document: None,
            name: self.name.clone(),
            line,
            field: field.to_string(),
            reason: None,
            message,
        }
    }
}

/// Values that look set but do nothing.
fn harmless(key: &str, v: &Value) -> bool {
    match key {
        "DownstreamHttpVersion" => v.as_str().is_some_and(|s| s.starts_with("1.")),
        "RateLimitOptions" | "RateLimitRule" => v
            .as_object()
            .and_then(|o| {
                o.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("EnableRateLimiting"))
            })
            .is_some_and(|(_, e)| binder_bool(e) == Ok(Some(false))),
        _ => false,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
    }
}

/// `true`, `"True"`, `"false"`… as .NET's binder reads a bool.
fn binder_bool(v: &Value) -> Result<Option<bool>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
        _ => Err(()),
    }
}

/// `5001` or `"5001"`, as .NET's binder reads an `int`.
fn binder_int(v: &Value) -> Result<Option<i32>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .map(Some)
            .ok_or(()),
        Value::String(s) => s.trim().parse().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

/// A number or a numeric string, as .NET's binder reads a `long`.
fn binder_i64(v: &Value) -> Result<Option<i64>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_i64().map(Some).ok_or(()),
        Value::String(s) => s.trim().parse().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

/// A number or a numeric string, as .NET's binder reads a `double`.
fn binder_f64(v: &Value) -> Result<Option<f64>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n.as_f64().map(Some).ok_or(()),
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(()),
        },
        _ => Err(()),
    }
}

/// A string (`null` and `""` read as absent).
fn binder_string(v: &Value) -> Result<Option<String>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(()),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
        other => format!("`{other}`"),
    }
}

/// One step of a field path in Ocelot's spelling.
enum PathSeg {
    Key(String),
    Index(usize),
}

/// `spec.downstreamHostAndPorts[1].port` → `DownstreamHostAndPorts`, `1`, `Port`.
fn spec_path_to_ocelot(field: &str) -> Vec<PathSeg> {
    let mut segs = Vec::new();
    for part in field.strip_prefix("spec.").unwrap_or(field).split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            let mut chars = key.chars();
            let pascal: String = chars
                .next()
                .map(|c| c.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
                .collect();
            // Ocelot spells these two with `IP`.
            let pascal = match pascal.as_str() {
                "IpAllowedList" => "IPAllowedList".to_string(),
                "IpBlockedList" => "IPBlockedList".to_string(),
                _ => pascal,
            };
            segs.push(PathSeg::Key(pascal));
        }
        for index in pieces {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                segs.push(PathSeg::Index(i));
            }
        }
    }
    segs
}

fn segs_to_string(prefix: &str, segs: &[PathSeg]) -> String {
    let mut s = prefix.to_string();
    for seg in segs {
        match seg {
            PathSeg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Line of the deepest node of `segs` that exists under `node`.
fn line_at(node: Node<'_>, segs: &[PathSeg]) -> Option<usize> {
    let mut current = node;
    for seg in segs {
        let next = match seg {
            PathSeg::Key(k) => current
                .entries()
                .and_then(|e| e.into_iter().find(|(key, _)| key.eq_ignore_ascii_case(k)))
                .map(|(_, n)| n),
            PathSeg::Index(i) => current.items().and_then(|items| items.get(*i).copied()),
        };
        match next {
            Some(n) => current = n,
            None => break,
        }
    }
    current.line()
}
