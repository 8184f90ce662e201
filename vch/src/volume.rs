//! `vch volume` and `vch run -v`: volumes that outlive containers. A volume is a VMDK holding an
//! ext4 filesystem with a label of its own and VIC's `.vic.vol.data` directory, in
//! `<root>/volumes/<name>/`; a container using it gets the disk on its own pvscsi target and a
//! mount in VIC's keys (`label` scheme, copy-up into an empty volume, as docker's named volumes).
//! NFS volumes (`-v nfs://HOST/EXPORT:/path`) are mounts only: the server is the user's.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tether_proto::config::{MountSpec, Url};

/// A volume as `vch volume create` (or a first `-v NAME:`) made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// The ext4 label the tether finds the disk by.
    pub label: String,
    pub size_mib: u64,
    /// Made for one container (`-v /path`) and removed with it (`vch rm -v`).
    #[serde(default)]
    pub anonymous: bool,
}

/// A volume in a container: what `-v` asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeUse {
    /// The volume's name (disk volumes) or the mount's (NFS).
    pub name: String,
    pub target: String,
    pub read_only: bool,
    /// `nfs://HOST/EXPORT` for an NFS volume; none for a disk volume.
    #[serde(default)]
    pub nfs: Option<String>,
}

/// The default size of a volume made by `-v`.
pub const DEFAULT_MIB: u64 = 1024;

fn volumes_dir(root: &Path) -> PathBuf {
    root.join("volumes")
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !ok {
        bail!("bad volume name {name:?}: letters, digits, '-', '_' and '.', at most 64");
    }
    Ok(())
}

/// `1G`, `512M`, `1024` (MiB) as MiB.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "M"),
    };
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    let mib = match unit.to_ascii_uppercase().trim_end_matches(['I', 'B']) {
        "M" => n,
        "G" => n * 1024,
        "T" => n * 1024 * 1024,
        _ => bail!("bad size {s:?}: use M, G or T"),
    };
    if mib < 16 {
        bail!("a volume needs at least 16M");
    }
    Ok(mib)
}

impl Volume {
    pub fn dir(&self, root: &Path) -> PathBuf {
        volumes_dir(root).join(&self.name)
    }

    pub fn disk(&self, root: &Path) -> PathBuf {
        self.dir(root).join("disk.vmdk")
    }

    pub fn load(root: &Path, name: &str) -> anyhow::Result<Self> {
        crate::container::load_record(&volumes_dir(root), name, "volume.json", "volume")
    }

    pub fn all(root: &Path) -> Vec<Self> {
        crate::container::load_each(
            &volumes_dir(root),
            |n| Self::load(root, n),
            |v| v.name.clone(),
        )
    }

    /// Makes a volume: an ext4 filesystem of `size_mib` with its own label and an empty
    /// `.vic.vol.data`, as a VMDK.
    pub fn create(
        root: &Path,
        name: &str,
        size_mib: u64,
        label: Option<&str>,
        anonymous: bool,
    ) -> anyhow::Result<Self> {
        check_name(name)?;
        if Self::load(root, name).is_ok() {
            bail!("volume {name} exists");
        }
        let label = match label {
            Some(l) if !l.is_empty() && l.len() <= 16 => l.to_string(),
            Some(l) => bail!("bad label {l:?}: 1 to 16 characters"),
            None => format!("vol-{}", &crate::container::new_id()[..12]),
        };
        if label == crate::image::LABEL {
            bail!("the label {label:?} is the container's own disk's");
        }
        let v = Self {
            name: name.to_string(),
            label,
            size_mib,
            anonymous,
        };
        let dir = v.dir(root);
        std::fs::create_dir_all(&dir)?;
        let tree = tempfile::tempdir()?;
        std::fs::create_dir(tree.path().join(".vic.vol.data"))?;
        if let Err(e) =
            crate::image::build_sized(tree.path(), &v.disk(root), &v.label, Some(size_mib))
        {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        std::fs::write(dir.join("volume.json"), serde_json::to_vec_pretty(&v)?)?;
        Ok(v)
    }

    /// The containers (by name) whose config names this volume.
    pub fn users(&self, root: &Path, running_only: bool) -> Vec<String> {
        crate::container::Container::all(root)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                c.meta
                    .volumes
                    .iter()
                    .any(|u| u.nfs.is_none() && u.name == self.name)
            })
            .filter(|c| !running_only || c.vm_running())
            .map(|c| c.meta.name)
            .collect()
    }

    /// `vch volume rm`: refused while a container (running or not) names it, as docker does.
    pub fn remove(root: &Path, name: &str) -> anyhow::Result<()> {
        let v = Self::load(root, name)?;
        let users = v.users(root, false);
        if !users.is_empty() {
            bail!("volume {name} is in use by {}", users.join(", "));
        }
        std::fs::remove_dir_all(v.dir(root))?;
        Ok(())
    }

    pub fn inspect(&self, root: &Path) -> serde_json::Value {
        serde_json::json!({
            "Name": self.name,
            "Driver": "vmdk",
            "Label": self.label,
            "SizeMiB": self.size_mib,
            "Mountpoint": self.disk(root).display().to_string(),
            "Anonymous": self.anonymous,
            "UsedBy": self.users(root, false),
        })
    }
}

/// What one `-v` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeArg {
    Named {
        name: String,
        target: String,
        read_only: bool,
    },
    Anonymous {
        target: String,
    },
    Nfs {
        host: String,
        export: String,
        target: String,
        read_only: bool,
    },
}

impl std::str::FromStr for VolumeArg {
    type Err = String;

    /// `NAME:/path[:ro|rw]`, `/path`, `nfs://HOST/EXPORT:/path[:ro|rw]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("bad volume {s:?} ({why}): want NAME:/PATH[:ro], /PATH or nfs://HOST/EXPORT:/PATH[:ro]")
        };
        let split_mode = |rest: &str| -> Result<(String, bool), String> {
            let (path, ro) = match rest.rsplit_once(':') {
                Some((p, "ro")) => (p, true),
                Some((p, "rw")) => (p, false),
                Some(_) => return Err(bad("the mode is ro or rw")),
                None => (rest, false),
            };
            if !path.starts_with('/') {
                return Err(bad("the mount point is an absolute path"));
            }
            Ok((path.to_string(), ro))
        };
        if let Some(rest) = s.strip_prefix("nfs://") {
            let (source, dest) = rest.split_once(":/").ok_or_else(|| bad("no mount point"))?;
            let (host, export) = source
                .split_once('/')
                .ok_or_else(|| bad("no export path"))?;
            if host.is_empty() {
                return Err(bad("no NFS host"));
            }
            let (target, read_only) = split_mode(&format!("/{dest}"))?;
            return Ok(Self::Nfs {
                host: host.to_string(),
                export: format!("/{export}"),
                target,
                read_only,
            });
        }
        if s.starts_with('/') {
            if s.contains(':') {
                return Err(bad("a host directory cannot be a containerVM's volume"));
            }
            return Ok(Self::Anonymous {
                target: s.to_string(),
            });
        }
        let (name, rest) = s.split_once(':').ok_or_else(|| bad("no mount point"))?;
        check_name(name).map_err(|e| e.to_string())?;
        let (target, read_only) = split_mode(rest)?;
        Ok(Self::Named {
            name: name.to_string(),
            target,
            read_only,
        })
    }
}

/// The mount of `u` in VIC's keys (`label` source for a disk volume, copy-up into an empty one
/// as docker does; `nfs` source with the mode as options).
pub fn mount_spec(u: &VolumeUse, label: &str) -> MountSpec {
    let mode = if u.read_only { "ro" } else { "rw" }.to_string();
    match &u.nfs {
        Some(url) => {
            let rest = url.trim_start_matches("nfs://");
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            MountSpec {
                source: Url {
                    scheme: "nfs".into(),
                    host: host.into(),
                    path: format!("/{path}"),
                    ..Url::default()
                },
                path: u.target.clone(),
                mode,
                copy_mode: 1,
            }
        }
        None => MountSpec {
            source: Url {
                scheme: "label".into(),
                path: label.into(),
                ..Url::default()
            },
            path: u.target.clone(),
            mode,
            copy_mode: 2,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_arguments_parse_as_dockers() {
        assert_eq!(
            "data:/var/lib/x:ro".parse::<VolumeArg>().unwrap(),
            VolumeArg::Named {
                name: "data".into(),
                target: "/var/lib/x".into(),
                read_only: true
            }
        );
        assert_eq!(
            "/scratch".parse::<VolumeArg>().unwrap(),
            VolumeArg::Anonymous {
                target: "/scratch".into()
            }
        );
        assert_eq!(
            "nfs://10.0.2.100/exports/a:/share:ro"
                .parse::<VolumeArg>()
                .unwrap(),
            VolumeArg::Nfs {
                host: "10.0.2.100".into(),
                export: "/exports/a".into(),
                target: "/share".into(),
                read_only: true
            }
        );
        for bad in [
            "data",
            "data:rel",
            "data:/x:rx",
            "/host:/ctr",
            "nfs://h:/x",
            "bad name:/x",
        ] {
            assert!(bad.parse::<VolumeArg>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_mount_specs() {
        assert_eq!(parse_size("1G").unwrap(), 1024);
        assert_eq!(parse_size("512M").unwrap(), 512);
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("2GiB").unwrap(), 2048);
        assert!(parse_size("1K").is_err());
        assert!(parse_size("8M").is_err());
        let disk = VolumeUse {
            name: "data".into(),
            target: "/data".into(),
            read_only: false,
            nfs: None,
        };
        let m = mount_spec(&disk, "vol-abc");
        assert_eq!(
            (m.source.scheme.as_str(), m.source.path.as_str()),
            ("label", "vol-abc")
        );
        assert_eq!((m.mode.as_str(), m.copy_mode), ("rw", 2));
        let nfs = VolumeUse {
            nfs: Some("nfs://server/exports/a".into()),
            read_only: true,
            ..disk
        };
        let m = mount_spec(&nfs, "");
        assert_eq!(m.source.host, "server");
        assert_eq!(m.source.path, "/exports/a");
        assert_eq!(m.mode, "ro");
    }
}
