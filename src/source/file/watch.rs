//! Polling the routes files for changes.
//!
//! Polling rather than inotify: it sees a file replaced by rename (editors), a Kubernetes
//! ConfigMap volume swapping its `..data` symlink, and network filesystems alike, and a
//! few `stat` calls per interval cost nothing.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha1::{Digest, Sha1};
use tokio::time::MissedTickBehavior;

use super::{parse_files_with, FileError, FileOptions, LoadedRoutes};

/// A file whose mtime is this close to when it was read may still change without the
/// mtime moving (coarse timestamps), so it is re-read even if `stat` looks the same.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Polls `paths` every `interval` and calls `on_change(load(paths))` each time the content
/// of any of them changes (not at start: the caller has just loaded them), until
/// `shutdown` resolves. The certificate, key and CA files the routes name are watched too.
/// A file that disappears is reported only if it is still missing one interval later, so
/// a delete-and-recreate save is seen as one change.
pub async fn watch(
    paths: Vec<PathBuf>,
    interval: Duration,
    on_change: impl FnMut(Result<LoadedRoutes, FileError>),
    shutdown: impl Future<Output = ()>,
) {
    let options = FileOptions::default();
    watch_all(
        paths,
        Vec::new(),
        &options,
        interval,
        on_change,
        shutdown,
        || {},
    )
    .await
}

/// `watch`, loading with `options` and also reloading when one of `extra` changes (e.g.
/// the default certificate files).
pub async fn watch_with(
    paths: Vec<PathBuf>,
    extra: Vec<PathBuf>,
    options: FileOptions,
    interval: Duration,
    on_change: impl FnMut(Result<LoadedRoutes, FileError>),
    shutdown: impl Future<Output = ()>,
) {
    watch_all(paths, extra, &options, interval, on_change, shutdown, || {}).await
}

/// `watch`, calling `on_snapshot` once the first look at the files is taken: changes from
/// then on are reported.
#[cfg(test)]
pub(crate) async fn watch_from_snapshot(
    paths: Vec<PathBuf>,
    interval: Duration,
    on_change: impl FnMut(Result<LoadedRoutes, FileError>),
    shutdown: impl Future<Output = ()>,
    on_snapshot: impl FnOnce(),
) {
    watch_all(
        paths,
        Vec::new(),
        &FileOptions::default(),
        interval,
        on_change,
        shutdown,
        on_snapshot,
    )
    .await
}

async fn watch_all(
    paths: Vec<PathBuf>,
    extra: Vec<PathBuf>,
    options: &FileOptions,
    interval: Duration,
    mut on_change: impl FnMut(Result<LoadedRoutes, FileError>),
    shutdown: impl Future<Output = ()>,
    on_snapshot: impl FnOnce(),
) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let mut seen: Vec<FileState> = Vec::with_capacity(paths.len());
    for path in &paths {
        seen.push(FileState::read(path, None).await);
    }
    // Which TLS files the routes name: parse what was just read.
    let mut deps = dependencies(&paths, &seen, &extra, options);
    let mut deps_seen = Vec::with_capacity(deps.len());
    for path in &deps {
        deps_seen.push(FileState::read(path, None).await);
    }
    on_snapshot();
    let mut missing_once = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        let mut now = Vec::with_capacity(paths.len());
        for (path, before) in paths.iter().zip(&seen) {
            now.push(FileState::read(path, Some(before)).await);
        }
        let mut deps_now = Vec::with_capacity(deps.len());
        for (path, before) in deps.iter().zip(&deps_seen) {
            deps_now.push(FileState::read(path, Some(before)).await);
        }
        let pairs = || now.iter().zip(&seen).chain(deps_now.iter().zip(&deps_seen));
        if pairs().all(|(a, b)| a.same_content(b)) {
            missing_once = false;
            continue;
        }
        let newly_missing = pairs().any(|(a, b)| a.is_missing() && !b.is_missing());
        if newly_missing && !missing_once {
            missing_once = true;
            continue;
        }
        missing_once = false;
        let contents = paths
            .iter()
            .cloned()
            .zip(now.iter().map(FileState::content))
            .collect();
        seen = now;
        let result = parse_files_with(contents, options);
        let mut next = extra.clone();
        if let Ok(loaded) = &result {
            next.extend(loaded.tls_files.iter().cloned());
        } else {
            next.extend(deps.iter().filter(|d| !extra.contains(d)).cloned());
        }
        dedup(&mut next);
        if next == deps {
            deps_seen = deps_now;
        } else {
            deps_seen = Vec::with_capacity(next.len());
            for path in &next {
                deps_seen.push(FileState::read(path, None).await);
            }
            deps = next;
        }
        on_change(result);
    }
}

/// `extra` plus the TLS files named by the routes files as read in `states`.
fn dependencies(
    paths: &[PathBuf],
    states: &[FileState],
    extra: &[PathBuf],
    options: &FileOptions,
) -> Vec<PathBuf> {
    let contents = paths
        .iter()
        .cloned()
        .zip(states.iter().map(FileState::content))
        .collect();
    let mut deps = extra.to_vec();
    if let Ok(loaded) = parse_files_with(contents, options) {
        deps.extend(loaded.tls_files);
    }
    dedup(&mut deps);
    deps
}

fn dedup(paths: &mut Vec<PathBuf>) {
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(p.clone()));
}

/// What one poll saw of one file.
struct FileState {
    stat: Option<Stat>,
    read_at: SystemTime,
    content: Result<Content, (io::ErrorKind, String)>,
}

#[derive(Clone, PartialEq, Eq)]
struct Stat {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: (u64, u64),
}

#[derive(Clone)]
struct Content {
    digest: [u8; 20],
    bytes: std::sync::Arc<Vec<u8>>,
}

impl FileState {
    /// Reads the file unless `before` saw the same `stat` and that `stat` can be trusted.
    async fn read(path: &Path, before: Option<&FileState>) -> FileState {
        // `metadata` follows symlinks, so a ConfigMap's `..data` swap changes what we see.
        // Called inline, not via tokio::fs: one `stat` of a local file takes microseconds,
        // while handing it to the blocking pool woke a second thread on the proxy's core
        // every interval (bench scenario 5: 0.2 ms of CPU per second while idle).
        let stat = std::fs::metadata(path).ok().map(|m| Stat {
            modified: m.modified().ok(),
            len: m.len(),
            #[cfg(unix)]
            inode: {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            },
        });
        if let (Some(before), Some(stat)) = (before, &stat) {
            let trusted = before.stat.as_ref() == Some(stat)
                && before.content.is_ok()
                && stat.modified.is_some_and(|m| {
                    before
                        .read_at
                        .duration_since(m)
                        .is_ok_and(|age| age > RACY_WINDOW)
                });
            if trusted {
                return FileState {
                    stat: Some(stat.clone()),
                    read_at: before.read_at,
                    content: before.content.clone(),
                };
            }
        }
        let read_at = SystemTime::now();
        // Inline for the same reason as the `stat` above, and one more: with one worker the
        // process then never starts a second thread, and glibc keeps taking its single-threaded
        // paths — system calls without the cancellation bookkeeping, malloc without arena
        // locks — for good (bench/RESULTS.md, "Runs N and O"). A routes file is read once per
        // change; a 10,000-route file (2.3 MB) reads in about 1 ms from the page cache.
        let content = match std::fs::read(path) {
            Ok(bytes) => Ok(Content {
                digest: Sha1::digest(&bytes).into(),
                bytes: std::sync::Arc::new(bytes),
            }),
            Err(e) => Err((e.kind(), e.to_string())),
        };
        FileState {
            stat,
            read_at,
            content,
        }
    }

    fn same_content(&self, other: &FileState) -> bool {
        match (&self.content, &other.content) {
            (Ok(a), Ok(b)) => a.digest == b.digest,
            (Err(a), Err(b)) => a.0 == b.0,
            _ => false,
        }
    }

    fn is_missing(&self) -> bool {
        matches!(&self.content, Err((io::ErrorKind::NotFound, _)))
    }

    fn content(&self) -> io::Result<Vec<u8>> {
        match &self.content {
            Ok(c) => Ok(c.bytes.as_ref().clone()),
            Err((kind, message)) => Err(io::Error::new(*kind, message.clone())),
        }
    }
}
