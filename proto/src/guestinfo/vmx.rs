//! A `.vmx`-style key/value file: one `key = "value"` a line, keys verbatim, and in quoted values
//! `"`, `|` and control characters written as `|XX` (two hex digits), as VMware writes them.
//! Unquoted values are read verbatim. Blank lines and lines starting with `#` are skipped.
//!
//! [`VmxFile`] is a guestinfo transport over such a file: every change re-reads the file and
//! replaces it atomically (temporary file + rename) under an exclusive lock on `FILE.lock`, so the
//! host and the tether may share one file.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::{GuestInfo, GuestInfoError};
use crate::extraconfig::KeyValues;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// Parses the text of a `.vmx`-style file.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| ParseError {
            line: i + 1,
            reason,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("expected `key = \"value\"`, found {line:?}")))?;
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) || key.contains('"') {
            return Err(err(format!("bad key {key:?}")));
        }
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(quoted) => {
                let inner = quoted
                    .strip_suffix('"')
                    .ok_or_else(|| err(format!("{key}: the value has no closing quote")))?;
                unescape(inner).map_err(|reason| err(format!("{key}: {reason}")))?
            }
            None => value.to_string(),
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// Renders pairs as `key = "value"` lines, in the order given.
pub fn render<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    render_into(&mut out, pairs);
    out
}

/// [`render`], appending to `out` (a buffer kept for the next time: a guest writing its state
/// renders a file of thousands of lines each time).
pub fn render_into<'a>(out: &mut String, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (k, v) in pairs {
        out.push_str(k);
        out.push_str(" = \"");
        escape_into(out, v);
        out.push_str("\"\n");
    }
}

/// `"`, `|` and control characters become `|XX`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value);
    out
}

/// A byte written as `|XX`: `"`, `|` and control characters (all ASCII, so each is one char).
fn escaped(b: u8) -> bool {
    b == b'"' || b == b'|' || b.is_ascii_control()
}

fn escape_into(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // The runs between escaped bytes are copied whole: most values (base64, paths, numbers) are
    // one run, and a guest renders thousands of them per state write.
    let mut rest = value;
    while let Some(i) = rest.bytes().position(escaped) {
        let b = rest.as_bytes()[i];
        out.push_str(&rest[..i]);
        out.push('|');
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
        // Byte `i` is ASCII: `i + 1` is a char boundary.
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// The inverse of [`escape`]; a `|` not followed by two hex digits stands for itself.
pub fn unescape(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'|', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "an escaped value is not valid UTF-8".to_string())
}

/// A guestinfo store kept in a `.vmx`-style file.
pub struct VmxFile {
    path: PathBuf,
    values: KeyValues,
    /// The file as last read or written: every change replaces it (a rename, a new inode), so
    /// an unchanged identity means unchanged values and a refresh need not re-read it.
    seen: Option<Identity>,
    /// The text last written, its buffer kept for the next write.
    text: String,
}

type Identity = (u64, u64, std::time::SystemTime);

fn identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.modified().ok()?))
}

impl VmxFile {
    /// Opens an existing file.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, GuestInfoError> {
        let path = path.into();
        let seen = identity(&path);
        let values = load(&path)?;
        Ok(Self {
            path,
            values,
            seen,
            text: String::new(),
        })
    }

    /// Creates (or replaces) the file with `values`.
    pub fn create(path: impl Into<PathBuf>, values: KeyValues) -> Result<Self, GuestInfoError> {
        let path = path.into();
        let _lock = lock(&path)?;
        let mut text = String::new();
        store(&path, &values, &mut text)?;
        let seen = identity(&path);
        Ok(Self {
            path,
            values,
            seen,
            text,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The values as last read or written.
    pub fn values(&self) -> &KeyValues {
        &self.values
    }

    /// Applies `change` to the file's current content, atomically with respect to other users.
    pub fn update(&mut self, change: impl FnOnce(&mut KeyValues)) -> Result<(), GuestInfoError> {
        let _lock = lock(&self.path)?;
        // Read again only when someone else has replaced the file since: a guest writing its
        // state thousands of times (a config of 10 000 sessions) would otherwise parse the whole
        // file each time.
        let now = identity(&self.path);
        let mut values = if now.is_some() && now == self.seen {
            std::mem::take(&mut self.values)
        } else {
            load(&self.path)?
        };
        change(&mut values);
        if let Err(e) = store(&self.path, &values, &mut self.text) {
            // What is cached is what the file should hold; it is read again next time.
            self.values = values;
            self.seen = None;
            return Err(e);
        }
        self.values = values;
        self.seen = identity(&self.path);
        Ok(())
    }
}

impl GuestInfo for VmxFile {
    fn get(&mut self, key: &str) -> Result<Option<String>, GuestInfoError> {
        Ok(self.values.get(key).map(str::to_string))
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), GuestInfoError> {
        self.update(|values| values.insert(key, value))
    }

    fn set_many(&mut self, pairs: &[(String, String)]) -> Result<(), GuestInfoError> {
        self.update(|values| {
            for (k, v) in pairs {
                values.insert(k.as_str(), v.as_str());
            }
        })
    }

    fn list(&mut self, prefix: &str) -> Option<Vec<(String, String)>> {
        self.values.list(prefix)
    }

    fn refresh(&mut self) -> Result<(), GuestInfoError> {
        let now = identity(&self.path);
        if now.is_some() && now == self.seen {
            return Ok(());
        }
        let _lock = lock(&self.path)?;
        self.seen = identity(&self.path);
        self.values = load(&self.path)?;
        Ok(())
    }
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<KeyValues, GuestInfoError> {
    let text = fs::read_to_string(path)
        .map_err(|e| GuestInfoError::Unavailable(format!("reading {}: {e}", path.display())))?;
    let pairs =
        parse(&text).map_err(|e| GuestInfoError::Protocol(format!("{}: {e}", path.display())))?;
    Ok(pairs.into_iter().collect())
}

/// Writes `values` to `path` through a temporary file and a rename, so a reader sees the old file
/// or the new one, never a mix. (No fsync: this store is for development and tests, and is
/// rewritten on every change.)
fn store(path: &Path, values: &KeyValues, text: &mut String) -> Result<(), GuestInfoError> {
    text.clear();
    render_into(text, values.iter());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Takes the exclusive lock that serialises changes to `path`; released when dropped.
fn lock(path: &Path) -> Result<fs::File, GuestInfoError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PathBuf::from(name))?;
    file.lock()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Updates reuse what was last read or written, but a file replaced by another writer in
    /// between is read again: nothing the other writer wrote is lost.
    #[test]
    fn an_update_sees_a_file_replaced_by_another_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.vmx");
        let mut kv = KeyValues::new();
        kv.insert("a", "1");
        let mut mine = VmxFile::create(&path, kv).unwrap();
        mine.update(|kv| kv.insert("b", "2")).unwrap();
        // The host rewrites the file (a new inode, as every store does).
        let mut host = VmxFile::open(&path).unwrap();
        host.update(|kv| kv.insert("c", "3")).unwrap();
        mine.update(|kv| kv.insert("d", "4")).unwrap();
        let all = load(&path).unwrap();
        for k in ["a", "b", "c", "d"] {
            assert!(all.get(k).is_some(), "{k} lost");
        }
    }

    #[test]
    fn escapes_quote_pipe_and_controls() {
        assert_eq!(escape("a\"b|c\nd\te"), "a|22b|7Cc|0Ad|09e");
        assert_eq!(unescape("a|22b|7Cc|0Ad|09e").unwrap(), "a\"b|c\nd\te");
        assert_eq!(unescape("a|7cb").unwrap(), "a|b");
    }

    #[test]
    fn lone_pipe_stands_for_itself() {
        assert_eq!(unescape("a|b|-c|").unwrap(), "a|b|-c|");
    }

    #[test]
    fn parses_quoted_unquoted_comments() {
        let text =
            "# c\n\nguestinfo.a = \"x|7Cy\"\nguestinfo.b = /bin/sh|-c|echo hi\nguestinfo.c=\"\"\n";
        let pairs = parse(text).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("guestinfo.a".into(), "x|y".into()),
                ("guestinfo.b".into(), "/bin/sh|-c|echo hi".into()),
                ("guestinfo.c".into(), "".into()),
            ]
        );
    }

    #[test]
    fn malformed_lines_are_named() {
        assert_eq!(parse("a = \"1\"\nno equals sign\n").unwrap_err().line, 2);
        let e = parse("k = \"open").unwrap_err();
        assert_eq!(e.to_string(), "line 1: k: the value has no closing quote");
        assert!(parse("two words = 1").is_err());
        assert!(parse(" = 1").is_err());
        assert!(parse("k = \"|C3\"").is_err());
    }

    #[test]
    fn render_parse_round_trip() {
        let pairs = [
            ("k1", "a \"quoted\" | value\r\n"),
            ("k2", "<nil>"),
            ("k3", "ünïcödé"),
        ];
        let text = render(pairs.iter().copied());
        let back = parse(&text).unwrap();
        let expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(back, expected);
    }

    #[test]
    fn file_store_is_shared_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.vmx");
        let mut host =
            VmxFile::create(&path, [("guestinfo.a", "1")].into_iter().collect()).unwrap();
        let mut guest = VmxFile::open(&path).unwrap();
        guest.set("guestinfo.b", "2").unwrap();
        host.set("guestinfo.c", "3").unwrap();
        // The host's write did not lose the guest's, and the guest sees the host's after a refresh.
        assert_eq!(host.get("guestinfo.b").unwrap().as_deref(), Some("2"));
        assert_eq!(guest.get("guestinfo.c").unwrap(), None);
        guest.refresh().unwrap();
        assert_eq!(guest.get("guestinfo.C").unwrap().as_deref(), Some("3"));
        assert!(!dir.path().join("c.vmx.tmp").exists());
    }

    proptest::proptest! {
        #[test]
        fn any_value_round_trips(value in "\\PC*|[\"|\\x00-\\x1f]*") {
            let text = render([("k", value.as_str())]);
            let back = parse(&text).unwrap();
            proptest::prop_assert_eq!(&back[0].1, &value);
        }

        #[test]
        fn parser_is_total(text in "\\PC*") {
            let _ = parse(&text);
        }
    }
}
