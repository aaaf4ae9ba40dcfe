//! Cluster mode: routes from WsRoute resources, endpoints from EndpointSlices, status
//! written back by the Lease holder. `/readyz` turns ready after the first full sync.

use std::sync::Arc;

use anyhow::Context;

use super::{Server, ServerOptions};
use crate::model::Route;
use crate::source::kube::{
    self as kube_source, KubeConfig, KubeMetrics, ProblemKind, PublishOutcome, TableProblem,
};
use crate::table::Publisher;
use crate::telemetry::Metrics;

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub namespaces: Vec<String>,
    pub route_selector: Option<String>,
    /// Pod name: the Lease holder identity.
    pub identity: String,
    /// Namespace of the status Lease (the gateway's own namespace).
    pub lease_namespace: String,
    /// Write status at all (off for a read-only replica set).
    pub write_status: bool,
    pub server: ServerOptions,
}

pub async fn run(options: ClusterOptions) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG); for standalone mode pass --routes FILE")?;
    let kube_metrics = Arc::new(KubeMetrics::default());
    let metrics = Arc::new(Metrics::with_extra(|registry| {
        kube_metrics.register(registry)
    }));
    let publisher = Arc::new(Publisher::new(Arc::clone(&metrics)));
    let server = Server::start(
        options.server.clone(),
        Arc::clone(&publisher),
        Arc::clone(&metrics),
    )
    .await?;

    let mut config = KubeConfig::new(options.identity.clone(), options.lease_namespace.clone());
    config.namespaces = options.namespaces.clone();
    config.label_selector = options.route_selector.clone();
    if !options.write_status {
        config.lease = None;
    }

    let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(false);
    let readiness = Arc::clone(&server.readiness);
    tokio::spawn(async move {
        if ready_rx.wait_for(|r| *r).await.is_ok() {
            readiness.set_loaded();
            tracing::info!("first full sync done; ready");
        }
    });

    let table = Arc::clone(&publisher);
    let publish = move |routes: &[Route]| {
        let published = table.publish(routes);
        PublishOutcome {
            generation: published.generation,
            problems: published.problems.into_iter().map(table_problem).collect(),
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut controller = tokio::spawn(kube_source::run(
        config,
        client,
        Arc::new(publish),
        kube_metrics,
        ready_tx,
        async move {
            let _ = stop_rx.await;
        },
    ));

    tokio::select! {
        _ = super::shutdown_signal() => {}
        res = &mut controller => {
            // The controller returns on its own only when its watches are gone for good;
            // the last table keeps serving until the pod is told to stop.
            match res {
                Ok(Ok(())) => tracing::warn!("controller stopped"),
                Ok(Err(e)) => tracing::error!(error = %e, "controller failed; the last table keeps serving"),
                Err(e) => tracing::error!(error = %e, "controller task failed"),
            }
            super::shutdown_signal().await;
        }
    }
    // Release the Lease (so another replica takes over status at once) while draining.
    let _ = stop_tx.send(());
    let release = async {
        if !controller.is_finished() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut controller).await;
        }
    };
    tokio::join!(server.shutdown(), release);
    Ok(())
}

fn table_problem(p: crate::table::RouteProblem) -> TableProblem {
    TableProblem {
        route: p.route,
        kind: match p.reason {
            crate::table::ProblemReason::InvalidTemplate => ProblemKind::InvalidTemplate,
            crate::table::ProblemReason::Conflicted => ProblemKind::Conflicted,
        },
        field: p.field,
        message: p.message,
    }
}
