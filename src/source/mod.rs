//! Sources turn the outside world into the plain model (`Vec<model::Route>`): `file`
//! (standalone YAML / ocelot.json) and `kube` (reflectors over the API server). Nothing
//! downstream knows which one ran.

pub mod file;
pub mod kube;
