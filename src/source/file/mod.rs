//! Standalone routes files: WsRoute YAML documents and Ocelot's ocelot.json.
//!
//! `load` reads the files once; `watch` polls them and reloads on every content change.
//! Each invalid document (or Ocelot route) is left out and reported as a [`FileProblem`]
//! naming file, document, field and line; its valid neighbours are kept.

mod json;
mod jwks;
mod ocelot;
mod tls;
mod watch;
mod wsroute;
mod yaml_path;

pub use watch::{watch, watch_with};

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::model::{ProblemReason, Route};

/// How bad a [`FileProblem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The document or route it names was left out.
    Error,
    /// The route was loaded; something in it is ignored (e.g. an Ocelot key wsgate does not
    /// support).
    Warning,
}

/// A problem with one place in one file:
/// `routes.yaml:12: document 2 (chat): spec.downstreamHostAndPorts[0].port: InvalidParameters:
/// 70000 is not a port` (the reason is there for a route's fields, as its status would say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FileProblem {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based YAML document index; `None` for ocelot.json and whole-file problems.
    pub document: Option<usize>,
    /// `metadata.name`, or for Ocelot the route's `Key` (else its `UpstreamPathTemplate`).
    pub name: Option<String>,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// Path of the field as written in the file (`spec.timeouts.idle`, `Routes[2].Priority`);
    /// empty for syntax errors.
    pub field: String,
    /// The condition reason a cluster would report for a route's field (`InvalidHost`);
    /// `None` for problems of the file itself.
    pub reason: Option<ProblemReason>,
    pub message: String,
}

impl FileProblem {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        match (self.document, &self.name) {
            (Some(d), Some(n)) => write!(f, ": document {d} ({n})")?,
            (Some(d), None) => write!(f, ": document {d}")?,
            (None, Some(n)) => write!(f, ": ({n})")?,
            (None, None) => {}
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        if let Some(reason) = self.reason {
            write!(f, ": {reason}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A file that could not be used at all. Problems inside a readable file are
/// [`FileProblem`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("no routes file given")]
    NoFiles,
    #[error("cannot read routes file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("routes file {} is not UTF-8 text (invalid byte at offset {offset})", path.display())]
    NotUtf8 { path: PathBuf, offset: usize },
}

/// The routes of every valid document, and every problem found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadedRoutes {
    pub routes: Vec<Route>,
    pub problems: Vec<FileProblem>,
    /// Certificate, key and CA files and JWKS files the routes name (read or not); watched
    /// with the routes files.
    pub tls_files: Vec<PathBuf>,
}

impl LoadedRoutes {
    /// Whether any document or route was left out (warnings do not count).
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(FileProblem::is_error)
    }
}

/// What routes files may refer to outside themselves, given on the command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileOptions {
    /// `--jwt-provider NAME=FILE`: the JWT settings (a `jwt` block: `issuer`, `audiences`,
    /// `jwksFile` relative to FILE, `leeway`) that ocelot.json's
    /// `AuthenticationProviderKey: NAME` stands for. Read and watched with the routes.
    pub jwt_providers: std::collections::BTreeMap<String, PathBuf>,
}

/// Reads several files (YAML WsRoute documents or ocelot.json, told apart by content) and
/// converts each document. `Route::order` follows declaration order across files.
pub fn load(paths: &[PathBuf]) -> Result<LoadedRoutes, FileError> {
    load_with(paths, &FileOptions::default())
}

/// `load` with the files' outside references (`--jwt-provider`).
pub fn load_with(paths: &[PathBuf], options: &FileOptions) -> Result<LoadedRoutes, FileError> {
    let contents: Vec<(PathBuf, io::Result<Vec<u8>>)> = paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p)))
        .collect();
    parse_files_with(contents, options)
}

/// Parses already-read file contents; shared by `load` and `watch` so a reload parses
/// exactly the bytes whose change it noticed.
pub(crate) fn parse_files(
    contents: Vec<(PathBuf, io::Result<Vec<u8>>)>,
) -> Result<LoadedRoutes, FileError> {
    parse_files_with(contents, &FileOptions::default())
}

pub(crate) fn parse_files_with(
    contents: Vec<(PathBuf, io::Result<Vec<u8>>)>,
    options: &FileOptions,
) -> Result<LoadedRoutes, FileError> {
    if contents.is_empty() {
        return Err(FileError::NoFiles);
    }
    let mut texts = Vec::with_capacity(contents.len());
    for (path, bytes) in contents {
        let bytes = bytes.map_err(|source| FileError::Read {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| FileError::NotUtf8 {
            path: path.clone(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        texts.push((path, text));
    }

    let labels = id_labels(texts.iter().map(|(p, _)| p.as_path()));
    let mut loaded = LoadedRoutes::default();
    for (index, ((path, text), label)) in texts.iter().zip(labels).enumerate() {
        let file = FileCtx {
            path,
            label: &label,
            order_base: (index as u64) << 32,
            options,
        };
        let before = loaded.routes.len() + loaded.problems.len();
        match detect(path, text) {
            Format::Ocelot => ocelot::load(&file, text, &mut loaded),
            Format::WsRoute => wsroute::load(&file, text, &mut loaded),
        }
        if loaded.routes.len() + loaded.problems.len() == before {
            loaded.problems.push(file.problem(
                Severity::Warning,
                None,
                None,
                None,
                "",
                "the file has no routes",
            ));
        }
    }
    Ok(loaded)
}

/// One file being parsed: how problems name it and how its routes are numbered.
pub(crate) struct FileCtx<'a> {
    pub path: &'a Path,
    /// File part of every `RouteId` from this file.
    pub label: &'a str,
    /// Added to the position within the file to give `Route::order`.
    pub order_base: u64,
    pub options: &'a FileOptions,
}

impl FileCtx<'_> {
    pub fn problem(
        &self,
        severity: Severity,
        document: Option<usize>,
        name: Option<&str>,
        line: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> FileProblem {
        FileProblem {
            severity,
            file: self.path.to_path_buf(),
            document,
            name: name.map(str::to_string),
            line,
            field: field.into(),
            reason: None,
            message: message.into(),
        }
    }
}

enum Format {
    WsRoute,
    Ocelot,
}

/// ocelot.json is a JSON object with a `Routes` (or older `ReRoutes`) key; everything else
/// is read as YAML (which also covers WsRoute documents written as JSON). A `.json` file
/// that does not parse is taken as ocelot.json so its syntax error is reported as JSON.
fn detect(path: &Path, text: &str) -> Format {
    match json::Doc::parse(text) {
        Ok(doc) => match doc.root().and_then(|r| r.entries()) {
            Some(entries) if entries.iter().any(|(k, _)| ocelot::is_routes_key(k)) => {
                Format::Ocelot
            }
            _ => Format::WsRoute,
        },
        Err(_)
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json")) =>
        {
            Format::Ocelot
        }
        Err(_) => Format::WsRoute,
    }
}

/// The file part of route ids: the file name, or the whole path when two files share a name.
fn id_labels<'a>(paths: impl Iterator<Item = &'a Path> + Clone) -> Vec<String> {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string())
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    for p in paths.clone() {
        *counts.entry(name(p)).or_default() += 1;
    }
    paths
        .map(|p| {
            let n = name(p);
            if counts[&n] > 1 {
                p.display().to_string()
            } else {
                n
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
