//! The per-request lookup: indexes built by `compile`, and `RouteTable::find`.

use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::host::{fold_hash, RequestHost};
use super::template::Captures;
use super::{CompiledRoute, RouteMatch, RouteTable};
use crate::model::HostPattern;

/// A map keyed by `fold_hash` values. They are hashes already, so they are used as they
/// are instead of going through SipHash again on every lookup (bench/instructions.sh: a
/// few hundred instructions per request). Only routes put keys in these maps, never
/// requests, so no client can arrange collisions.
type FoldMap<V> = HashMap<u64, V, BuildHasherDefault<FoldHashed>>;

/// The `Hasher` of a `FoldMap`: passes the key through.
#[derive(Default)]
pub(crate) struct FoldHashed(u64);

impl Hasher for FoldHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }

    /// Not reached with `u64` keys; mixes the bytes in, should a key of another type appear.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Routes of one host pattern, keyed by their first path segment when it is a literal
/// (folded hash); the rest (first segment a placeholder or catch-all) are always candidates.
#[derive(Debug, Default)]
pub(crate) struct PathIndex {
    by_first: FoldMap<Vec<usize>>,
    fallback: Vec<usize>,
}

/// Routes of one exact host or wildcard suffix, with or without port.
#[derive(Debug)]
struct HostEntry {
    /// Lower-cased name, or suffix with its leading dot for wildcards.
    text: String,
    port: Option<u16>,
    paths: PathIndex,
}

/// Routes indexed by host pattern, then by first path segment.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: FoldMap<Vec<HostEntry>>,
    wildcard: FoldMap<Vec<HostEntry>>,
    any: PathIndex,
}

impl HostIndex {
    /// Adds route `idx`; `first_literal` is its lower-cased first path segment, if literal.
    pub fn insert(&mut self, idx: usize, host: Option<&HostPattern>, first_literal: Option<&str>) {
        let paths = match host {
            None => &mut self.any,
            Some(HostPattern::Exact { name, port }) => entry(&mut self.exact, name, *port),
            Some(HostPattern::Wildcard { suffix, port }) => {
                entry(&mut self.wildcard, suffix, *port)
            }
        };
        match first_literal {
            Some(first) => paths
                .by_first
                .entry(fold_hash(first))
                .or_default()
                .push(idx),
            None => paths.fallback.push(idx),
        }
    }
}

fn entry<'a>(
    map: &'a mut FoldMap<Vec<HostEntry>>,
    text: &str,
    port: Option<u16>,
) -> &'a mut PathIndex {
    let entries = map.entry(fold_hash(text)).or_default();
    let at = match entries
        .iter()
        .position(|e| e.text == text && e.port == port)
    {
        Some(at) => at,
        None => {
            entries.push(HostEntry {
                text: text.to_string(),
                port,
                paths: PathIndex::default(),
            });
            entries.len() - 1
        }
    };
    &mut entries[at].paths
}

/// Host entries for `text` in precedence order: the one with the request's port, then the
/// port-less one.
fn host_entries<'i>(
    map: &'i FoldMap<Vec<HostEntry>>,
    text: &'i str,
    port: Option<u16>,
) -> impl Iterator<Item = &'i PathIndex> + 'i {
    let entries = map.get(&fold_hash(text)).map_or(&[][..], Vec::as_slice);
    let with_port = entries
        .iter()
        .filter(move |e| port.is_some() && e.port == port && e.text.eq_ignore_ascii_case(text));
    let without = entries
        .iter()
        .filter(move |e| e.port.is_none() && e.text.eq_ignore_ascii_case(text));
    with_port.chain(without).map(|e| &e.paths)
}

/// Template specificity, then `priority`, then declaration: greater wins.
fn precedence(routes: &[CompiledRoute], a: usize, b: usize) -> Ordering {
    let (ra, rb) = (&routes[a], &routes[b]);
    let (ua, ub) = (&ra.parsed.upstream, &rb.parsed.upstream);
    ua.rank
        .cmp(&ub.rank)
        .then_with(|| ua.query_rank.cmp(&ub.query_rank))
        .then_with(|| ra.route.priority.cmp(&rb.route.priority))
        .then_with(|| Reverse(ra.route.order).cmp(&Reverse(rb.route.order)))
        .then_with(|| Reverse(a).cmp(&Reverse(b)))
}

impl PathIndex {
    fn best(
        &self,
        routes: &[CompiledRoute],
        path: &str,
        query: Option<&str>,
        method: &http::Method,
    ) -> Option<(usize, Captures)> {
        let first = path
            .strip_prefix('/')
            .map(|rest| rest.split('/').next().unwrap_or(""));
        let keyed = first
            .and_then(|f| self.by_first.get(&fold_hash(f)))
            .map_or(&[][..], Vec::as_slice);
        let mut best: Option<(usize, Captures)> = None;
        let mut scratch = Captures::new();
        for &idx in keyed.iter().chain(&self.fallback) {
            let route = &routes[idx];
            if !route.route.methods.is_empty() && !route.route.methods.contains(method) {
                continue;
            }
            if best
                .as_ref()
                .is_some_and(|(b, _)| precedence(routes, idx, *b) != Ordering::Greater)
            {
                continue;
            }
            if route.parsed.upstream.matches(path, query, &mut scratch) {
                best = Some((idx, std::mem::take(&mut scratch)));
            }
        }
        best
    }
}

impl RouteTable {
    /// Finds the route for a request. `host` is the `Host` header as received (may carry
    /// `:port`, any case; `None` for HTTP/1.0 without one); `path` is the raw path without
    /// query; `query` the raw query string without `?`. Methods: a route with no methods
    /// takes every method, otherwise the request's method must be listed.
    ///
    /// When several routes match, the first rule that tells them apart decides:
    /// 1. host precision: an exact host with the request's port, then the exact host without
    ///    port, then wildcards from the longest suffix to the shortest (at equal suffix the
    ///    one with the port first), then routes without host. A request without `Host` sees
    ///    only routes without host. A more precise host wins even with a less specific path.
    /// 2. template specificity, segment by segment from the left: literal > placeholder or
    ///    embedded placeholder > catch-all. Where one template has ended, a real segment of
    ///    the other wins (more segments before fewer), but a catch-all loses (it has
    ///    Ocelot's lowest priority: `/goods` beats `/goods/{rest}` for `/goods`, and `/`
    ///    beats `/{everything}` for `/`). Then the template with more query conditions, then
    ///    the one that captures the whole query.
    /// 3. higher `priority`.
    /// 4. lower `order` (declaration order), then lower route id.
    ///
    /// Costs the same with 10 or 10,000 routes: only routes of the request's host patterns
    /// whose first literal segment equals the request's (plus those starting with a
    /// placeholder) are tried. Allocates nothing unless a template has more than eight
    /// placeholders.
    pub fn find<'t, 'r>(
        &'t self,
        host: Option<&str>,
        path: &'r str,
        query: Option<&'r str>,
        method: &http::Method,
    ) -> Option<RouteMatch<'t, 'r>> {
        let routes = &self.routes;
        let best = |paths: &PathIndex| paths.best(routes, path, query, method);
        // Without host routes (a common single-host install) the request's host is not
        // even parsed.
        let hosted = !self.index.exact.is_empty() || !self.index.wildcard.is_empty();
        let found = host
            .filter(|_| hosted)
            .and_then(RequestHost::parse)
            .and_then(|h| {
                host_entries(&self.index.exact, h.name, h.port)
                    .find_map(best)
                    .or_else(|| {
                        h.suffixes().find_map(|suffix| {
                            host_entries(&self.index.wildcard, suffix, h.port).find_map(best)
                        })
                    })
            })
            .or_else(|| best(&self.index.any));
        found.map(|(idx, captures)| RouteMatch {
            route: &self.routes[idx],
            index: idx,
            path,
            query,
            captures,
        })
    }
}
