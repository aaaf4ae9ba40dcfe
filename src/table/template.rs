//! Ocelot path templates: parsed once in `compile`, matched per request without allocating.
//!
//! Upstream rules (Ocelot's `routing.rst`, where it is clear):
//! - `{name}` as a whole segment matches one non-empty segment;
//! - a segment may embed placeholders between literals (`v{version}`, `{a}-{b}`, `{id}.json`);
//!   each embedded placeholder is non-empty and ends at the first following occurrence of the
//!   literal after it (the last literal of a segment anchors at the segment's end);
//! - a `{name}` that is the last segment of the path is a catch-all: it swallows the rest of
//!   the path including slashes and may be empty, so `/invoices/{url}` matches `/invoices`,
//!   `/invoices/` and `/invoices/a/b`, and `/{everything}` matches every path including `/`;
//! - trailing slash: a template ending in `/` (other than `/` itself) matches with or without
//!   the trailing slash; any other template (no catch-all) does not match an extra trailing
//!   slash, because Ocelot anchors its pattern at the end (`/api/rooms` ≠ `/api/rooms/`);
//! - query part: `?key={name}` requires the parameter `key` and captures its raw value (the
//!   first occurrence); `?key=value` requires that value; `?{name}` captures the whole query
//!   string, possibly empty. Unlike Ocelot, whose regex wants the parameter first in the query,
//!   the parameter may stand anywhere in the query.
//!
//! Captured values are byte ranges of the request as received: nothing is decoded.

use smallvec::SmallVec;

/// Why a path template does not parse. Each variant carries the template as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{template}` must start with `/`")]
    NoLeadingSlash { template: String },
    #[error("`{template}` has a `}}` without a matching `{{`")]
    UnopenedBrace { template: String },
    #[error("`{template}` has a `{{` without a matching `}}`")]
    UnclosedBrace { template: String },
    #[error("`{template}` has an empty placeholder `{{}}`")]
    EmptyPlaceholder { template: String },
    #[error(
        "`{template}`: placeholder `{{{name}}}` contains `{character}`; names are plain words"
    )]
    PlaceholderCharacter {
        template: String,
        name: String,
        character: char,
    },
    #[error("`{template}` uses the placeholder `{{{name}}}` twice")]
    DuplicatePlaceholder { template: String, name: String },
    #[error("`{template}`: placeholders in `{segment}` need literal text between them")]
    AdjacentPlaceholders { template: String, segment: String },
    #[error("`{template}`: query part `{part}` must be `key={{placeholder}}`, `key=value`, or the whole query `{{placeholder}}`")]
    QueryPart { template: String, part: String },
    #[error("`{template}` uses `{{{name}}}`, which the upstream template does not capture")]
    NotCaptured { template: String, name: String },
}

/// Where one captured value lies in the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub in_query: bool,
    pub start: usize,
    pub end: usize,
}

impl Span {
    fn path(start: usize, end: usize) -> Self {
        Span {
            in_query: false,
            start,
            end,
        }
    }

    fn query(start: usize, end: usize) -> Self {
        Span {
            in_query: true,
            start,
            end,
        }
    }

    pub fn text<'r>(&self, path: &'r str, query: Option<&'r str>) -> Option<&'r str> {
        let source = if self.in_query {
            query.unwrap_or("")
        } else {
            path
        };
        source.get(self.start..self.end)
    }
}

/// One span per placeholder, indexed like `UpstreamTemplate::names`; inline so matching does
/// not allocate for templates with up to eight placeholders.
pub(crate) type Captures = SmallVec<[Span; 8]>;

#[derive(Debug)]
enum Segment {
    Literal(String),
    Placeholder(usize),
    Embedded(Vec<Piece>),
    CatchAll(usize),
}

#[derive(Debug)]
enum Piece {
    Literal(String),
    Placeholder(usize),
}

#[derive(Debug)]
enum QueryValue {
    Placeholder(usize),
    Literal(String),
}

#[derive(Debug)]
struct QueryCondition {
    key: String,
    value: QueryValue,
}

// Precedence ranks of one template position; higher is more specific. The end of a template
// ranks above a catch-all (so `/goods` beats `/goods/{rest}` for `/goods`, Ocelot's "catch-all
// has the lowest priority") and below any real segment (more segments before fewer).
const RANK_LITERAL: u8 = 4;
const RANK_PLACEHOLDER: u8 = 3;
const RANK_END: u8 = 2;
const RANK_CATCH_ALL: u8 = 1;

/// A parsed upstream template.
#[derive(Debug)]
pub(crate) struct UpstreamTemplate {
    pub names: Vec<String>,
    segments: Vec<Segment>,
    optional_trailing_slash: bool,
    query: Vec<QueryCondition>,
    whole_query: Option<usize>,
    case_sensitive: bool,
    /// Per-position ranks, compared lexicographically (see the `RANK_*` consts).
    pub rank: Vec<u8>,
    /// Query conditions (`key=…`), then whether the whole query is captured.
    pub query_rank: (usize, bool),
    /// The first segment when it is a literal, lower-cased: the path index key.
    pub first_literal: Option<String>,
    /// The template with placeholder names blanked (`/api/{}/{}`): equal for templates that
    /// match the same requests; case is folded by the caller when it has to be.
    pub normalized: String,
}

enum Token<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// Splits `text` into literals and `{name}` placeholders, rejecting unbalanced braces and
/// empty or malformed names. `whole` is the full template, for messages.
fn tokenize<'a>(text: &'a str, whole: &str) -> Result<Vec<Token<'a>>, TemplateError> {
    let template = || whole.to_string();
    let mut tokens = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                tokens.push(Token::Literal(rest));
                break;
            }
            Some(i) if rest.as_bytes()[i] == b'}' => {
                return Err(TemplateError::UnopenedBrace {
                    template: template(),
                });
            }
            Some(i) => {
                if i > 0 {
                    tokens.push(Token::Literal(&rest[..i]));
                }
                let after = &rest[i + 1..];
                let close = match after.find(['{', '}']) {
                    Some(j) if after.as_bytes()[j] == b'}' => j,
                    _ => {
                        return Err(TemplateError::UnclosedBrace {
                            template: template(),
                        })
                    }
                };
                let name = &after[..close];
                if name.trim().is_empty() {
                    return Err(TemplateError::EmptyPlaceholder {
                        template: template(),
                    });
                }
                if let Some(character) = name.chars().find(|c| matches!(c, '/' | '?' | '&' | '=')) {
                    return Err(TemplateError::PlaceholderCharacter {
                        template: template(),
                        name: name.to_string(),
                        character,
                    });
                }
                tokens.push(Token::Placeholder(name));
                rest = &after[close + 1..];
            }
        }
    }
    Ok(tokens)
}

/// Replaces every `{name}` with `{}`; only called on text `tokenize` accepted.
fn blank_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_name = false;
    for c in text.chars() {
        match c {
            '{' => {
                in_name = true;
                out.push('{');
            }
            '}' => {
                in_name = false;
                out.push('}');
            }
            _ if in_name => {}
            _ => out.push(c),
        }
    }
    out
}

impl UpstreamTemplate {
    pub fn parse(template: &str, case_sensitive: bool) -> Result<Self, TemplateError> {
        if !template.starts_with('/') {
            return Err(TemplateError::NoLeadingSlash {
                template: template.to_string(),
            });
        }
        let (path, query) = match template.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (template, None),
        };
        let mut names: Vec<String> = Vec::new();
        let mut add_name = |name: &str| -> Result<usize, TemplateError> {
            if names.iter().any(|n| n == name) {
                return Err(TemplateError::DuplicatePlaceholder {
                    template: template.to_string(),
                    name: name.to_string(),
                });
            }
            names.push(name.to_string());
            Ok(names.len() - 1)
        };

        let mut raw: Vec<&str> = path[1..].split('/').collect();
        let optional_trailing_slash = raw.len() > 1 && raw.last() == Some(&"");
        if optional_trailing_slash {
            raw.pop();
        }
        let last = raw.len() - 1;
        let mut segments = Vec::with_capacity(raw.len());
        for (i, text) in raw.iter().enumerate() {
            let tokens = tokenize(text, template)?;
            let segment = match tokens.as_slice() {
                [] => Segment::Literal(String::new()),
                [Token::Literal(l)] => Segment::Literal((*l).to_string()),
                [Token::Placeholder(name)] if i == last && !optional_trailing_slash => {
                    Segment::CatchAll(add_name(name)?)
                }
                [Token::Placeholder(name)] => Segment::Placeholder(add_name(name)?),
                _ => {
                    let mut pieces = Vec::with_capacity(tokens.len());
                    for t in &tokens {
                        pieces.push(match t {
                            Token::Literal(l) => Piece::Literal((*l).to_string()),
                            Token::Placeholder(name) => {
                                if matches!(pieces.last(), Some(Piece::Placeholder(_))) {
                                    return Err(TemplateError::AdjacentPlaceholders {
                                        template: template.to_string(),
                                        segment: (*text).to_string(),
                                    });
                                }
                                Piece::Placeholder(add_name(name)?)
                            }
                        });
                    }
                    Segment::Embedded(pieces)
                }
            };
            segments.push(segment);
        }

        let mut conditions = Vec::new();
        let mut whole_query = None;
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            let tokens = tokenize(q, template)?;
            if let [Token::Placeholder(name)] = tokens.as_slice() {
                whole_query = Some(add_name(name)?);
            } else {
                for part in q.split('&') {
                    let bad = || TemplateError::QueryPart {
                        template: template.to_string(),
                        part: part.to_string(),
                    };
                    let (key, value) = part.split_once('=').ok_or_else(bad)?;
                    if key.is_empty() || key.contains(['{', '}']) {
                        return Err(bad());
                    }
                    let value = match tokenize(value, template)?.as_slice() {
                        [] => QueryValue::Literal(String::new()),
                        [Token::Literal(l)] => QueryValue::Literal((*l).to_string()),
                        [Token::Placeholder(name)] => QueryValue::Placeholder(add_name(name)?),
                        _ => return Err(bad()),
                    };
                    conditions.push(QueryCondition {
                        key: key.to_string(),
                        value,
                    });
                }
            }
        }

        let mut rank: Vec<u8> = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => RANK_LITERAL,
                Segment::Placeholder(_) | Segment::Embedded(_) => RANK_PLACEHOLDER,
                Segment::CatchAll(_) => RANK_CATCH_ALL,
            })
            .collect();
        rank.push(RANK_END);
        let first_literal = match segments.first() {
            Some(Segment::Literal(l)) => Some(l.to_ascii_lowercase()),
            _ => None,
        };
        Ok(UpstreamTemplate {
            names,
            segments,
            optional_trailing_slash,
            query_rank: (conditions.len(), whole_query.is_some()),
            query: conditions,
            whole_query,
            case_sensitive,
            rank,
            first_literal,
            normalized: blank_names(template),
        })
    }

    fn same(&self, template: &str, request: &str) -> bool {
        if self.case_sensitive {
            template == request
        } else {
            template.eq_ignore_ascii_case(request)
        }
    }

    fn same_bytes(&self, template: &[u8], request: &[u8]) -> bool {
        if self.case_sensitive {
            template == request
        } else {
            template.eq_ignore_ascii_case(request)
        }
    }

    /// Matches a raw path (and query) and fills `caps` with one span per placeholder.
    pub fn matches(&self, path: &str, query: Option<&str>, caps: &mut Captures) -> bool {
        caps.clear();
        caps.resize(self.names.len(), Span::default());
        if !path.starts_with('/') {
            return false;
        }
        self.match_path(path, caps) && self.match_query(query, caps)
    }

    fn match_path(&self, path: &str, caps: &mut Captures) -> bool {
        // `pos` is where the current request segment starts; it passes `path.len()` by one
        // once the last segment has been consumed.
        let mut pos = 1;
        for segment in &self.segments {
            if let Segment::CatchAll(idx) = segment {
                let start = pos.min(path.len());
                caps[*idx] = Span::path(start, path.len());
                return true;
            }
            if pos > path.len() {
                return false;
            }
            let end = path[pos..].find('/').map_or(path.len(), |o| pos + o);
            let text = &path[pos..end];
            let ok = match segment {
                Segment::Literal(l) => self.same(l, text),
                Segment::Placeholder(idx) => {
                    caps[*idx] = Span::path(pos, end);
                    !text.is_empty()
                }
                Segment::Embedded(pieces) => self.match_embedded(pieces, text, pos, caps),
                Segment::CatchAll(_) => true,
            };
            if !ok {
                return false;
            }
            pos = end + 1;
        }
        pos == path.len() + 1 || (self.optional_trailing_slash && pos == path.len())
    }

    fn match_embedded(
        &self,
        pieces: &[Piece],
        text: &str,
        base: usize,
        caps: &mut Captures,
    ) -> bool {
        let bytes = text.as_bytes();
        let mut at = 0;
        let mut i = 0;
        while i < pieces.len() {
            match &pieces[i] {
                Piece::Literal(l) => {
                    let l = l.as_bytes();
                    if bytes.len() < at + l.len() || !self.same_bytes(l, &bytes[at..at + l.len()]) {
                        return false;
                    }
                    at += l.len();
                    i += 1;
                }
                Piece::Placeholder(idx) => {
                    let value_end = match pieces.get(i + 1) {
                        None => bytes.len(),
                        Some(Piece::Literal(l)) => {
                            let l = l.as_bytes();
                            let found = if i + 2 == pieces.len() {
                                // The last literal anchors at the segment's end.
                                bytes
                                    .len()
                                    .checked_sub(l.len())
                                    .filter(|&s| s > at && self.same_bytes(l, &bytes[s..]))
                            } else {
                                self.find_from(bytes, l, at + 1)
                            };
                            match found {
                                Some(f) => f,
                                None => return false,
                            }
                        }
                        // `parse` never puts two placeholders side by side.
                        Some(Piece::Placeholder(_)) => return false,
                    };
                    if value_end <= at {
                        return false;
                    }
                    caps[*idx] = Span::path(base + at, base + value_end);
                    at = value_end;
                    i += 1;
                }
            }
        }
        at == bytes.len()
    }

    fn find_from(&self, haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        if needle.is_empty() || haystack.len() < needle.len() {
            return None;
        }
        (from..=haystack.len() - needle.len())
            .find(|&s| self.same_bytes(needle, &haystack[s..s + needle.len()]))
    }

    fn match_query(&self, query: Option<&str>, caps: &mut Captures) -> bool {
        let q = query.unwrap_or("");
        for cond in &self.query {
            let mut found = false;
            let mut start = 0;
            for part in q.split('&') {
                let (key, value_start) = match part.find('=') {
                    Some(e) => (&part[..e], start + e + 1),
                    None => (part, start + part.len()),
                };
                let value_end = start + part.len();
                start = value_end + 1;
                if !self.same(&cond.key, key) {
                    continue;
                }
                match &cond.value {
                    QueryValue::Placeholder(idx) => {
                        caps[*idx] = Span::query(value_start, value_end);
                        found = true;
                        break;
                    }
                    QueryValue::Literal(l) => {
                        if self.same(l, &q[value_start..value_end]) {
                            found = true;
                            break;
                        }
                    }
                }
            }
            if !found {
                return false;
            }
        }
        if let Some(idx) = self.whole_query {
            caps[idx] = Span::query(0, q.len());
        }
        true
    }
}

fn key_of(part: &str) -> &str {
    part.split_once('=').map_or(part, |(k, _)| k)
}

/// A parsed downstream template: text with placeholders taken from the upstream template.
#[derive(Debug)]
pub(crate) struct DownstreamTemplate {
    path: Vec<Piece>,
    query: Option<Vec<Piece>>,
}

impl DownstreamTemplate {
    pub fn parse(template: &str, upstream_names: &[String]) -> Result<Self, TemplateError> {
        if !template.starts_with('/') {
            return Err(TemplateError::NoLeadingSlash {
                template: template.to_string(),
            });
        }
        let pieces = |text: &str| -> Result<Vec<Piece>, TemplateError> {
            tokenize(text, template)?
                .into_iter()
                .map(|t| match t {
                    Token::Literal(l) => Ok(Piece::Literal(l.to_string())),
                    Token::Placeholder(name) => upstream_names
                        .iter()
                        .position(|n| n == name)
                        .map(Piece::Placeholder)
                        .ok_or_else(|| TemplateError::NotCaptured {
                            template: template.to_string(),
                            name: name.to_string(),
                        }),
                })
                .collect()
        };
        Ok(match template.split_once('?') {
            Some((p, q)) => DownstreamTemplate {
                path: pieces(p)?,
                query: Some(pieces(q)?),
            },
            None => DownstreamTemplate {
                path: pieces(template)?,
                query: None,
            },
        })
    }

    /// The downstream path and query (Ocelot's `DownstreamUrlCreatorMiddleware`):
    /// - the path is the template filled with the captures; when it ends with `/` but the
    ///   request path does not, trailing slashes are trimmed (`/invoices` → `/api/invoices`);
    /// - without `?` in the template, the request's query goes on unchanged except that a
    ///   parameter `name=value` whose name and value are a placeholder's is dropped (it was
    ///   consumed by the template, Ocelot issue 952; use a different placeholder name to keep it);
    /// - with `?`, the filled template query comes first, then the request's parameters whose
    ///   key is neither a placeholder name nor already set by the template. Repeated
    ///   parameters of the request are kept (Ocelot merges them into one, losing values).
    pub fn render(
        &self,
        names: &[String],
        caps: &Captures,
        path: &str,
        query: Option<&str>,
    ) -> String {
        let value = |idx: usize| {
            caps.get(idx)
                .and_then(|s| s.text(path, query))
                .unwrap_or("")
        };
        let fill = |pieces: &[Piece], out: &mut String| {
            for p in pieces {
                match p {
                    Piece::Literal(l) => out.push_str(l),
                    Piece::Placeholder(idx) => out.push_str(value(*idx)),
                }
            }
        };
        let mut out = String::with_capacity(path.len() + query.map_or(0, str::len) + 32);
        fill(&self.path, &mut out);
        if out.ends_with('/') && !path.ends_with('/') {
            let kept = out.trim_end_matches('/').len().max(1);
            out.truncate(kept);
        }

        let is_placeholder = |key: &str| names.iter().any(|n| n == key);
        let mut sent = String::new();
        match &self.query {
            None => {
                let q = query.unwrap_or("");
                let consumed = |part: &str| {
                    part.split_once('=').is_some_and(|(k, v)| {
                        names
                            .iter()
                            .position(|n| n == k)
                            .is_some_and(|i| value(i) == v)
                    })
                };
                if q.split('&').any(consumed) {
                    for part in q.split('&').filter(|p| !consumed(p)) {
                        if !sent.is_empty() {
                            sent.push('&');
                        }
                        sent.push_str(part);
                    }
                } else {
                    sent.push_str(q);
                }
            }
            Some(template_query) => {
                let mut filled = String::new();
                fill(template_query, &mut filled);
                let mut keys: Vec<&str> = Vec::new();
                let mut push = |part: &str| {
                    if !sent.is_empty() {
                        sent.push('&');
                    }
                    sent.push_str(part);
                };
                for part in filled.split('&').filter(|p| !key_of(p).is_empty()) {
                    keys.push(key_of(part));
                    push(part);
                }
                for part in query.unwrap_or("").split('&') {
                    let key = key_of(part);
                    if !key.is_empty() && !is_placeholder(key) && !keys.contains(&key) {
                        push(part);
                    }
                }
            }
        }
        if !sent.is_empty() {
            out.push('?');
            out.push_str(&sent);
        }
        out
    }
}
