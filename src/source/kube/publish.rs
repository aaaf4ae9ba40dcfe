//! What the controller needs from the route table: publish a route set, learn the
//! generation now serving and which routes the table left out (`table::Published`, whose
//! `RouteProblem`s become status conditions). `table::Publisher` is the implementation the
//! gateway uses; tests may pass a closure.

use crate::model::{Route, ServerCertificate};
use crate::table::{Published, Publisher};

/// Compiles and swaps in a new route table.
pub trait RoutePublisher: Send + Sync + 'static {
    fn publish(&self, routes: &[Route]) -> Published;

    /// The certificate for handshakes no route's host matches, used from the next
    /// `publish` on (`--default-cert-secret`). Publishers without a TLS listener ignore it.
    fn set_default_certificate(&self, _cert: Option<ServerCertificate>) {}
}

impl RoutePublisher for Publisher {
    fn publish(&self, routes: &[Route]) -> Published {
        Publisher::publish(self, routes)
    }

    fn set_default_certificate(&self, cert: Option<ServerCertificate>) {
        Publisher::set_default_certificate(self, cert);
    }
}

impl<F> RoutePublisher for F
where
    F: Fn(&[Route]) -> Published + Send + Sync + 'static,
{
    fn publish(&self, routes: &[Route]) -> Published {
        self(routes)
    }
}
