//! `serviceName` + `servicePort` → endpoints, through the Service (port name or number →
//! the Service port's name) and every EndpointSlice labelled with the Service's name (the
//! slice port of that name gives the pod port, per slice).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{Endpoint, EndpointState};

/// Label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Why a Service reference gave no endpoint list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("Service {namespace}/{name} not found")]
    ServiceNotFound { namespace: String, name: String },
    #[error("Service {namespace}/{name} has no EndpointSlices")]
    NoEndpointSlices { namespace: String, name: String },
    #[error("Service {namespace}/{name} has no port {port}")]
    PortNotFound {
        namespace: String,
        name: String,
        port: String,
    },
}

/// Services and the slices of each Service, by namespace, then Service name (nested so a
/// lookup borrows its key: this index is rebuilt from the stores on every rebuild).
#[derive(Clone, Debug, Default)]
pub struct Backends {
    pub services: HashMap<String, HashMap<String, Arc<Service>>>,
    pub slices: HashMap<String, HashMap<String, Vec<Arc<EndpointSlice>>>>,
    /// Secrets routes may name for certificates (`tls.secretName`, `caSecretName`).
    pub secrets: super::secrets::Secrets,
}

impl Backends {
    pub fn new(
        services: impl IntoIterator<Item = Arc<Service>>,
        slices: impl IntoIterator<Item = Arc<EndpointSlice>>,
    ) -> Self {
        let mut b = Backends::default();
        for svc in services {
            if let (Some(ns), Some(name)) = (&svc.metadata.namespace, &svc.metadata.name) {
                let names = match b.services.get_mut(ns.as_str()) {
                    Some(names) => names,
                    None => b.services.entry(ns.clone()).or_default(),
                };
                names.insert(name.clone(), svc.clone());
            }
        }
        for slice in slices {
            let owner = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(svc)) = (&slice.metadata.namespace, owner) {
                let services = match b.slices.get_mut(ns.as_str()) {
                    Some(services) => services,
                    None => b.slices.entry(ns.clone()).or_default(),
                };
                match services.get_mut(svc.as_str()) {
                    Some(slices) => slices.push(slice.clone()),
                    None => {
                        services.insert(svc.clone(), vec![slice.clone()]);
                    }
                }
            }
        }
        b
    }

    /// What `resolve` reads for `service` in `namespace`: the Service and its slices.
    pub fn inputs(
        &self,
        namespace: &str,
        service: &str,
    ) -> (Option<&Arc<Service>>, &[Arc<EndpointSlice>]) {
        (
            self.services.get(namespace).and_then(|s| s.get(service)),
            self.slices
                .get(namespace)
                .and_then(|s| s.get(service))
                .map_or(&[][..], Vec::as_slice),
        )
    }

    /// Adds the Secrets certificate references resolve against.
    pub fn with_secrets(mut self, secrets: impl IntoIterator<Item = Arc<Secret>>) -> Self {
        self.secrets = super::secrets::index(secrets);
        self
    }

    /// The endpoints of `service`'s `port` in `namespace`: ready ones take new connections,
    /// serving-and-terminating ones only keep theirs, others are left out. Sorted and free of
    /// duplicates (an address can sit in two slices while the controller moves it).
    pub fn resolve(
        &self,
        namespace: &str,
        service: &str,
        port: &IntOrString,
    ) -> Result<Vec<Endpoint>, Unresolved> {
        let (svc, slices) = self.inputs(namespace, service);
        let svc = svc.ok_or_else(|| Unresolved::ServiceNotFound {
            namespace: namespace.to_string(),
            name: service.to_string(),
        })?;
        let port_name = service_port_name(svc, port).ok_or_else(|| Unresolved::PortNotFound {
            namespace: namespace.to_string(),
            name: service.to_string(),
            port: match port {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => s.clone(),
            },
        })?;
        let slices =
            Some(slices)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Unresolved::NoEndpointSlices {
                    namespace: namespace.to_string(),
                    name: service.to_string(),
                })?;

        let mut found: BTreeMap<(String, u16), EndpointState> = BTreeMap::new();
        for slice in slices {
            let Some(pod_port) = slice_port(slice, &port_name) else {
                continue;
            };
            for ep in &slice.endpoints {
                let (Some(address), Some(state)) = (ep.addresses.first(), endpoint_state(ep))
                else {
                    continue;
                };
                found
                    .entry((address.clone(), pod_port))
                    .and_modify(|s| *s = (*s).min(state))
                    .or_insert(state);
            }
        }
        Ok(found
            .into_iter()
            .map(|((host, port), state)| Endpoint::new(host, port).with_state(state))
            .collect())
    }
}

/// The name of the Service port `port` refers to (`""` for the one unnamed port). A number
/// matches `spec.ports[].port`; a name matches `spec.ports[].name` (a numeric string is a
/// number: port names must contain a letter).
fn service_port_name(svc: &Service, port: &IntOrString) -> Option<String> {
    let ports = svc.spec.as_ref()?.ports.as_ref()?;
    let number = match port {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(s) => s.parse::<i32>().ok(),
    };
    let found = match (number, port) {
        (Some(n), _) => ports.iter().find(|p| p.port == n),
        (None, IntOrString::String(name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str())),
        (None, IntOrString::Int(_)) => None,
    }?;
    Some(found.name.clone().unwrap_or_default())
}

/// The pod port a slice lists under the Service port's name (TCP only).
fn slice_port(slice: &EndpointSlice, name: &str) -> Option<u16> {
    slice.ports.as_ref()?.iter().find_map(|p| {
        let tcp = p.protocol.as_deref().is_none_or(|proto| proto == "TCP");
        if tcp && p.name.as_deref().unwrap_or("") == name {
            p.port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
        } else {
            None
        }
    })
}

/// EndpointSlice conditions → state. Absent `ready` means ready and absent `serving` follows
/// `ready` (the API's documented defaults); absent `terminating` means not terminating.
fn endpoint_state(ep: &SliceEndpoint) -> Option<EndpointState> {
    let c = ep.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    if ready && !terminating {
        Some(EndpointState::Ready)
    } else if serving && terminating {
        Some(EndpointState::Terminating)
    } else {
        None
    }
}
