//! What the controller needs from the route table: publish a route set, learn the
//! generation now serving and which routes the table left out. `table::Publisher` fits
//! this through a one-line impl or a closure; the kube source never sees the table itself.

use crate::model::{Route, RouteId, ServerCertificate};

/// Why the table left a route out, as far as status is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// A path template does not parse.
    InvalidTemplate,
    /// An older route owns the same host and upstream template.
    Conflicted,
}

/// One route the table did not take, with the field and a message for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableProblem {
    pub route: RouteId,
    pub kind: ProblemKind,
    pub field: String,
    pub message: String,
}

/// The result of one publish: the generation now serving new requests and the routes
/// it left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    pub generation: u64,
    pub problems: Vec<TableProblem>,
}

/// Compiles and swaps in a new route table.
pub trait RoutePublisher: Send + Sync + 'static {
    fn publish(&self, routes: &[Route]) -> PublishOutcome;

    /// The certificate for handshakes no route's host matches, used from the next
    /// `publish` on (`--default-cert-secret`). Publishers without a TLS listener ignore it.
    fn set_default_certificate(&self, _cert: Option<ServerCertificate>) {}
}

impl<F> RoutePublisher for F
where
    F: Fn(&[Route]) -> PublishOutcome + Send + Sync + 'static,
{
    fn publish(&self, routes: &[Route]) -> PublishOutcome {
        self(routes)
    }
}
