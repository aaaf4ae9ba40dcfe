//! What the controller needs from the route table: publish a route set, learn the
//! generation now serving and which routes the table left out (`table::Published`, whose
//! `RouteProblem`s become status conditions). `table::Publisher` is the implementation the
//! gateway uses; tests may pass a closure.

use crate::model::Route;
use crate::table::{Published, Publisher};

/// Compiles and swaps in a new route table.
pub trait RoutePublisher: Send + Sync + 'static {
    fn publish(&self, routes: &[Route]) -> Published;
}

impl RoutePublisher for Publisher {
    fn publish(&self, routes: &[Route]) -> Published {
        Publisher::publish(self, routes)
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
