//! JSON as .NET's configuration reader takes it (comments and trailing commas allowed),
//! with the line of every value, so ocelot.json problems can point at their line.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// A parsed JSON text. Values are read lazily from the text, which keeps their position.
pub(super) struct Doc {
    text: String,
    /// Byte offsets of every `\n`, for offset → line.
    newlines: Vec<usize>,
}

impl Doc {
    pub fn parse(text: &str) -> Result<Doc, serde_json::Error> {
        let text = strip_comments_and_trailing_commas(text);
        serde_json::from_str::<&RawValue>(&text)?;
        let newlines = text.match_indices('\n').map(|(i, _)| i).collect();
        Ok(Doc { text, newlines })
    }

    /// The top-level value (`None` only if the text stopped parsing, which `parse` rules out).
    pub fn root(&self) -> Option<Node<'_>> {
        let raw: &RawValue = serde_json::from_str(&self.text).ok()?;
        Some(Node { doc: self, raw })
    }

    fn line_of(&self, s: &str) -> Option<usize> {
        let offset = (s.as_ptr() as usize).checked_sub(self.text.as_ptr() as usize)?;
        if offset > self.text.len() {
            return None;
        }
        Some(self.newlines.partition_point(|&nl| nl < offset) + 1)
    }
}

/// One JSON value inside a [`Doc`].
#[derive(Clone, Copy)]
pub(super) struct Node<'a> {
    doc: &'a Doc,
    raw: &'a RawValue,
}

impl<'a> Node<'a> {
    pub fn line(&self) -> Option<usize> {
        self.doc.line_of(self.raw.get())
    }

    /// Object entries in file order (duplicates kept), or `None` if this is not an object.
    pub fn entries(&self) -> Option<Vec<(String, Node<'a>)>> {
        let Entries(entries) = serde_json::from_str(self.raw.get()).ok()?;
        Some(
            entries
                .into_iter()
                .map(|(k, raw)| (k, Node { doc: self.doc, raw }))
                .collect(),
        )
    }

    /// Array items, or `None` if this is not an array.
    pub fn items(&self) -> Option<Vec<Node<'a>>> {
        let items: Vec<&RawValue> = serde_json::from_str(self.raw.get()).ok()?;
        Some(
            items
                .into_iter()
                .map(|raw| Node { doc: self.doc, raw })
                .collect(),
        )
    }

    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.raw.get()).unwrap_or(serde_json::Value::Null)
    }
}

/// Object entries in file order, borrowing values from the text.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// Blanks out `//` and `/* */` comments and commas before `}` or `]`, which .NET's JSON
/// configuration reader accepts and ocelot.json files use. Every byte keeps its offset
/// (newlines stay), so positions in the result are positions in the file.
pub(super) fn strip_comments_and_trailing_commas(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    let mut in_string = false;
    // Offset of the last comma seen outside strings with only blanks/comments after it.
    let mut pending_comma: Option<usize> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                pending_comma = None;
                i += 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    out[i] = b' ';
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = text[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |e| i + 2 + e + 2);
                for o in &mut out[i..end] {
                    if *o != b'\n' {
                        *o = b' ';
                    }
                }
                i = end;
            }
            b',' => {
                pending_comma = Some(i);
                i += 1;
            }
            b'}' | b']' => {
                if let Some(c) = pending_comma.take() {
                    out[c] = b' ';
                }
                i += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            _ => {
                pending_comma = None;
                i += 1;
            }
        }
    }
    // Only ASCII bytes outside strings were replaced by ASCII spaces, and multi-byte
    // characters inside comments were blanked byte by byte, so this stays valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}
