//! The reflector stores → the plain model. `translate` is pure: a snapshot of WsRoutes,
//! Services and EndpointSlices in, `Vec<Route>` plus one status input per WsRoute out.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;

use super::resolve::{Backends, Unresolved};
use super::secrets::{self, Secrets};
use crate::api::{WsRoute, WsRouteSpec, WsRouteStatus};
use crate::model::{
    route_from_spec, EndpointState, FieldError, Route, RouteId, Scheme, ServerCertificate,
    SpecBackends,
};

/// A WsRoute as the store holds it: `Err` when the object does not deserialize (a wrong
/// type the schema let through, a field from a newer CRD), so one bad object cannot fail
/// the whole list and stall every route.
pub type GuardedRoute = DeserializeGuard<WsRoute>;

/// A WsRoute that could not be read, with the deserializer's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidRoute {
    pub namespace: String,
    pub name: String,
    pub error: String,
}

/// Reader halves of the reflector stores; one per watched namespace (or one for all), since
/// each watch stream swaps its own store whole on a relist.
#[derive(Clone, Default)]
pub struct Stores {
    pub routes: Vec<Store<GuardedRoute>>,
    pub services: Vec<Store<Service>>,
    pub slices: Vec<Store<EndpointSlice>>,
    pub secrets: Vec<Store<Secret>>,
    /// `--default-cert-secret`: `(namespace, name)` of a `kubernetes.io/tls` Secret.
    pub default_certificate_secret: Option<(String, String)>,
}

impl Stores {
    /// Resolves once every store has seen its first complete list.
    pub async fn wait_until_ready(
        &self,
    ) -> Result<(), kube::runtime::reflector::store::WriterDropped> {
        for s in &self.routes {
            s.wait_until_ready().await?;
        }
        for s in &self.services {
            s.wait_until_ready().await?;
        }
        for s in &self.slices {
            s.wait_until_ready().await?;
        }
        for s in &self.secrets {
            s.wait_until_ready().await?;
        }
        Ok(())
    }

    /// Reads every store once; WsRoutes that do not deserialize are left out (see
    /// `invalid_routes`).
    pub fn translate(&self) -> Translation {
        self.translate_cached(&mut TranslateCache::default())
    }

    /// `translate`, redoing only the WsRoutes whose inputs changed since the last call with
    /// `cache` (see `translate_cached`).
    pub fn translate_cached(&self, cache: &mut TranslateCache) -> Translation {
        let backends = Backends::new(
            self.services.iter().flat_map(Store::state),
            self.slices.iter().flat_map(Store::state),
        )
        .with_secrets(self.secrets.iter().flat_map(Store::state));
        let routes: Vec<Arc<GuardedRoute>> = self.routes.iter().flat_map(Store::state).collect();
        let mut out = translate_cached(
            routes.iter().filter_map(|g| g.0.as_ref().ok()),
            &backends,
            cache,
        );
        if let Some((ns, name)) = &self.default_certificate_secret {
            match secrets::server_certificate(&backends.secrets, ns, name) {
                Ok(cert) => out.default_certificate = Some(cert),
                Err(e) => out.default_certificate_problem = Some(e),
            }
        }
        out
    }

    /// The WsRoute `namespace/name`, if it is in a store and deserializes.
    pub fn route(&self, namespace: &str, name: &str) -> Option<WsRoute> {
        let key = kube::runtime::reflector::ObjectRef::<GuardedRoute>::new(name).within(namespace);
        let guarded = self.routes.iter().find_map(|s| s.get(&key))?;
        guarded.0.as_ref().ok().cloned()
    }

    /// WsRoutes in the stores that do not deserialize, sorted by namespace and name.
    pub fn invalid_routes(&self) -> Vec<InvalidRoute> {
        let mut out: Vec<InvalidRoute> = self
            .routes
            .iter()
            .flat_map(Store::state)
            .filter_map(|g| {
                let e = g.0.as_ref().err()?;
                Some(InvalidRoute {
                    namespace: e.metadata.namespace.clone().unwrap_or_default(),
                    name: e.metadata.name.clone().unwrap_or_default(),
                    error: e.error.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }
}

/// What the backend reference of one route came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendRef {
    /// `downstreamHostAndPorts`: nothing to resolve.
    Static,
    /// `serviceName` resolved (possibly to zero endpoints).
    Service,
    /// `serviceName` did not resolve.
    Unresolved(Unresolved),
}

/// Everything `compute_status` needs about one WsRoute besides the table's verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteReport {
    pub id: RouteId,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    /// Problems `route_from_spec` found; non-empty means the route is not in `routes`.
    pub field_errors: Vec<FieldError>,
    pub backend: BackendRef,
    /// Endpoints taking new connections.
    pub ready_endpoints: i32,
    /// Why `tls.secretName` or `backendTls.caSecretName` did not resolve; empty = fine.
    pub certificate_problems: Vec<String>,
    /// `dangerousAcceptAnyServerCertificateValidator: true` on a route in the table.
    pub insecure_backend_tls: bool,
    /// Why `authenticationOptions.jwt.jwksSecretName` did not resolve (the route refuses
    /// every request with 401); empty = fine.
    pub auth_problems: Vec<String>,
    /// The status the object carries now; conditions whose value did not change keep
    /// its `lastTransitionTime`.
    pub previous: Option<WsRouteStatus>,
}

/// One snapshot's worth of routes for the table and reports for status, both ordered by
/// route id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    pub routes: Vec<Route>,
    pub reports: Vec<RouteReport>,
    /// `--default-cert-secret`, when set and usable.
    pub default_certificate: Option<ServerCertificate>,
    /// Why `--default-cert-secret` is not usable.
    pub default_certificate_problem: Option<String>,
}

/// WsRoutes + backends → routes and status inputs. `order` is creation order
/// (creationTimestamp, then namespace/name), so the oldest route wins a conflict.
pub fn translate(
    routes: impl IntoIterator<Item = Arc<WsRoute>>,
    backends: &Backends,
) -> Translation {
    let routes: Vec<Arc<WsRoute>> = routes.into_iter().collect();
    translate_cached(
        routes.iter().map(|r| &**r),
        backends,
        &mut TranslateCache::default(),
    )
}

/// What `translate` made of each WsRoute last time, so that the next call only redoes the
/// routes whose inputs changed: with 10,000 routes, an EndpointSlice change re-translates
/// the routes of that one Service.
#[derive(Default)]
pub struct TranslateCache {
    // Boxed: entries move between maps on every call and a spec is large.
    by_id: HashMap<String, Box<Cached>>,
}

impl TranslateCache {
    /// WsRoutes whose translation is kept.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// One WsRoute's translation and everything it was computed from. Its Service and
/// EndpointSlices are compared by identity: the reflector stores replace an object's `Arc`
/// whenever the object changes, and holding the `Arc`s here keeps the addresses from being
/// reused.
struct Cached {
    uid: Option<String>,
    generation: Option<i64>,
    spec: WsRouteSpec,
    service: Option<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    route: Option<Route>,
    field_errors: Vec<FieldError>,
    backend: BackendRef,
    ready_endpoints: i32,
    insecure_backend_tls: bool,
}

impl Cached {
    fn still_valid(
        &self,
        obj: &WsRoute,
        service: Option<&Arc<Service>>,
        slices: &[Arc<EndpointSlice>],
    ) -> bool {
        let same_service = match (&self.service, service) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        // Slices come in store order, which may differ between calls.
        let same_slices = self.slices.len() == slices.len()
            && slices
                .iter()
                .all(|s| self.slices.iter().any(|c| Arc::ptr_eq(c, s)));
        self.uid == obj.metadata.uid
            && self.generation == obj.metadata.generation
            && same_service
            && same_slices
            && self.spec == obj.spec
    }
}

/// `translate` over borrowed WsRoutes, reusing `cache` for every WsRoute whose uid,
/// generation, spec, Service and EndpointSlices are the ones it was last translated from.
/// Routes naming Secrets (`tls`, `backendTls`, `authenticationOptions`) are always
/// translated afresh. The result is
/// what `translate` returns for the same input.
pub fn translate_cached<'a>(
    routes: impl IntoIterator<Item = &'a WsRoute>,
    backends: &Backends,
    cache: &mut TranslateCache,
) -> Translation {
    let mut objects: Vec<(Option<k8s_openapi::jiff::Timestamp>, &str, &str, &WsRoute)> = routes
        .into_iter()
        .filter_map(|r| {
            let ns = r.metadata.namespace.as_deref()?;
            let name = r.metadata.name.as_deref()?;
            Some((
                r.metadata.creation_timestamp.as_ref().map(|t| t.0),
                ns,
                name,
                r,
            ))
        })
        .collect();
    // Objects without a timestamp (never from a real API server) sort last, by name.
    objects.sort_by(|a, b| (a.0.is_none(), a.0, a.1, a.2).cmp(&(b.0.is_none(), b.0, b.1, b.2)));

    let mut before = std::mem::take(&mut cache.by_id);
    cache.by_id.reserve(objects.len());
    let mut out = Translation::default();
    out.routes.reserve(objects.len());
    out.reports.reserve(objects.len());
    for (order, (_, namespace, name, obj)) in objects.into_iter().enumerate() {
        let id = RouteId(format!("{namespace}/{name}"));
        let spec = &obj.spec;
        // Routes naming Secrets are translated afresh: a Secret may have changed.
        let cacheable = spec.tls.is_none()
            && spec.backend_tls.is_none()
            && spec.authentication_options.is_none();
        let (service, slices) = match &spec.service_name {
            Some(service) => backends.inputs(namespace, service),
            None => (None, &[][..]),
        };
        let cached = before
            .remove(&id.0)
            .filter(|c| cacheable && c.still_valid(obj, service, slices));
        let cached = match cached {
            Some(c) => c,
            None => {
                let (route, report) =
                    translate_one(id.clone(), order, namespace, name, obj, backends);
                if let Some(route) = route.clone() {
                    out.routes.push(route);
                }
                if cacheable {
                    cache.by_id.insert(
                        id.0,
                        Box::new(Cached {
                            uid: obj.metadata.uid.clone(),
                            generation: obj.metadata.generation,
                            spec: spec.clone(),
                            service: service.cloned(),
                            slices: slices.to_vec(),
                            route,
                            field_errors: report.field_errors.clone(),
                            backend: report.backend.clone(),
                            ready_endpoints: report.ready_endpoints,
                            insecure_backend_tls: report.insecure_backend_tls,
                        }),
                    );
                }
                out.reports.push(report);
                continue;
            }
        };
        if let Some(route) = &cached.route {
            let mut route = route.clone();
            route.order = order as u64;
            out.routes.push(route);
        }
        out.reports.push(RouteReport {
            id: id.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: obj.metadata.uid.clone(),
            generation: obj.metadata.generation,
            field_errors: cached.field_errors.clone(),
            backend: cached.backend.clone(),
            ready_endpoints: cached.ready_endpoints,
            certificate_problems: Vec::new(),
            insecure_backend_tls: cached.insecure_backend_tls,
            auth_problems: Vec::new(),
            previous: obj.status.clone(),
        });
        cache.by_id.insert(id.0, cached);
    }
    out.routes.sort_by(|a, b| a.id.cmp(&b.id));
    out.reports.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// One WsRoute → its route (`None` when left out) and its status inputs.
fn translate_one(
    id: RouteId,
    order: usize,
    namespace: &str,
    name: &str,
    obj: &WsRoute,
    backends: &Backends,
) -> (Option<Route>, RouteReport) {
    let spec = &obj.spec;
    let mut field_errors = Vec::new();
    let (backend, specs_backends) = match (&spec.service_name, &spec.service_port) {
        (None, _) => (BackendRef::Static, SpecBackends::Static),
        (Some(_), None) => {
            field_errors.push(FieldError::new(
                "spec.servicePort",
                "`servicePort` (a port number or name of the Service) is required with `serviceName`",
            ));
            (BackendRef::Service, SpecBackends::Resolved(Vec::new()))
        }
        (Some(service), Some(port)) => match backends.resolve(namespace, service, port) {
            Ok(endpoints) => (BackendRef::Service, SpecBackends::Resolved(endpoints)),
            // An unresolved backend still gets a route: clients see 503 + Retry-After (and
            // keep reconnecting) rather than 404.
            Err(e) => (
                BackendRef::Unresolved(e),
                SpecBackends::Resolved(Vec::new()),
            ),
        },
    };
    let report =
        |field_errors, ready_endpoints: usize, certificate_problems, insecure| RouteReport {
            id: id.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: obj.metadata.uid.clone(),
            generation: obj.metadata.generation,
            field_errors,
            backend: backend.clone(),
            ready_endpoints: i32::try_from(ready_endpoints).unwrap_or(i32::MAX),
            certificate_problems,
            insecure_backend_tls: insecure,
            previous: obj.status.clone(),
            auth_problems: Vec::new(),
        };
    match route_from_spec(id.clone(), order as u64, spec, specs_backends) {
        Ok(mut route) if field_errors.is_empty() => {
            let certificate_problems = resolve_tls(
                spec,
                namespace,
                &backends.secrets,
                &mut route,
                &mut field_errors,
            );
            let auth_problems =
                super::auth::resolve(namespace, &backends.secrets, &mut route, &mut field_errors);
            if !field_errors.is_empty() {
                // The spec names files: leave the route out like any invalid field.
                return (None, report(field_errors, 0, certificate_problems, false));
            }
            let ready_endpoints = route
                .endpoints
                .iter()
                .filter(|e| e.state == EndpointState::Ready)
                .count();
            let insecure = route.insecure_skip_verify;
            let mut report = report(
                field_errors,
                ready_endpoints,
                certificate_problems,
                insecure,
            );
            report.auth_problems = auth_problems;
            (Some(route), report)
        }
        Ok(_) => (None, report(field_errors, 0, Vec::new(), false)),
        Err(errors) => {
            field_errors.extend(errors);
            (None, report(field_errors, 0, Vec::new(), false))
        }
    }
}

/// Resolves a route's certificate references against the Secrets of its namespace. An
/// unresolved reference leaves the route serving (without that certificate / with only the
/// platform roots) and is returned for `ResolvedRefs`; file paths are field errors here.
fn resolve_tls(
    spec: &WsRouteSpec,
    namespace: &str,
    secrets: &Secrets,
    route: &mut Route,
    field_errors: &mut Vec<FieldError>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(tls) = &spec.tls {
        if tls.cert_file.is_some() || tls.key_file.is_some() {
            field_errors.push(FieldError::new(
                "spec.tls.certFile",
                "certificate files are for standalone mode; in a cluster name a `kubernetes.io/tls` Secret in `secretName`",
            ));
        }
        match &tls.secret_name {
            Some(name) => match secrets::server_certificate(secrets, namespace, name) {
                Ok(cert) => route.certificate = Some(cert),
                Err(e) => problems.push(format!("spec.tls.secretName: {e}")),
            },
            None if tls.cert_file.is_none() => field_errors.push(FieldError::new(
                "spec.tls.secretName",
                "required: a `kubernetes.io/tls` Secret in the route's namespace",
            )),
            None => {}
        }
    }
    if let Some(backend) = &spec.backend_tls {
        if backend.ca_file.is_some() {
            field_errors.push(FieldError::new(
                "spec.backendTls.caFile",
                "CA files are for standalone mode; in a cluster use `caSecretName` (a Secret with `ca.crt`)",
            ));
        }
        if let Some(name) = &backend.ca_secret_name {
            match secrets::ca_bundle(secrets, namespace, name) {
                Ok(ca) => route.backend_tls.ca = Some(ca),
                Err(e) => problems.push(format!("spec.backendTls.caSecretName: {e}")),
            }
        }
    }
    // Pod IPs rarely appear in a certificate: a Service backend is verified as its DNS name.
    if route.scheme == Scheme::Wss && route.backend_tls.server_name.is_none() {
        if let Some(service) = &spec.service_name {
            route.backend_tls.server_name = Some(format!("{service}.{namespace}.svc"));
        }
    }
    problems
}
