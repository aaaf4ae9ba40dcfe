//! The `WsRoute` custom resource (group `wsgate.io`, version `v1alpha1`): the one schema
//! both sources read. Field names follow Ocelot's route keys in camelCase.

mod wsroute;

pub use wsroute::*;
