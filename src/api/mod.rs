//! The `WsRoute` custom resource (group `wsgate.io`, version `v1alpha1`): the one schema
//! both sources read. Field names follow Ocelot's route keys in camelCase.

mod auth;
pub mod conditions;
mod crd;
mod drain;
mod keepalive;
mod wsroute;

pub use auth::{AuthenticationOptions, JwtOptions};
pub use crd::crd_yaml;
pub use drain::{DrainSpec, RebalanceSpec};
pub use keepalive::KeepaliveSpec;
pub use wsroute::*;
