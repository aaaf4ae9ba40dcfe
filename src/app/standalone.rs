//! Standalone mode: routes from files, reloaded on change. A file that fails to load or
//! compile never replaces the table that is serving; the problems are logged by file,
//! document and field.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use super::{Server, ServerOptions};
use crate::balance::EndpointLoads;
use crate::model::Route;
use crate::source::file::{self, LoadedRoutes, Severity};
use crate::table::{self, CompileContext, Publisher};
use crate::telemetry::Metrics;

#[derive(Clone, Debug)]
pub struct StandaloneOptions {
    pub routes: Vec<PathBuf>,
    pub reload_interval: Duration,
    pub server: ServerOptions,
}

/// Every problem of a load (file, document, field) plus the compile problems, as lines.
/// Empty when the routes may be served.
pub fn problems(loaded: &LoadedRoutes) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for p in &loaded.problems {
        match p.severity {
            Severity::Error => errors.push(p.to_string()),
            Severity::Warning => warnings.push(p.to_string()),
        }
    }
    errors.extend(compile_problems(&loaded.routes));
    (errors, warnings)
}

/// Template and conflict problems, found by compiling into a scratch table.
fn compile_problems(routes: &[Route]) -> Vec<String> {
    let metrics = Metrics::new();
    let loads = EndpointLoads::default();
    let (_, problems) = table::compile(
        0,
        routes,
        &CompileContext {
            metrics: &metrics,
            loads: &loads,
        },
    );
    problems.iter().map(|p| p.to_string()).collect()
}

pub async fn run(options: StandaloneOptions) -> anyhow::Result<()> {
    let loaded = file::load(&options.routes)?;
    let (errors, warnings) = problems(&loaded);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if !errors.is_empty() {
        for e in &errors {
            tracing::error!("{e}");
        }
        bail!(
            "{} problem(s) in the routes file(s); fix them (see `wsgate check`) and start again",
            errors.len()
        );
    }
    let metrics = Arc::new(Metrics::new());
    let publisher = Arc::new(Publisher::new(Arc::clone(&metrics)));
    let published = publisher.publish(&loaded.routes);
    tracing::info!(
        generation = published.generation,
        routes = loaded.routes.len(),
        "route table loaded"
    );

    let server = Server::start(
        options.server.clone(),
        Arc::clone(&publisher),
        Arc::clone(&metrics),
    )
    .await?;
    server.readiness.set_loaded();

    let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(file::watch(
        options.routes.clone(),
        options.reload_interval,
        move |result| reload(result, &publisher, &metrics),
        async move {
            let _ = watch_stopped.await;
        },
    ));

    super::shutdown_signal().await;
    let _ = stop_watch.send(());
    let _ = watcher.await;
    server.shutdown().await;
    Ok(())
}

/// Applies a changed routes file, or keeps the serving table when the change is broken.
fn reload(result: Result<LoadedRoutes, file::FileError>, publisher: &Publisher, metrics: &Metrics) {
    let loaded = match result {
        Ok(l) => l,
        Err(e) => {
            metrics.table_reloads_failed.inc();
            tracing::error!(error = %e, "routes file unreadable; the last good route table keeps serving");
            return;
        }
    };
    let (errors, warnings) = problems(&loaded);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if !errors.is_empty() {
        metrics.table_reloads_failed.inc();
        for e in &errors {
            tracing::error!("{e}");
        }
        tracing::error!(
            problems = errors.len(),
            "routes file change rejected; the last good route table keeps serving"
        );
        return;
    }
    let published = publisher.publish(&loaded.routes);
    tracing::info!(
        generation = published.generation,
        routes = loaded.routes.len(),
        "route table reloaded; live connections untouched"
    );
}
