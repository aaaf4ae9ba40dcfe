//! Standalone mode: routes from files, reloaded on change. A file that fails to load or
//! compile never replaces the table that is serving; the problems are logged by file,
//! document and field.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use super::{Server, ServerOptions};
use crate::balance::{BalanceState, StickyKey};
use crate::model::RouteProblem;
use crate::source::file::{self, LoadedRoutes, Severity};
use crate::table::{self, BackendRoots, CompileContext, Prepared, Publisher};
use crate::telemetry::Metrics;

#[derive(Clone, Debug)]
pub struct StandaloneOptions {
    pub routes: Vec<PathBuf>,
    /// `--default-cert`, `--default-key`: watched like the routes files.
    pub default_certificate: Option<(PathBuf, PathBuf)>,
    pub reload_interval: Duration,
    pub server: ServerOptions,
    /// Signs sticky-session cookies; replicas that share it honour each other's cookies.
    pub sticky_key: StickyKey,
    /// Trust anchors of `wss` backends (`app::load_platform_roots`, read before the
    /// runtime starts).
    pub backend_roots: BackendRoots,
    /// `--jwt-provider`: what routes files may refer to outside themselves.
    pub files: file::FileOptions,
}

/// Every problem of a load (file, document, field) plus the compile problems, as lines.
/// Empty when the routes may be served. For `wsgate check`, which has no table to serve:
/// it compiles into a scratch table.
pub fn problems(loaded: &LoadedRoutes) -> (Vec<String>, Vec<String>) {
    let metrics = Metrics::new();
    let balance = BalanceState::default();
    let (_, compiled) = table::compile(
        0,
        &loaded.routes,
        &CompileContext {
            metrics: &metrics,
            balance: &balance,
            backend_roots: &BackendRoots::none(),
        },
    );
    load_and_compile_problems(loaded, &compiled)
}

/// The load's problems by severity, then the compile's `problems` as errors.
fn load_and_compile_problems(
    loaded: &LoadedRoutes,
    problems: &[RouteProblem],
) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for p in &loaded.problems {
        match p.severity {
            Severity::Error => errors.push(p.to_string()),
            Severity::Warning => warnings.push(p.to_string()),
        }
    }
    errors.extend(problems.iter().map(|p| p.to_string()));
    (errors, warnings)
}

/// Compiles the loaded routes once for the publisher and lists every problem; the
/// prepared table is what `swap` serves when there are no errors.
fn prepare(loaded: &LoadedRoutes, publisher: &Publisher) -> (Prepared, Vec<String>, Vec<String>) {
    let prepared = publisher.prepare(&loaded.routes);
    let (errors, warnings) = load_and_compile_problems(loaded, prepared.problems());
    (prepared, errors, warnings)
}

pub async fn run(options: StandaloneOptions) -> anyhow::Result<()> {
    let loaded = file::load_with(&options.routes, &options.files)?;
    let metrics = Arc::new(Metrics::with_options(options.server.metrics, |_| {}));
    let publisher = Arc::new(
        Publisher::with_sticky_key(Arc::clone(&metrics), options.sticky_key.clone())
            .with_backend_roots(options.backend_roots.clone()),
    );
    let (prepared, errors, warnings) = prepare(&loaded, &publisher);
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
    let default_files = options.default_certificate.clone();
    if let Some((cert, key)) = &default_files {
        publisher.set_default_certificate(Some(super::read_certificate(cert, key)?));
    }
    let published = publisher.swap(prepared);
    tracing::info!(
        generation = published.generation,
        routes = loaded.routes.len(),
        "route table loaded"
    );

    let mut server_options = options.server.clone();
    if server_options.tls_listen.is_none() && loaded.routes.iter().any(|r| r.certificate.is_some())
    {
        server_options.tls_listen = Some(super::DEFAULT_TLS_LISTEN);
    }
    let tls_listening = server_options.tls_listen.is_some();
    let server =
        Server::start(server_options, Arc::clone(&publisher), Arc::clone(&metrics)).await?;
    server.readiness.set_loaded();

    let (stop_watch, watch_stopped) = tokio::sync::oneshot::channel::<()>();
    let extra = default_files
        .iter()
        .flat_map(|(c, k)| [c.clone(), k.clone()])
        .collect();
    let watcher = tokio::spawn(file::watch_with(
        options.routes.clone(),
        extra,
        options.files.clone(),
        options.reload_interval,
        move |result| {
            reload(
                result,
                default_files.as_ref(),
                tls_listening,
                &publisher,
                &metrics,
            )
        },
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

/// Applies a changed routes file (or certificate file), or keeps the serving table when
/// the change is broken.
fn reload(
    result: Result<LoadedRoutes, file::FileError>,
    default_files: Option<&(PathBuf, PathBuf)>,
    tls_listening: bool,
    publisher: &Publisher,
    metrics: &Metrics,
) {
    let loaded = match result {
        Ok(l) => l,
        Err(e) => {
            metrics.table_reloads_failed.inc();
            tracing::error!(error = %e, "routes file unreadable; the last good route table keeps serving");
            return;
        }
    };
    let (prepared, errors, warnings) = prepare(&loaded, publisher);
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
    if let Some((cert, key)) = default_files {
        match super::read_certificate(cert, key) {
            Ok(c) => publisher.set_default_certificate(Some(c)),
            Err(e) => {
                metrics.table_reloads_failed.inc();
                tracing::error!(error = %format!("{e:#}"), "default certificate unusable; the last good route table keeps serving");
                return;
            }
        }
    }
    if !tls_listening && loaded.routes.iter().any(|r| r.certificate.is_some()) {
        tracing::warn!("routes now name certificates but no TLS listener runs; restart with --tls-listen to serve them");
    }
    let published = publisher.swap(prepared);
    tracing::info!(
        generation = published.generation,
        routes = loaded.routes.len(),
        "route table reloaded; live connections untouched"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes_file(dir: &std::path::Path, templates: &[&str]) -> PathBuf {
        let docs: Vec<String> = templates
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata:\n  name: r{i}\nspec:\n  upstreamPathTemplate: {t}\n  downstreamPathTemplate: /\n  downstreamHostAndPorts:\n    - {{host: 127.0.0.1, port: 9001}}\n"
                )
            })
            .collect();
        let path = dir.join("routes.yaml");
        std::fs::write(&path, docs.join("---\n")).expect("write routes file");
        path
    }

    /// A reload compiles its routes once: the compile whose problems decide the reload is
    /// the table that is swapped in. A conflicting file is refused on that compile's
    /// problem and the serving table stays.
    #[test]
    fn a_reload_compiles_once_and_serves_the_table_it_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics = Arc::new(Metrics::new());
        let publisher = Publisher::new(Arc::clone(&metrics));

        let path = routes_file(dir.path(), &["/a", "/b"]);
        let before = table::compiles_on_this_thread();
        reload(file::load(&[path]), None, false, &publisher, &metrics);
        assert_eq!(table::compiles_on_this_thread() - before, 1);
        let serving = publisher.current();
        assert_eq!(serving.generation(), 1);
        assert_eq!(serving.routes().len(), 2);
        assert_eq!(metrics.table_reloads_ok.get(), 1);

        let path = routes_file(dir.path(), &["/a", "/a"]);
        let loaded = file::load(&[path]).expect("load");
        let (prepared, errors, _) = prepare(&loaded, &publisher);
        assert_eq!(prepared.problems().len(), 1, "{errors:?}");
        assert_eq!(
            prepared.problems()[0].reason,
            crate::model::ProblemReason::Conflicted
        );
        assert_eq!(errors, vec![prepared.problems()[0].to_string()]);
        drop(prepared);

        let before = table::compiles_on_this_thread();
        reload(Ok(loaded), None, false, &publisher, &metrics);
        assert_eq!(table::compiles_on_this_thread() - before, 1);
        assert!(
            Arc::ptr_eq(&serving, &publisher.current()),
            "the good table keeps serving"
        );
        assert_eq!(metrics.table_reloads_failed.get(), 1);
        assert_eq!(metrics.table_reloads_ok.get(), 1);
    }
}
