//! VIC's "extraconfig" key/value format, both directions.
//!
//! A config struct is flattened into keys such as
//! `guestinfo.vice./sessions|<id>/cmd/Path` (read-only for the guest) or
//! `guestinfo.vice..sessions|<id>.started` (the guest may write it). The rules, as VIC's encoder
//! applies them:
//!
//! * a visible read-only key is `guestinfo.vice.` + `/` + the path with every separator `/`;
//! * a visible read-write key is `guestinfo.vice.` + `.` + the path with every separator `.`;
//! * a map entry `e` is appended as `|e`; the map's own key holds the sorted entry names joined by `|`;
//! * a slice of structs puts element `i` under `|i` and holds `len - 1` in its own key;
//! * a slice of strings holds `len - 1` in its key and the elements joined by `|` in `<key>~`;
//! * everything below a non-persistent field carries the suffix `@non-persistent`;
//! * empty slices, empty maps and absent optional values produce no keys at all;
//! * an empty string travels as the literal `<nil>`, and a value that reads back as `""` means the key
//!   is missing.
//!
//! Decoding merges into an existing value: a missing key leaves the field alone, and map entries that
//! are not listed are kept.
//!
//! VIC joins string slices with `|` and never escapes it, so an element containing `|` is cut short by
//! VIC's decoder. We write VIC's lossy form unchanged, and when (only when) an element contains `|`
//! also `<key>~b64`: every element in standard base64, joined by `|`. Old readers ignore that key. We
//! prefer it when it is present and agrees with `<key>~` (joining its decoded elements with `|` gives
//! `<key>~` exactly), so a stale extension left beside a value rewritten by an old VCH is never used.

mod value;

use std::collections::BTreeMap;

use base64::Engine as _;
pub use value::{Bytes, Scalar};

/// Every visible key starts with this.
pub const PREFIX: &str = "guestinfo.vice.";
/// Suffix of every key below a non-persistent field (a `docker exec` session).
pub const NON_PERSISTENT: &str = "@non-persistent";
/// How an empty string is written, so that it is not mistaken for a missing key.
pub const NIL: &str = "<nil>";
/// Suffix of our lossless string-slice extension (see the module docs).
pub const LOSSLESS_SUFFIX: &str = "~b64";
/// The largest slice index we accept when decoding; a larger one is an error, not an allocation.
pub const MAX_SLICE_INDEX: usize = 65_535;

/// Who may write a key: only the host (`/`), or the guest too (`.`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    ReadOnly,
    ReadWrite,
}

impl Scope {
    fn separator(self) -> char {
        match self {
            Scope::ReadOnly => '/',
            Scope::ReadWrite => '.',
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Field(&'static str),
    Entry(String),
}

/// The position of a field in the config tree; turned into a key by [`Path::key`].
/// Fields inherit their parent's scope unless they say otherwise ([`Path::rw`], [`Path::ro`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    segments: Vec<Segment>,
    scope: Scope,
    non_persistent: bool,
    /// Kept from the guest: the key has no `guestinfo.vice.` and separator before it.
    hidden: bool,
}

impl Default for Path {
    fn default() -> Self {
        Self {
            segments: Vec::new(),
            scope: Scope::ReadOnly,
            non_persistent: false,
            hidden: false,
        }
    }
}

impl Path {
    pub fn root() -> Self {
        Self::default()
    }

    /// This path with the guest allowed to write it (and what inherits from it).
    pub fn rw(&self) -> Self {
        Self {
            scope: Scope::ReadWrite,
            ..self.clone()
        }
    }

    /// This path written by the host only.
    pub fn ro(&self) -> Self {
        Self {
            scope: Scope::ReadOnly,
            ..self.clone()
        }
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The struct field `name` below this path.
    pub fn field(&self, name: &'static str) -> Self {
        let mut p = self.clone();
        p.segments.push(Segment::Field(name));
        p
    }

    /// The map entry or slice element `name` below this path.
    pub fn entry(&self, name: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.segments.push(Segment::Entry(name.into()));
        p
    }

    /// This path is hidden from the guest (VIC's `hidden` scope: a VMX key without the
    /// `guestinfo.` prefix, e.g. `networks|bridge/network/aliases~`).
    pub fn hidden(&self) -> Self {
        Self {
            hidden: true,
            ..self.clone()
        }
    }

    /// This path and everything below it are non-persistent.
    pub fn non_persistent(&self) -> Self {
        let mut p = self.clone();
        p.non_persistent = true;
        p
    }

    /// The key of the field at this path.
    pub fn key(&self) -> String {
        self.key_with_suffix("")
    }

    /// The key with `suffix` appended to the last path element (before `@non-persistent`).
    pub fn key_with_suffix(&self, suffix: &str) -> String {
        let sep = self.scope.separator();
        let mut key = String::with_capacity(64);
        key.push_str(PREFIX);
        for seg in &self.segments {
            match seg {
                Segment::Field(name) => {
                    key.push(sep);
                    key.push_str(name);
                }
                Segment::Entry(name) => {
                    key.push('|');
                    key.push_str(name);
                }
            }
        }
        key.push_str(suffix);
        if self.non_persistent {
            key.push_str(NON_PERSISTENT);
        }
        if self.hidden {
            // The prefix and the separator after it go; the separators inside stay.
            key.drain(..PREFIX.len() + 1);
        }
        key
    }
}

/// A decoding failure, always naming the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("{key}: {reason}")]
    BadValue { key: String, reason: String },
    #[error("reading {key}: {reason}")]
    Source { key: String, reason: String },
}

impl CodecError {
    pub fn bad_value(key: &str, reason: impl Into<String>) -> Self {
        CodecError::BadValue {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Walks a config tree. The encoder reads the fields, the decoder writes them.
pub trait Visitor {
    /// A single value.
    fn scalar(&mut self, path: &Path, value: &mut dyn Scalar) -> Result<(), CodecError>;
    /// A slice of strings (`<key>` = last index, `<key>~` = joined elements).
    fn strings(&mut self, path: &Path, value: &mut Vec<String>) -> Result<(), CodecError>;
    /// The entry names of a map. `None` means "no key": the encoder writes nothing, and the decoder
    /// sets `None` when the key is missing.
    fn map_names(&mut self, path: &Path, names: &mut Option<Vec<String>>)
        -> Result<(), CodecError>;
    /// The length of a slice of structs, with the same `None` convention.
    fn slice_len(&mut self, path: &Path, len: &mut Option<usize>) -> Result<(), CodecError>;
    /// True for the decoder.
    fn decoding(&self) -> bool;
    /// How many keys the decoder has found so far (0 for the encoder).
    fn found(&self) -> usize;
}

/// A struct of the config tree.
pub trait Node {
    fn visit(&mut self, v: &mut dyn Visitor, at: &Path) -> Result<(), CodecError>;
}

/// A map of structs keyed by name.
pub fn map<T: Node + Default>(
    v: &mut dyn Visitor,
    at: &Path,
    map: &mut BTreeMap<String, T>,
) -> Result<(), CodecError> {
    let mut names = (!map.is_empty()).then(|| map.keys().cloned().collect::<Vec<_>>());
    v.map_names(at, &mut names)?;
    for name in names.unwrap_or_default() {
        let path = at.entry(name.as_str());
        map.entry(name).or_default().visit(v, &path)?;
    }
    Ok(())
}

/// A slice whose elements are visited by `each`.
pub fn slice<T: Default>(
    v: &mut dyn Visitor,
    at: &Path,
    items: &mut Vec<T>,
    each: impl FnMut(&mut dyn Visitor, &Path, &mut T) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    slice_with(v, at, items, T::default, each)
}

/// A slice whose new elements (when decoding) start as `blank()`.
pub fn slice_with<T>(
    v: &mut dyn Visitor,
    at: &Path,
    items: &mut Vec<T>,
    blank: impl FnMut() -> T,
    mut each: impl FnMut(&mut dyn Visitor, &Path, &mut T) -> Result<(), CodecError>,
) -> Result<(), CodecError> {
    let mut len = (!items.is_empty()).then_some(items.len());
    v.slice_len(at, &mut len)?;
    if let Some(len) = len {
        items.resize_with(len, blank);
        for (i, item) in items.iter_mut().enumerate() {
            each(v, &at.entry(i.to_string()), item)?;
        }
    }
    Ok(())
}

/// An optional struct: present when any of its keys is.
pub fn optional<T: Node + Default>(
    v: &mut dyn Visitor,
    at: &Path,
    value: &mut Option<T>,
) -> Result<(), CodecError> {
    if v.decoding() {
        let existed = value.is_some();
        let before = v.found();
        let mut inner = value.take().unwrap_or_default();
        inner.visit(v, at)?;
        if existed || v.found() > before {
            *value = Some(inner);
        }
        Ok(())
    } else {
        match value {
            Some(inner) => inner.visit(v, at),
            None => Ok(()),
        }
    }
}

/// Collects the keys and values of a tree, with VIC's spelling and `<nil>` for empty strings.
#[derive(Default)]
pub struct Encoder {
    out: BTreeMap<String, String>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn finish(self) -> BTreeMap<String, String> {
        self.out
    }

    fn put(&mut self, key: String, value: String) {
        let value = if value.is_empty() {
            NIL.to_string()
        } else {
            value
        };
        self.out.insert(key, value);
    }
}

/// Encodes `node` found at `at` into key/value pairs.
pub fn encode<T: Node + Clone>(node: &T, at: &Path) -> BTreeMap<String, String> {
    let mut enc = Encoder::new();
    // The visitor walks with `&mut`; encoding works on a copy so the caller's value stays borrowed shared.
    let mut copy = node.clone();
    // The encoder never fails.
    let _ = copy.visit(&mut enc, at);
    enc.finish()
}

impl Visitor for Encoder {
    fn scalar(&mut self, path: &Path, value: &mut dyn Scalar) -> Result<(), CodecError> {
        if let Some(text) = value.encode() {
            self.put(path.key(), text);
        }
        Ok(())
    }

    fn strings(&mut self, path: &Path, value: &mut Vec<String>) -> Result<(), CodecError> {
        if value.is_empty() {
            return Ok(());
        }
        self.put(path.key(), (value.len() - 1).to_string());
        self.put(path.key_with_suffix("~"), value.join("|"));
        if value.iter().any(|s| s.contains('|')) {
            let b64 = base64::engine::general_purpose::STANDARD;
            let joined = value
                .iter()
                .map(|s| b64.encode(s))
                .collect::<Vec<_>>()
                .join("|");
            self.put(path.key_with_suffix(LOSSLESS_SUFFIX), joined);
        }
        Ok(())
    }

    fn map_names(
        &mut self,
        path: &Path,
        names: &mut Option<Vec<String>>,
    ) -> Result<(), CodecError> {
        if let Some(names) = names {
            let mut sorted = names.clone();
            sorted.sort();
            self.put(path.key(), sorted.join("|"));
        }
        Ok(())
    }

    fn slice_len(&mut self, path: &Path, len: &mut Option<usize>) -> Result<(), CodecError> {
        if let Some(len) = len {
            self.put(path.key(), (*len - 1).to_string());
        }
        Ok(())
    }

    fn decoding(&self) -> bool {
        false
    }

    fn found(&self) -> usize {
        0
    }
}

/// Where the decoder reads keys from. `Ok(None)` is a missing key; values are raw (`<nil>` included).
pub trait Source {
    fn get(&mut self, key: &str) -> Result<Option<String>, String>;
}

/// Decodes keys from a [`Source`] into an existing tree (merging).
pub struct Decoder<'a> {
    source: &'a mut dyn Source,
    found: usize,
    warnings: Vec<String>,
}

impl<'a> Decoder<'a> {
    pub fn new(source: &'a mut dyn Source) -> Self {
        Self {
            source,
            found: 0,
            warnings: Vec::new(),
        }
    }

    /// Things that decoded but look wrong, such as an argument VIC's format has cut at a `|`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The value of `key`, with VIC's guest-source rules: `""` is missing, `<nil>` is empty.
    fn read(&mut self, key: &str) -> Result<Option<String>, CodecError> {
        let raw = self.source.get(key).map_err(|reason| CodecError::Source {
            key: key.to_string(),
            reason,
        })?;
        let value = match raw {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) if v == NIL => Some(String::new()),
            Some(v) => Some(v),
        };
        if value.is_some() {
            self.found += 1;
        }
        Ok(value)
    }

    fn read_index(&mut self, key: &str) -> Result<Option<usize>, CodecError> {
        let Some(text) = self.read(key)? else {
            return Ok(None);
        };
        let index: i64 = text.trim().parse().map_err(|_| {
            CodecError::bad_value(
                key,
                format!("expected the last index of a list, found {text:?}"),
            )
        })?;
        if index < 0 {
            // Go writes -1 for nothing only by mistake; an empty list has no key at all.
            return Ok(Some(0));
        }
        let index = usize::try_from(index).unwrap_or(usize::MAX);
        if index > MAX_SLICE_INDEX {
            return Err(CodecError::bad_value(
                key,
                format!("index {index} is out of range (at most {MAX_SLICE_INDEX})"),
            ));
        }
        Ok(Some(index + 1))
    }
}

/// Decodes `node` at `at` from `source`, merging into what `node` holds. Returns the warnings.
pub fn decode<T: Node>(
    node: &mut T,
    at: &Path,
    source: &mut dyn Source,
) -> Result<Vec<String>, CodecError> {
    let mut dec = Decoder::new(source);
    node.visit(&mut dec, at)?;
    Ok(dec.warnings)
}

impl Visitor for Decoder<'_> {
    fn scalar(&mut self, path: &Path, value: &mut dyn Scalar) -> Result<(), CodecError> {
        let key = path.key();
        if let Some(text) = self.read(&key)? {
            value
                .decode(&text)
                .map_err(|reason| CodecError::bad_value(&key, reason))?;
        }
        Ok(())
    }

    fn strings(&mut self, path: &Path, value: &mut Vec<String>) -> Result<(), CodecError> {
        let count_key = path.key();
        let Some(len) = self.read_index(&count_key)? else {
            return Ok(());
        };
        let joined_key = path.key_with_suffix("~");
        let joined = self.read(&joined_key)?.unwrap_or_default();
        let lossless_key = path.key_with_suffix(LOSSLESS_SUFFIX);
        if let Some(items) = self
            .read(&lossless_key)?
            .and_then(|ext| lossless_items(&ext, &joined, len))
        {
            *value = items;
            return Ok(());
        }
        let parts: Vec<&str> = joined.split('|').collect();
        if parts.len() < len {
            return Err(CodecError::bad_value(
                &joined_key,
                format!(
                    "holds {} element(s), but {count_key} = {} means {len}",
                    parts.len(),
                    len - 1
                ),
            ));
        }
        if parts.len() > len {
            self.warnings.push(format!(
                "{joined_key}: {} parts for {len} element(s); an element contained '|' and VIC's format \
                 dropped what followed it",
                parts.len()
            ));
        }
        *value = parts.into_iter().take(len).map(str::to_string).collect();
        Ok(())
    }

    fn map_names(
        &mut self,
        path: &Path,
        names: &mut Option<Vec<String>>,
    ) -> Result<(), CodecError> {
        *names = self.read(&path.key())?.map(|v| {
            v.split('|')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect()
        });
        Ok(())
    }

    fn slice_len(&mut self, path: &Path, len: &mut Option<usize>) -> Result<(), CodecError> {
        *len = self.read_index(&path.key())?;
        Ok(())
    }

    fn decoding(&self) -> bool {
        true
    }

    fn found(&self) -> usize {
        self.found
    }
}

/// The elements of a lossless extension value, if it is well formed and agrees with VIC's value.
fn lossless_items(ext: &str, joined: &str, len: usize) -> Option<Vec<String>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let items = ext
        .split('|')
        .map(|part| {
            b64.decode(part)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
        })
        .collect::<Option<Vec<String>>>()?;
    (items.len() == len && items.join("|") == joined).then_some(items)
}

/// A [`Source`] over an in-memory map, looking keys up case-insensitively as the VMX does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValues {
    /// lower-cased key -> (key as written, value)
    entries: BTreeMap<String, (String, String)>,
}

impl KeyValues {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        self.entries
            .insert(key.to_ascii_lowercase(), (key, value.into()));
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .get(&key.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries
            .remove(&key.to_ascii_lowercase())
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries as written, sorted by their case-folded key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.values().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl Source for KeyValues {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        Ok(KeyValues::get(self, key).map(str::to_string))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for KeyValues {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut kv = KeyValues::new();
        for (k, v) in iter {
            kv.insert(k, v);
        }
        kv
    }
}

/// True for a key only the host may write: the first character after the prefix is `/`.
/// The guest's sink drops these, as VIC's does.
pub fn is_read_only_key(key: &str) -> bool {
    key.contains('/')
}

#[cfg(test)]
mod tests;
