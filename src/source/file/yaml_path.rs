//! Reaching one node of a YAML document by its field path (`items[2].spec.timeouts`):
//! to deserialize a type there, or to learn the node's line. serde_yaml keeps no positions
//! in its `Value`, but every error it raises while deserializing carries the line of the
//! node being read, so a walk that fails on purpose at the target reports the target's line.

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use std::fmt;
use std::marker::PhantomData;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// `spec.downstreamHostAndPorts[1].port` → `[spec, downstreamHostAndPorts, 1, port]`.
pub(super) fn parse_path(path: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_string()));
        }
        while let Some((index, after)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                segs.push(Seg::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    segs
}

/// Deserializes `T` from the node at `path` of a single-document YAML text.
/// `Ok(None)` when the path does not exist.
pub(super) fn deserialize_at<T: DeserializeOwned>(
    text: &str,
    path: &[Seg],
) -> Result<Option<T>, serde_yaml::Error> {
    At::<T> {
        path,
        _t: PhantomData,
    }
    .deserialize(serde_yaml::Deserializer::from_str(text))
}

/// Line (1-based) of the node at `path`, or of its nearest ancestor that exists.
pub(super) fn line_at(text: &str, path: &[Seg]) -> Option<usize> {
    (0..=path.len())
        .rev()
        .find_map(|len| match deserialize_at::<Probe>(text, &path[..len]) {
            Ok(_) => None,
            Err(e) => e.location().map(|l| l.line()),
        })
}

struct At<'p, T> {
    path: &'p [Seg],
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for At<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
        match self.path.split_first() {
            None => T::deserialize(d).map(Some),
            Some((Seg::Key(key), rest)) => d.deserialize_map(Walk::<T> {
                seg: Seg::Key(key.clone()),
                rest,
                _t: PhantomData,
            }),
            Some((Seg::Index(i), rest)) => d.deserialize_seq(Walk::<T> {
                seg: Seg::Index(*i),
                rest,
                _t: PhantomData,
            }),
        }
    }
}

struct Walk<'p, T> {
    seg: Seg,
    rest: &'p [Seg],
    _t: PhantomData<T>,
}

impl<'de, T: DeserializeOwned> Visitor<'de> for Walk<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.seg {
            Seg::Key(k) => write!(f, "a mapping with `{k}`"),
            Seg::Index(i) => write!(f, "a list with item {i}"),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let Seg::Key(want) = &self.seg else {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        };
        let mut found = None;
        // Every entry is read to the end: serde_yaml rejects a mapping left half-read.
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            if found.is_none() && key.as_str() == Some(want.as_str()) {
                found = map.next_value_seed(At::<T> {
                    path: self.rest,
                    _t: PhantomData,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
        let Seg::Index(want) = self.seg else {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        };
        let mut found = None;
        let mut i = 0;
        loop {
            if i == want {
                match seq.next_element_seed(At::<T> {
                    path: self.rest,
                    _t: PhantomData,
                })? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

/// Fails on whatever node it is asked to read, so the error carries that node's line.
struct Probe;

impl<'de> serde::Deserialize<'de> for Probe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Refuse;
        impl<'de> Visitor<'de> for Refuse {
            type Value = Probe;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("nothing (position probe)")
            }
        }
        d.deserialize_any(Refuse)
    }
}
