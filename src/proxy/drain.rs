//! Shutdown and drain: one signal every listener and relay watches, and a tracker of the
//! tasks that must finish (or be cut at the drain budget) before the process exits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Owned by the process: starts the drain and waits for connections to finish.
#[derive(Clone)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
    tasks: TaskTracker,
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Drain {
            tx: Arc::new(watch::channel(false).0),
            tasks: TaskTracker::new(),
        }
    }

    /// A receiver for one listener or connection.
    pub fn signal(&self) -> DrainSignal {
        DrainSignal(self.tx.subscribe())
    }

    /// Runs a connection's task so that `wait` can account for it.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Tells every listener to stop accepting and every relay to send Close 1001.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Live tracked tasks (connections being served or relayed).
    pub fn active(&self) -> usize {
        self.tasks.len()
    }

    /// Waits until every tracked task ended, or `budget` passed. True if all ended.
    pub async fn wait(&self, budget: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(budget, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// A connection's view of the drain signal.
#[derive(Clone)]
pub struct DrainSignal(watch::Receiver<bool>);

impl DrainSignal {
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the drain has started (immediately if it already has).
    pub async fn wait(&mut self) {
        if self.0.wait_for(|d| *d).await.is_err() {
            // The sender is gone only when the process is ending anyway.
            std::future::pending::<()>().await;
        }
    }
}
