//! WsRoute YAML: `---`-separated documents of `kind: WsRoute` (or a `kind: List` of them),
//! the same schema as the cluster resource.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_yaml::Value;

use super::yaml_path::{deserialize_at, line_at, parse_path, Seg};
use super::{FileCtx, LoadedRoutes, Severity};
use crate::api::WsRouteSpec;
use crate::model::{route_from_spec, RouteId, SpecBackends};

pub(super) const API_VERSION: &str = "wsgate.io/v1alpha1";
pub(super) const KIND: &str = "WsRoute";

/// The envelope of one WsRoute document. `status` is accepted (and ignored) so the output
/// of `kubectl get wsroute -o yaml` loads as is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(default)]
    metadata: Option<Metadata>,
    spec: WsRouteSpec,
    #[serde(default, rename = "status")]
    _status: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, rename = "labels")]
    _labels: BTreeMap<String, String>,
    #[serde(default, rename = "annotations")]
    _annotations: BTreeMap<String, String>,
}

/// One document of the file: its 1-based index and its text, padded with blank lines so
/// that serde_yaml's line numbers are the file's.
struct Segment {
    index: usize,
    text: String,
}

pub(super) fn load(file: &FileCtx<'_>, text: &str, out: &mut LoadedRoutes) {
    let mut seen: HashMap<(Option<String>, String), usize> = HashMap::new();
    let mut position = 0u64;
    for segment in split_documents(text) {
        let doc = DocCtx {
            file,
            index: segment.index,
            text: &segment.text,
        };
        let value: Value = match serde_yaml::from_str(&segment.text) {
            Ok(v) => v,
            Err(e) => {
                let (field, message, line) = split_yaml_error(&e);
                out.problems
                    .push(doc.problem(Severity::Error, None, line, field, message));
                continue;
            }
        };
        match &value {
            Value::Null => {}
            Value::Mapping(m) if m.get("kind").and_then(Value::as_str) == Some("List") => {
                let Some(items) = m.get("items").and_then(Value::as_sequence) else {
                    let line = line_at(doc.text, &[Seg::Key("items".into())]);
                    out.problems.push(doc.problem(
                        Severity::Error,
                        None,
                        line,
                        "items",
                        "a `kind: List` needs `items`, a list of WsRoute objects",
                    ));
                    continue;
                };
                for (i, item) in items.iter().enumerate() {
                    let path = vec![Seg::Key("items".into()), Seg::Index(i)];
                    doc.load_object(
                        item,
                        &path,
                        &format!("items[{i}]."),
                        position,
                        &mut seen,
                        out,
                    );
                    position += 1;
                }
            }
            _ => {
                doc.load_object(&value, &[], "", position, &mut seen, out);
                position += 1;
            }
        }
    }
}

struct DocCtx<'a> {
    file: &'a FileCtx<'a>,
    index: usize,
    text: &'a str,
}

impl DocCtx<'_> {
    fn problem(
        &self,
        severity: Severity,
        name: Option<&str>,
        line: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> super::FileProblem {
        self.file
            .problem(severity, Some(self.index), name, line, field, message)
    }

    /// One WsRoute object: the whole document, or one item of a `kind: List`.
    /// `prefix` is how field paths inside it are written (`items[2].`).
    fn load_object(
        &self,
        value: &Value,
        path: &[Seg],
        prefix: &str,
        position: u64,
        seen: &mut HashMap<(Option<String>, String), usize>,
        out: &mut LoadedRoutes,
    ) {
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let line_of = |field: &str| {
            let mut p = path.to_vec();
            p.extend(parse_path(field));
            line_at(self.text, &p)
        };
        let err = |field: &str, message: String| {
            let full = if field.is_empty() {
                prefix.trim_end_matches('.').to_string()
            } else {
                format!("{prefix}{field}")
            };
            self.problem(Severity::Error, name, line_of(field), full, message)
        };

        if !value.is_mapping() {
            out.problems.push(err(
                "",
                format!(
                    "expected a WsRoute object (apiVersion, kind, metadata, spec), found {}",
                    describe(value)
                ),
            ));
            return;
        }
        let mut envelope_ok = true;
        for (field, want) in [("apiVersion", API_VERSION), ("kind", KIND)] {
            match value.get(field) {
                Some(Value::String(s)) if s == want => {}
                Some(other) => {
                    envelope_ok = false;
                    out.problems
                        .push(err(field, format!("{} is not `{want}`", describe(other))));
                }
                None => {
                    envelope_ok = false;
                    out.problems
                        .push(err(field, format!("missing; write `{field}: {want}`")));
                }
            }
        }
        if !envelope_ok {
            return;
        }

        let doc: Document = match deserialize_at(self.text, path) {
            Ok(Some(doc)) => doc,
            Ok(None) => return,
            Err(e) => {
                let (field, message, line) = split_yaml_error(&e);
                // serde_yaml's path already starts at the document root (`items[2]...`).
                out.problems
                    .push(self.problem(Severity::Error, name, line, field, message));
                return;
            }
        };

        let metadata = doc.metadata.as_ref();
        let Some(name) = metadata
            .and_then(|m| m.name.as_deref())
            .filter(|n| !n.is_empty())
        else {
            out.problems.push(err(
                "metadata.name",
                "required: every route needs a name".into(),
            ));
            return;
        };
        let namespace = metadata.and_then(|m| m.namespace.clone());
        match seen.get(&(namespace.clone(), name.to_string())) {
            Some(first) => {
                out.problems.push(err(
                    "metadata.name",
                    format!("`{name}` is already used by document {first} of this file; names must be unique"),
                ));
                return;
            }
            None => {
                seen.insert((namespace, name.to_string()), self.index);
            }
        }

        let id = RouteId(format!(
            "{}#{}{} ({name})",
            self.file.label,
            self.index,
            list_suffix(prefix)
        ));
        match route_from_spec(
            id,
            self.file.order_base + position,
            &doc.spec,
            SpecBackends::Static,
        ) {
            Ok(mut route) => {
                let problems =
                    super::tls::resolve(&doc.spec, self.file.path, &mut route, &mut out.tls_files);
                let mut usable = true;
                for p in problems {
                    let mut problem = err(p.field, p.message);
                    if p.warning {
                        problem.severity = Severity::Warning;
                    } else {
                        usable = false;
                    }
                    out.problems.push(problem);
                }
                if let Some(p) =
                    super::jwks::resolve(self.file.path, &mut route, &mut out.tls_files)
                {
                    let mut problem = err(p.field, p.message);
                    problem.reason = Some(crate::model::ProblemReason::InvalidAuthRef);
                    if p.route_kept {
                        problem.severity = Severity::Warning;
                    } else {
                        usable = false;
                    }
                    out.problems.push(problem);
                }
                if usable {
                    out.routes.push(route);
                }
            }
            Err(errors) => out.problems.extend(errors.into_iter().map(|e| {
                let mut problem = err(&e.field, e.message);
                problem.reason = Some(e.reason);
                problem
            })),
        }
    }
}

/// `items[2].` → `/items[2]`, so list items get distinct route ids.
fn list_suffix(prefix: &str) -> String {
    match prefix.strip_suffix('.') {
        Some(p) if !p.is_empty() => format!("/{p}"),
        _ => String::new(),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("`{s}`"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

/// Splits a YAML stream at its document markers (`---` at the start of a line, which ends
/// even a block scalar), so that a syntax error in one document does not hide the others.
/// Text before the first marker is a document only if it has content.
fn split_documents(text: &str) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut start_line = 1;
    let mut explicit = false;
    let mut index = 0;
    let mut flush = |current: &mut String, start_line: usize, explicit: bool| {
        let has_content = current.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !t.starts_with('%')
        });
        if explicit || has_content {
            index += 1;
            let mut padded = "\n".repeat(start_line - 1);
            padded.push_str(current);
            segments.push(Segment {
                index,
                text: padded,
            });
        }
        current.clear();
    };
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker {
            flush(&mut current, start_line, explicit);
            start_line = i + 1;
            explicit = true;
        }
        current.push_str(line);
    }
    flush(&mut current, start_line, explicit);
    segments
}

/// serde_yaml's error as (field path, message without position, line).
fn split_yaml_error(e: &serde_yaml::Error) -> (String, String, Option<usize>) {
    let line = e.location().map(|l| l.line());
    let text = strip_positions(&e.to_string());
    let (path, message) = match text.split_once(": ") {
        Some((p, m)) if !p.contains(char::is_whitespace) && !p.contains('`') => {
            (p.to_string(), m.to_string())
        }
        _ => (String::new(), text.clone()),
    };
    let path = if path == "." { String::new() } else { path };
    // Name the offending key itself: `spec.prot`, not just `spec`.
    let key = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let field = match key {
        Some(k) if path.is_empty() => k.to_string(),
        Some(k) => format!("{path}.{k}"),
        None => path,
    };
    (field, message, line)
}

/// Drops " at line N column M" (the line is reported separately).
fn strip_positions(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = after.trim_start_matches(|c: char| c.is_ascii_digit());
        match digits.strip_prefix(" column ") {
            Some(col) => rest = col.trim_start_matches(|c: char| c.is_ascii_digit()),
            None => {
                out.push_str(" at line ");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
