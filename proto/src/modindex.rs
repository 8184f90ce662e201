//! The kernel-module index the initramfs carries: which modules are packed, the files to load for
//! each (dependencies first, resolved on the host from `modules.dep` and `modules.softdep`), the
//! device aliases that select them, and those loaded at every boot. The build writes it and the
//! bootstrap stage reads it; neither needs kmod in the guest.
//!
//! The text form is one entry a line:
//! ```text
//! module ext4 kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/fs/ext4/ext4.ko
//! alias pci:v000015ADd000007C0sv*sd*bc*sc*i* vmw_pvscsi
//! always ext4
//! late vmxnet3 qemu_fw_cfg
//! ```
//!
//! `late` modules are not needed to find the container's disk: the bootstrap stage leaves them to
//! the tether, which loads them beside the container's start.

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("module index line {line}: {why}")]
pub struct IndexError {
    pub line: usize,
    pub why: String,
}

/// A module file packed zlib-compressed (the kernel here loads only plain files: the tether
/// inflates it and hands the kernel the bytes).
pub const COMPRESSED_SUFFIX: &str = ".z";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleIndex {
    /// Module name → files to load in order (relative to the modules directory).
    pub modules: BTreeMap<String, Vec<String>>,
    /// (pattern, module) in file order.
    pub aliases: Vec<(String, String)>,
    /// Loaded whatever the devices (filesystems, for instance).
    pub always: Vec<String>,
    /// Not needed to boot: loaded after the container has started.
    pub late: Vec<String>,
}

impl ModuleIndex {
    pub fn parse(text: &str) -> Result<Self, IndexError> {
        let mut index = Self::default();
        for (n, line) in text.lines().enumerate() {
            let err = |why: &str| IndexError {
                line: n + 1,
                why: why.to_string(),
            };
            let mut words = line.split_whitespace();
            match words.next() {
                None => {}
                Some(w) if w.starts_with('#') => {}
                Some("module") => {
                    let name = words.next().ok_or_else(|| err("a module without a name"))?;
                    let files: Vec<String> = words.map(String::from).collect();
                    if files.is_empty() {
                        return Err(err("a module without files"));
                    }
                    index.modules.insert(name.to_string(), files);
                }
                Some("alias") => match (words.next(), words.next(), words.next()) {
                    (Some(p), Some(m), None) => index.aliases.push((p.into(), m.into())),
                    _ => return Err(err("an alias takes a pattern and a module")),
                },
                Some("always") => index.always.extend(words.map(String::from)),
                Some("late") => index.late.extend(words.map(String::from)),
                Some(other) => return Err(err(&format!("unknown entry {other:?}"))),
            }
        }
        for m in index
            .aliases
            .iter()
            .map(|(_, m)| m)
            .chain(index.always.iter())
            .chain(index.late.iter())
        {
            if !index.modules.contains_key(m) {
                return Err(IndexError {
                    line: 0,
                    why: format!("{m} is named but not packed"),
                });
            }
        }
        Ok(index)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, files) in &self.modules {
            out.push_str(&format!("module {name} {}\n", files.join(" ")));
        }
        for (pattern, name) in &self.aliases {
            out.push_str(&format!("alias {pattern} {name}\n"));
        }
        if !self.always.is_empty() {
            out.push_str(&format!("always {}\n", self.always.join(" ")));
        }
        if !self.late.is_empty() {
            out.push_str(&format!("late {}\n", self.late.join(" ")));
        }
        out
    }

    /// The buses whose devices' `modalias` can select a packed module (the late ones too with
    /// `late`): the word before the first `:` of each alias (`pci` of `pci:v000015AD...`,
    /// `acpi` of `acpi*:QEMU0002:*`); aliases without one (`fs-iso9660`, `net-pf-40`) name no
    /// device.
    pub fn buses(&self, late: bool) -> std::collections::BTreeSet<String> {
        self.aliases
            .iter()
            .filter(|(_, m)| late || !self.late.contains(m))
            .filter_map(|(p, _)| p.split_once(':'))
            .map(|(bus, _)| bus.trim_end_matches('*').to_string())
            .filter(|bus| !bus.is_empty() && !bus.contains(['*', '?', '[']))
            .collect()
    }

    /// The packed modules whose aliases match a device's `modalias`.
    pub fn matching<'a>(&'a self, modalias: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.aliases
            .iter()
            .filter(move |(p, _)| glob_match(p.as_bytes(), modalias.as_bytes()))
            .map(|(_, m)| m.as_str())
    }
}

/// The module name of a file: its base name without `.ko` (and a compression suffix), `-` as `_`.
pub fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// fnmatch(3) without flags, as kmod matches aliases: `*`, `?` and `[...]` (with ranges and `!`
/// or `^` negation).
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: the pattern just past it and the text it stood for.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') if closes(&pattern[p..]) => class(&pattern[p..], text[t]),
            Some(&c) => (c == text[t]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                p += len;
                t += 1;
            }
            (None, Some((sp, st))) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether the bracket expression at the start of `pattern` has its `]` (a `]` first in the set
/// is a member, not the end).
fn closes(pattern: &[u8]) -> bool {
    let start = if matches!(pattern.get(1), Some(b'!' | b'^')) {
        2
    } else {
        1
    };
    pattern
        .get(start + 1..)
        .is_some_and(|rest| rest.contains(&b']'))
}

/// Matches `c` against the bracket expression at the start of `pattern`; on a match, the length of
/// the expression. An unterminated `[` is a literal.
fn class(pattern: &[u8], c: u8) -> Option<usize> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &lo = pattern.get(i)?;
        if lo == b']' && !first {
            break;
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&h| h != b']') {
            hit |= (lo..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
    (hit != negate).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buses_are_the_words_before_the_aliases_colons() {
        let index = ModuleIndex::parse(
            "module a a.ko\nmodule b b.ko\n\
             alias pci:v000015ADd000007C0sv*sd*bc*sc*i* a\n\
             alias acpi*:QEMU0002:* b\nalias virtio:d00000008v* a\n\
             alias fs-iso9660 b\nalias *:weird b\nalias net-pf-40 a\nlate b\n",
        )
        .unwrap();
        let buses: Vec<String> = index.buses(true).into_iter().collect();
        assert_eq!(buses, ["acpi", "pci", "virtio"]);
        let early: Vec<String> = index.buses(false).into_iter().collect();
        assert_eq!(early, ["pci", "virtio"], "acpi only names a late module");
    }

    #[test]
    fn globs_as_kmod_uses_them() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        let pvscsi = "pci:v000015ADd000007C0sv*sd*bc*sc*i*";
        assert!(m(
            pvscsi,
            "pci:v000015ADd000007C0sv000015ADsd000007C0bc01sc00i00"
        ));
        assert!(!m(
            pvscsi,
            "pci:v000015ADd000007B0sv000015ADsd000007B0bc02sc00i00"
        ));
        assert!(m("virtio:d00000002v*", "virtio:d00000002v00001AF4"));
        assert!(!m("virtio:d00000002v*", "virtio:d00000003v00001AF4"));
        assert!(m("acpi*:QEMU0002:*", "acpi:QEMU0002:"));
        assert!(m("scsi:t-0x0[05]*", "scsi:t-0x05"));
        assert!(!m("scsi:t-0x0[!05]*", "scsi:t-0x05"));
        assert!(m("a[b-d]e", "ace"));
        assert!(!m("a[b-d]e", "aee"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("*", "") && m("**x", "abx") && !m("*x", "abc"));
        assert!(m("a[", "a["), "an unterminated bracket is a literal");
        assert!(m(
            "*:feature:*0081*",
            "cpu:type:x86,ven0000:feature:,0000,0081,00C0"
        ));
    }

    #[test]
    fn round_trip_and_matching() {
        let text = "module ext4 kernel/lib/crc16.ko kernel/fs/ext4/ext4.ko\n\
                    module virtio_blk kernel/drivers/block/virtio_blk.ko\n\
                    alias virtio:d00000002v* virtio_blk\n\
                    always ext4\n\
                    late virtio_blk\n";
        let index = ModuleIndex::parse(text).unwrap();
        assert_eq!(index.render(), text);
        assert_eq!(
            index
                .matching("virtio:d00000002v00001AF4")
                .collect::<Vec<_>>(),
            ["virtio_blk"]
        );
        assert_eq!(index.matching("virtio:d00000001v00001AF4").count(), 0);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            ModuleIndex::parse("module x a.ko\nfoo bar\n")
                .unwrap_err()
                .line,
            2
        );
        assert!(ModuleIndex::parse("alias p missing\n")
            .unwrap_err()
            .why
            .contains("missing is named but not packed"));
        assert!(ModuleIndex::parse("module lonely\n").is_err());
    }
}
