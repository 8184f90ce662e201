//! Picks kernel modules out of an unpacked kernel (`lib/modules/<version>/`) with their
//! dependencies, from `modules.dep` and the `pre:` soft dependencies of `modules.softdep`, and
//! makes the [`ModuleIndex`] the bootstrap stage loads them by.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tether_proto::modindex::ModuleIndex;

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: no modules.dep (run depmod -b on the unpacked kernel)")]
    NoDep(PathBuf),
}

/// What `modules.dep`, `modules.alias`, `modules.softdep` and `modules.builtin` say.
#[derive(Debug, Default)]
pub struct KernelModules {
    /// name → (file, direct and indirect dependencies by file)
    dep: BTreeMap<String, (String, Vec<String>)>,
    /// file → name
    names: BTreeMap<String, String>,
    aliases: Vec<(String, String)>,
    softdeps: BTreeMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
}

use tether_proto::modindex::module_name as name_of;

/// What a build asked for and did not get.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub index: ModuleIndex,
    /// Built into the kernel: nothing to pack.
    pub builtin: Vec<String>,
    /// Neither a module nor built in.
    pub missing: Vec<String>,
}

impl KernelModules {
    pub fn load(dir: &Path) -> Result<Self, ModulesError> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|e| ModulesError::Read(p, e))
        };
        if !dir.join("modules.dep").exists() {
            return Err(ModulesError::NoDep(dir.to_path_buf()));
        }
        Ok(Self::parse(
            &read("modules.dep")?,
            &read("modules.alias").unwrap_or_default(),
            &read("modules.softdep").unwrap_or_default(),
            &read("modules.builtin").unwrap_or_default(),
        ))
    }

    pub fn parse(dep: &str, alias: &str, softdep: &str, builtin: &str) -> Self {
        let mut k = Self::default();
        for line in dep.lines() {
            let Some((file, deps)) = line.split_once(':') else {
                continue;
            };
            let name = name_of(file);
            k.names.insert(file.to_string(), name.clone());
            k.dep.insert(
                name,
                (
                    file.to_string(),
                    deps.split_whitespace().map(String::from).collect(),
                ),
            );
        }
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(p), Some(m)) = (w.next(), w.next(), w.next()) {
                k.aliases.push((p.to_string(), m.replace('-', "_")));
            }
        }
        for line in softdep.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(module) = w.next() else { continue };
            let mut pre = true;
            for word in w {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    m if pre => k
                        .softdeps
                        .entry(module.replace('-', "_"))
                        .or_default()
                        .push(m.to_string()),
                    _ => {}
                }
            }
        }
        k.builtin = builtin.lines().map(name_of).collect();
        k
    }

    /// A name as modprobe takes it: a module, or an alias of modules (`crc32c`, `fs-ext4`).
    fn resolve_name(&self, wanted: &str) -> Vec<String> {
        let n = wanted.replace('-', "_");
        if self.dep.contains_key(&n) {
            return vec![n];
        }
        self.aliases
            .iter()
            .filter(|(p, _)| tether_proto::modindex::glob_match(p.as_bytes(), wanted.as_bytes()))
            .map(|(_, m)| m.clone())
            .filter(|m| self.dep.contains_key(m))
            .collect()
    }

    /// Files to load for `name`, dependencies (and soft `pre:` dependencies) first.
    fn load_order(&self, name: &str, out: &mut Vec<String>, seen: &mut BTreeSet<String>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some((file, deps)) = self.dep.get(name) else {
            return;
        };
        for soft in self.softdeps.get(name).into_iter().flatten() {
            for m in self.resolve_name(soft) {
                self.load_order(&m, out, seen);
            }
        }
        for d in deps {
            if let Some(dn) = self.names.get(d) {
                self.load_order(dn, out, seen);
            }
        }
        out.push(file.clone());
    }

    /// The index for `wanted` (loaded when a device matches), `always` (loaded at every boot), and
    /// which of `wanted` are `late` (not needed to boot).
    pub fn select(&self, wanted: &[&str], always: &[&str], late: &[&str]) -> Selection {
        let mut sel = Selection::default();
        let mut packed = BTreeSet::new();
        for (list, is_always) in [(wanted, false), (always, true)] {
            for &w in list {
                let n = w.replace('-', "_");
                if !self.dep.contains_key(&n) {
                    if self.builtin.contains(&n) {
                        sel.builtin.push(n);
                    } else {
                        sel.missing.push(n);
                    }
                    continue;
                }
                let mut files = Vec::new();
                self.load_order(&n, &mut files, &mut BTreeSet::new());
                sel.index.modules.insert(n.clone(), files);
                packed.insert(n.clone());
                if is_always {
                    sel.index.always.push(n);
                }
            }
        }
        sel.index.late = late
            .iter()
            .map(|m| m.replace('-', "_"))
            .filter(|m| packed.contains(m))
            .collect();
        sel.index.aliases = self
            .aliases
            .iter()
            .filter(|(p, m)| {
                packed.contains(m) && !p.starts_with("block-major") && !p.starts_with("char-major")
            })
            .cloned()
            .collect();
        sel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/scsi/vmw-pvscsi.ko:
";
    const ALIAS: &str = "\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000002v* virtio_blk
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias block-major-254-* virtio_blk
alias pci:v000015ADd000007C0sv*sd*bc*sc*i* vmw_pvscsi
";
    const SOFT: &str = "softdep ext4 pre: crc32c post: ignored\n";

    fn kernel() -> KernelModules {
        KernelModules::parse(DEP, ALIAS, SOFT, "kernel/drivers/tty/serial/8250/8250.ko\n")
    }

    #[test]
    fn dependencies_come_first_whatever_order_modules_dep_lists_them() {
        let sel = kernel().select(
            &["virtio_pci", "virtio_blk", "vmw_pvscsi"],
            &[],
            &["vmw_pvscsi", "e1000"],
        );
        assert_eq!(
            sel.index.late,
            ["vmw_pvscsi"],
            "late modules that are packed"
        );
        assert_eq!(
            sel.index.modules["virtio_pci"],
            [
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_pci.ko"
            ]
        );
        assert_eq!(
            sel.index.modules["vmw_pvscsi"],
            ["kernel/drivers/scsi/vmw-pvscsi.ko"],
            "a file name with `-` is the module with `_`"
        );
        // Device aliases of packed modules are kept, block-major ones are not.
        assert_eq!(sel.index.aliases.len(), 3);
        assert!(sel.missing.is_empty() && sel.builtin.is_empty());
    }

    #[test]
    fn soft_dependencies_resolve_through_aliases() {
        let sel = kernel().select(&[], &["ext4"], &[]);
        assert_eq!(
            sel.index.modules["ext4"],
            [
                "kernel/crypto/crc32c_generic.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko"
            ]
        );
        assert_eq!(sel.index.always, ["ext4"]);
        ModuleIndex::parse(&sel.index.render()).expect("the index reads back");
    }

    #[test]
    fn builtin_and_missing_are_told_apart() {
        let sel = kernel().select(&["8250", "e1000"], &[], &[]);
        assert_eq!(sel.builtin, ["8250"]);
        assert_eq!(sel.missing, ["e1000"]);
        assert!(sel.index.modules.is_empty());
    }
}
