//! Cluster mode: routes from WsRoute resources, endpoints from EndpointSlices, status
//! written back by the Lease holder. `/readyz` turns ready after the first full sync.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{Server, ServerOptions};
use crate::balance::StickyKey;
use crate::source::kube::{self as kube_source, KubeConfig, KubeMetrics};
use crate::table::{BackendRoots, Publisher};
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
    /// `--default-cert`, `--default-key`: read once at start.
    pub default_certificate: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `--default-cert-secret NS/NAME`: watched like route Secrets.
    pub default_certificate_secret: Option<(String, String)>,
    pub server: ServerOptions,
    /// Signs sticky-session cookies; every replica needs the same one.
    pub sticky_key: StickyKey,
    /// Trust anchors of `wss` backends (`app::load_platform_roots`, read before the
    /// runtime starts).
    pub backend_roots: BackendRoots,
}

/// A running cluster-mode gateway: the server, the table it serves and the controller
/// feeding that table.
pub struct Cluster {
    pub server: Server,
    pub publisher: Arc<Publisher>,
    pub metrics: Arc<Metrics>,
    pub kube_metrics: Arc<KubeMetrics>,
    controller: JoinHandle<Result<(), kube_source::Error>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Cluster {
    /// Starts the gateway listeners and the controller on `client`. `/readyz` stays false
    /// until every watch has listed once and the first table is published.
    pub async fn start(options: ClusterOptions, client: kube::Client) -> anyhow::Result<Cluster> {
        let kube_metrics = Arc::new(KubeMetrics::default());
        let metrics = Arc::new(Metrics::with_options(options.server.metrics, |registry| {
            kube_metrics.register(registry)
        }));
        let publisher = Arc::new(
            Publisher::with_sticky_key(Arc::clone(&metrics), options.sticky_key.clone())
                .with_backend_roots(options.backend_roots.clone()),
        );
        if let Some((cert, key)) = &options.default_certificate {
            publisher.set_default_certificate(Some(super::read_certificate(cert, key)?));
        }
        let server = Server::start(
            options.server.clone(),
            Arc::clone(&publisher),
            Arc::clone(&metrics),
        )
        .await?;

        let mut config = KubeConfig::new(options.identity.clone(), options.lease_namespace.clone());
        config.namespaces = options.namespaces.clone();
        config.label_selector = options.route_selector.clone();
        config.default_certificate_secret = options.default_certificate_secret.clone();
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

        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let controller = tokio::spawn(kube_source::run(
            config,
            client,
            Arc::clone(&publisher) as Arc<dyn kube_source::RoutePublisher>,
            Arc::clone(&kube_metrics),
            ready_tx,
            async move {
                let _ = stop_rx.await;
            },
        ));
        Ok(Cluster {
            server,
            publisher,
            metrics,
            kube_metrics,
            controller,
            stop: Some(stop_tx),
        })
    }

    /// Stops the controller (releasing the status Lease so another replica takes over at
    /// once) while the server drains. Returns true if every connection ended in the budget.
    pub async fn shutdown(mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let controller = &mut self.controller;
        let release = async {
            if !controller.is_finished() {
                let _ = tokio::time::timeout(Duration::from_secs(5), controller).await;
            }
        };
        let (clean, ()) = tokio::join!(self.server.shutdown(), release);
        clean
    }
}

pub async fn run(options: ClusterOptions) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster service account or KUBECONFIG); for standalone mode pass --routes FILE")?;
    let mut cluster = Cluster::start(options, client).await?;
    tokio::select! {
        _ = super::shutdown_signal() => {}
        res = &mut cluster.controller => {
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
    cluster.shutdown().await;
    Ok(())
}
