use super::*;
use crate::source::file::watch::watch_from_snapshot;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const INTERVAL: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_secs(2);

fn route_doc(name: &str) -> String {
    format!(
        "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata: {{name: {name}}}\nspec:\n  upstreamPathTemplate: /{name}\n  downstreamPathTemplate: /ws\n  downstreamHostAndPorts: [{{host: 127.0.0.1, port: 5001}}]\n"
    )
}

/// A running watcher and the channel its reloads arrive on.
struct Watcher {
    reloads: mpsc::UnboundedReceiver<Result<LoadedRoutes, FileError>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Starts watching and returns once the watcher has taken its first look.
    async fn start(paths: Vec<PathBuf>) -> Watcher {
        let (tx, reloads) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready) = oneshot::channel();
        let task = tokio::spawn(watch_from_snapshot(
            paths,
            INTERVAL,
            move |r| {
                let _ = tx.send(r);
            },
            async move {
                let _ = stopped.await;
            },
            move || {
                let _ = ready_tx.send(());
            },
        ));
        timeout(DEADLINE, ready)
            .await
            .expect("watcher started")
            .unwrap();
        Watcher {
            reloads,
            stop: Some(stop),
            task,
        }
    }

    /// Waits for a reload whose routes are exactly `names` (an in-place write may first
    /// be seen half-written).
    async fn reload_with(&mut self, names: &[&str]) -> LoadedRoutes {
        let wait = async {
            loop {
                let next = self.reloads.recv().await.expect("watcher alive");
                if let Ok(loaded) = next {
                    let got: Vec<_> = loaded
                        .routes
                        .iter()
                        .map(|r| r.upstream_path_template.trim_start_matches('/').to_string())
                        .collect();
                    if got == names {
                        return loaded;
                    }
                }
            }
        };
        timeout(DEADLINE, wait)
            .await
            .expect("reload with the new routes")
    }

    async fn next(&mut self) -> Result<LoadedRoutes, FileError> {
        timeout(DEADLINE, self.reloads.recv())
            .await
            .expect("a reload")
            .expect("watcher alive")
    }

    /// Stops the watcher and checks that it ends.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        timeout(DEADLINE, self.task)
            .await
            .expect("watch ends on shutdown")
            .unwrap();
    }
}

/// Replacing the file by rename (editors) and writing it in place are both seen, and the
/// new routes arrive through on_change.
#[tokio::test]
async fn rename_and_in_place_writes_are_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, route_doc("a")).unwrap();
    let mut w = Watcher::start(vec![path.clone()]).await;

    let tmp = dir.path().join(".routes.yaml.swp");
    std::fs::write(&tmp, route_doc("b")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let loaded = w.reload_with(&["b"]).await;
    assert_eq!(ids(&loaded), ["routes.yaml#1 (b)"]);

    std::fs::write(&path, format!("{}---\n{}", route_doc("c"), route_doc("d"))).unwrap();
    w.reload_with(&["c", "d"]).await;
    w.stop().await;
}

/// Rewriting the same bytes is not a change: the next reload is the next real edit.
#[tokio::test]
async fn same_content_is_not_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, route_doc("a")).unwrap();
    let mut w = Watcher::start(vec![path.clone()]).await;

    let tmp = dir.path().join("tmp");
    std::fs::write(&tmp, route_doc("a")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    std::fs::write(&tmp, route_doc("b")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let first = w.next().await.unwrap();
    assert_eq!(ids(&first), ["routes.yaml#1 (b)"]);
    w.stop().await;
}

/// A Kubernetes ConfigMap volume swaps its `..data` symlink; the watched path follows it.
#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_is_reloaded() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (version, name) in [("..v1", "a"), ("..v2", "b")] {
        std::fs::create_dir(d.join(version)).unwrap();
        std::fs::write(d.join(version).join("routes.yaml"), route_doc(name)).unwrap();
    }
    symlink("..v1", d.join("..data")).unwrap();
    symlink("..data/routes.yaml", d.join("routes.yaml")).unwrap();
    let mut w = Watcher::start(vec![d.join("routes.yaml")]).await;

    symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    w.reload_with(&["b"]).await;
    w.stop().await;
}

/// A file that stays missing is reported as a read error; when it comes back, its routes do.
#[tokio::test]
async fn missing_file_is_reported_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, route_doc("a")).unwrap();
    let mut w = Watcher::start(vec![path.clone()]).await;

    std::fs::remove_file(&path).unwrap();
    let err = w.next().await.unwrap_err();
    assert!(
        matches!(&err, FileError::Read { path: p, .. } if *p == path),
        "{err}"
    );

    std::fs::write(&path, route_doc("b")).unwrap();
    w.reload_with(&["b"]).await;
    w.stop().await;
}

/// Problems in an edited file reach on_change with the valid routes.
#[tokio::test]
async fn reload_carries_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, route_doc("a")).unwrap();
    let mut w = Watcher::start(vec![path.clone()]).await;

    let bad = route_doc("bad").replace("5001", "0");
    let tmp = dir.path().join("tmp");
    std::fs::write(&tmp, format!("{}---\n{bad}", route_doc("a"))).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let loaded = w.next().await.unwrap();
    assert_eq!(ids(&loaded), ["routes.yaml#1 (a)"]);
    assert_eq!(
        summary(&loaded),
        [(
            Severity::Error,
            Some(2),
            "spec.downstreamHostAndPorts[0].port"
        )]
    );
    w.stop().await;
}
