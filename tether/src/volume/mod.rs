//! Volumes: VIC's mounts in the container, before the primary's launch and after the network
//! (NFS needs it), in path order so that nested volumes work. A disk volume (`label` scheme) is
//! found by its ext4 label, mounted at `/.tether/.filesystem-by-label/<label>`, and its
//! `.vic.vol.data` (or its root) bound onto the target; an NFS volume is mounted from the first
//! of the server's addresses that answers. `ro` makes the target refuse writes (VIC ignored it);
//! copy-up ([`copy`]) fills an empty volume with the image's files at that path.
//!
//! Owns: the volume mounts. Uses: `sys`, `boot` (the ext4 label reader). Must not touch
//! sessions: the wiring mounts before the launch and reports a failure.

pub mod copy;

use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use tether_proto::config::{ExecutorConfig, MountSpec};

/// Where a volume comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A disk whose ext4 filesystem carries this label.
    Label(String),
    /// `host:/path` of an NFS server.
    Nfs { host: String, path: String },
}

/// One volume, as the config asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The config's name for it (docker's volume name).
    pub name: String,
    pub source: Source,
    pub target: PathBuf,
    pub read_only: bool,
    /// `Mode` as given (NFS: the mount options).
    pub mode: String,
    /// Copy the image's files at the target into the volume when it is empty.
    pub copy_up: bool,
}

/// VIC's mounts as volumes, in the order they are mounted (by target path: `/data` before
/// `/data/logs`). A source of another scheme, or a target that is not absolute, is refused.
pub fn plan(cfg: &ExecutorConfig) -> Result<Vec<Volume>, String> {
    let mut vols = cfg
        .mounts
        .iter()
        .map(|(name, m)| volume(name, m))
        .collect::<Result<Vec<_>, _>>()?;
    vols.sort_by(|a, b| a.target.cmp(&b.target));
    Ok(vols)
}

/// The disk label a `label` mount names: VIC writes it as the URL's path (`label:/<label>`) or
/// opaque part (`label:<label>`). `None` for another scheme or an empty label.
pub fn label(m: &MountSpec) -> Option<String> {
    if m.source.scheme != "label" {
        return None;
    }
    let l = match m.source.opaque.as_str() {
        "" => m.source.path.trim_start_matches('/'),
        opaque => opaque,
    };
    (!l.is_empty()).then(|| l.to_string())
}

fn volume(name: &str, m: &MountSpec) -> Result<Volume, String> {
    let fail = |why: String| format!("volume {name}: {why}");
    let target = PathBuf::from(&m.path);
    if !target.is_absolute() {
        return Err(fail(format!(
            "the mount point {:?} is not absolute",
            m.path
        )));
    }
    let source = match m.source.scheme.as_str() {
        "label" => match label(m) {
            Some(l) if l.len() <= 16 => Source::Label(l),
            l => {
                let l = l.unwrap_or_default();
                return Err(fail(format!("{l:?} is not an ext4 label")));
            }
        },
        "nfs" => {
            if m.source.host.is_empty() {
                return Err(fail("an NFS source without a host".into()));
            }
            let path = match m.source.path.as_str() {
                "" => "/".to_string(),
                p => p.to_string(),
            };
            Source::Nfs {
                host: m.source.host.clone(),
                path,
            }
        }
        other => {
            return Err(fail(format!(
                "the source scheme {other:?} is neither label nor nfs"
            )))
        }
    };
    Ok(Volume {
        name: name.to_string(),
        source,
        target,
        read_only: m.mode.split(',').any(|o| o.trim() == "ro"),
        mode: m.mode.clone(),
        copy_up: m.copy_mode == 2,
    })
}

/// The mount calls volumes make, behind a trait so that their arguments are tested as such.
pub trait Mounter {
    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), String>;
}

/// The kernel's mount(2).
pub struct Kernel;

impl Mounter for Kernel {
    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), String> {
        nix::mount::mount(Some(source), target, fstype, flags, data).map_err(|e| {
            format!(
                "mounting {source} on {} ({}): {e}",
                target.display(),
                fstype.unwrap_or("bind")
            )
        })
    }
}

/// What mounting needs of the machine.
pub struct Env<'a> {
    /// Where disk volumes are mounted first (`/.tether/.filesystem-by-label`).
    pub by_label: PathBuf,
    /// The block device carrying an ext4 label, if one does now.
    pub find_label: &'a dyn Fn(&str) -> Option<PathBuf>,
    /// Waits at most the duration for a device to come or go (the kernel's device events), so
    /// that a disk is looked for again as soon as it may be there.
    pub device_wait: &'a dyn Fn(Duration),
    /// How long to wait for a volume's disk.
    pub wait: Duration,
    /// A host's addresses (NFS).
    pub resolve: &'a dyn Fn(&str) -> Result<Vec<IpAddr>, String>,
}

/// The mount points made, in the order they were made (unmounted in reverse at shutdown).
pub type Mounted = Vec<PathBuf>;

/// Mounts every volume in order, recording each mount point in `mounted`; stops at the first
/// failure, naming the volume and the cause.
pub fn mount_all(
    vols: &[Volume],
    env: &Env,
    m: &mut dyn Mounter,
    mounted: &mut Mounted,
) -> Result<(), String> {
    for v in vols {
        mount_one(v, env, m, mounted).map_err(|e| format!("volume {}: {e}", v.name))?;
        tracing::info!(
            "volume {} on {}{}",
            v.name,
            v.target.display(),
            if v.read_only { " (read-only)" } else { "" }
        );
    }
    Ok(())
}

fn mount_one(
    v: &Volume,
    env: &Env,
    m: &mut dyn Mounter,
    mounted: &mut Mounted,
) -> Result<(), String> {
    // The image's directory there, if any: its owner and mode go to the volume's root.
    let before = std::fs::metadata(&v.target).ok();
    if let Some(b) = &before {
        if !b.is_dir() {
            return Err(format!("{} is not a directory", v.target.display()));
        }
    }
    std::fs::create_dir_all(&v.target)
        .map_err(|e| format!("making {}: {e}", v.target.display()))?;
    match &v.source {
        Source::Label(label) => mount_disk(v, label, before.as_ref(), env, m, mounted),
        Source::Nfs { host, path } => {
            mount_nfs(v, host, path, env, m)?;
            mounted.push(v.target.clone());
            Ok(())
        }
    }
}

/// Unmounts `mounted` in reverse order after a sync (at shutdown, so that nothing written is
/// lost and each filesystem is left clean); a mount still busy is detached. Returns the failures.
pub fn unmount_all(mounted: &mut Mounted) -> Vec<String> {
    use nix::mount::{umount2, MntFlags};
    nix::unistd::sync();
    let mut errors = Vec::new();
    while let Some(p) = mounted.pop() {
        if let Err(e) = umount2(&p, MntFlags::empty()) {
            if let Err(e2) = umount2(&p, MntFlags::MNT_DETACH) {
                errors.push(format!("unmounting {}: {e}; detaching: {e2}", p.display()));
            } else {
                errors.push(format!("{} was busy ({e}): detached", p.display()));
            }
        }
    }
    errors
}

/// Waits for the disk labelled `label`, mounts it under [`Env::by_label`], fills it from the
/// image when asked and it is empty, and binds its data onto the target.
fn mount_disk(
    v: &Volume,
    label: &str,
    before: Option<&std::fs::Metadata>,
    env: &Env,
    m: &mut dyn Mounter,
    mounted: &mut Mounted,
) -> Result<(), String> {
    let deadline = Instant::now() + env.wait;
    let device = loop {
        if let Some(d) = (env.find_label)(label) {
            break d;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no disk labelled {label:?} appeared within {:?}",
                env.wait
            ));
        }
        (env.device_wait)(left);
    };
    let at = env.by_label.join(label);
    std::fs::create_dir_all(&at).map_err(|e| format!("making {}: {e}", at.display()))?;
    m.mount(
        &device.to_string_lossy(),
        &at,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        None,
    )?;
    mounted.push(at.clone());
    // VIC's volumes keep their data one level down, hiding lost+found.
    let data = at.join(".vic.vol.data");
    let data = if data.is_dir() { data } else { at };
    if let Some(b) = before {
        if v.copy_up && copy::is_empty(&data)? {
            copy::copy_tree(&v.target, &data)?;
        } else {
            nix::unistd::chown(
                &data,
                Some(nix::unistd::Uid::from_raw(b.uid())),
                Some(nix::unistd::Gid::from_raw(b.gid())),
            )
            .map_err(|e| format!("giving {} its owner: {e}", data.display()))?;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(b.mode() & 0o7777))
                .map_err(|e| format!("giving {} its mode: {e}", data.display()))?;
        }
    }
    bind(&data.to_string_lossy(), v, m)?;
    mounted.push(v.target.clone());
    Ok(())
}

/// Binds `source` onto the volume's target, read-only when asked (a second, remounting call:
/// the kernel ignores MS_RDONLY on the first).
fn bind(source: &str, v: &Volume, m: &mut dyn Mounter) -> Result<(), String> {
    m.mount(source, &v.target, None, MsFlags::MS_BIND, None)?;
    if v.read_only {
        m.mount(
            source,
            &v.target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

/// Mounts `host:path` from the first of the host's addresses that takes it, with `Mode` as the
/// options and `addr=` naming that address, as VIC's tether does.
fn mount_nfs(
    v: &Volume,
    host: &str,
    path: &str,
    env: &Env,
    m: &mut dyn Mounter,
) -> Result<(), String> {
    let addrs = (env.resolve)(host)?;
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    let mut flags = MsFlags::MS_NOATIME;
    if v.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let mut errors = Vec::new();
    for ip in addrs {
        let options: Vec<String> = v
            .mode
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty() && !o.starts_with("addr="))
            .map(str::to_string)
            .chain(std::iter::once(format!("addr={ip}")))
            .collect();
        let source = match ip {
            IpAddr::V6(_) => format!("[{ip}]:{path}"),
            IpAddr::V4(_) => format!("{ip}:{path}"),
        };
        // NFS version 4 when the options name none: one TCP port (2049), no portmapper.
        let fstype = if options
            .iter()
            .any(|o| o.starts_with("vers=") || o.starts_with("nfsvers="))
        {
            "nfs"
        } else {
            "nfs4"
        };
        match m.mount(
            &source,
            &v.target,
            Some(fstype),
            flags,
            Some(&options.join(",")),
        ) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

/// A host's addresses through the container's resolver (its `/etc/hosts` and `resolv.conf`).
pub fn resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    use std::net::ToSocketAddrs as _;
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let addrs = (host, 2049)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?;
    let mut ips: Vec<IpAddr> = Vec::new();
    for a in addrs {
        if !ips.contains(&a.ip()) {
            ips.push(a.ip());
        }
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::config::Url;

    fn spec(scheme: &str, host: &str, path: &str, dest: &str, mode: &str) -> MountSpec {
        MountSpec {
            source: Url {
                scheme: scheme.into(),
                host: host.into(),
                path: path.into(),
                ..Url::default()
            },
            path: dest.into(),
            mode: mode.into(),
            copy_mode: 1,
        }
    }

    #[test]
    fn volumes_are_planned_in_path_order_with_their_sources() {
        let mut cfg = ExecutorConfig::default();
        cfg.mounts.insert(
            "logs".into(),
            spec("label", "", "/vol-logs", "/data/logs", "rw"),
        );
        cfg.mounts
            .insert("data".into(), spec("label", "", "/vol-data", "/data", "ro"));
        cfg.mounts.insert(
            "share".into(),
            spec("nfs", "nfs.example", "/exports/a", "/share", "rw,hard"),
        );
        let v = plan(&cfg).unwrap();
        let order: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(order, ["data", "logs", "share"]);
        assert_eq!(v[0].source, Source::Label("vol-data".into()));
        assert!(v[0].read_only && !v[1].read_only);
        assert_eq!(
            v[2].source,
            Source::Nfs {
                host: "nfs.example".into(),
                path: "/exports/a".into()
            }
        );
        cfg.mounts
            .insert("bad".into(), spec("smb", "h", "/x", "/x", "rw"));
        assert!(plan(&cfg)
            .unwrap_err()
            .contains("volume bad: the source scheme \"smb\""));
        let mut rel = ExecutorConfig::default();
        rel.mounts
            .insert("r".into(), spec("label", "", "/l", "data", ""));
        assert!(plan(&rel).unwrap_err().contains("not absolute"));
    }

    /// Records mount calls; fails those whose source is listed.
    #[derive(Default)]
    struct Record {
        calls: Vec<String>,
        refuse: Vec<String>,
    }

    impl Mounter for Record {
        fn mount(
            &mut self,
            source: &str,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> Result<(), String> {
            self.calls.push(format!(
                "{source} {} {} {:?} {}",
                target.display(),
                fstype.unwrap_or("-"),
                flags,
                data.unwrap_or("-")
            ));
            if self.refuse.iter().any(|r| r == source) {
                return Err(format!("{source}: refused"));
            }
            Ok(())
        }
    }

    #[test]
    fn nfs_tries_each_address_with_addr_set_and_ro_honoured() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("share");
        let mut cfg = ExecutorConfig::default();
        let mut s = spec(
            "nfs",
            "nfs.example",
            "/exports/a",
            "/x",
            "ro,hard,addr=nfs.example",
        );
        s.path = target.display().to_string();
        cfg.mounts.insert("share".into(), s);
        let vols = plan(&cfg).unwrap();
        let none = |_: &str| None;
        let two = |_: &str| -> Result<Vec<IpAddr>, String> {
            Ok(vec![
                "192.0.2.7".parse().unwrap(),
                "192.0.2.8".parse().unwrap(),
            ])
        };
        let nap = |d: Duration| std::thread::sleep(d.min(Duration::from_millis(20)));
        let env = Env {
            by_label: t.path().join("by-label"),
            find_label: &none,
            device_wait: &nap,
            wait: Duration::from_millis(10),
            resolve: &two,
        };
        let mut m = Record {
            refuse: vec!["192.0.2.7:/exports/a".into()],
            ..Record::default()
        };
        let mut mounted = Mounted::new();
        mount_all(&vols, &env, &mut m, &mut mounted).unwrap();
        assert_eq!(mounted, std::slice::from_ref(&target));
        let flags = format!("{:?}", MsFlags::MS_NOATIME | MsFlags::MS_RDONLY);
        assert_eq!(
            m.calls,
            [
                format!(
                    "192.0.2.7:/exports/a {} nfs4 {flags} ro,hard,addr=192.0.2.7",
                    target.display()
                ),
                format!(
                    "192.0.2.8:/exports/a {} nfs4 {flags} ro,hard,addr=192.0.2.8",
                    target.display()
                ),
            ]
        );
        // Every address refusing: both causes, the volume named.
        let mut all = Record {
            refuse: vec!["192.0.2.7:/exports/a".into(), "192.0.2.8:/exports/a".into()],
            ..Record::default()
        };
        let err = mount_all(&vols, &env, &mut all, &mut Mounted::new()).unwrap_err();
        assert!(err.starts_with("volume share: "), "{err}");
        assert!(
            err.contains("192.0.2.7") && err.contains("192.0.2.8"),
            "{err}"
        );
    }

    #[test]
    fn a_disk_that_never_comes_fails_after_the_wait() {
        let t = tempfile::tempdir().unwrap();
        let mut cfg = ExecutorConfig::default();
        let target = t.path().join("data").display().to_string();
        cfg.mounts
            .insert("data".into(), spec("label", "", "/vol-x", &target, "rw"));
        let vols = plan(&cfg).unwrap();
        let none = |_: &str| None;
        let no_dns = |h: &str| Err(format!("no {h}"));
        let waits = std::cell::Cell::new(0);
        let nap = |d: Duration| {
            waits.set(waits.get() + 1);
            std::thread::sleep(d.min(Duration::from_millis(20)));
        };
        let env = Env {
            by_label: t.path().join("by-label"),
            find_label: &none,
            device_wait: &nap,
            wait: Duration::from_millis(200),
            resolve: &no_dns,
        };
        let started = Instant::now();
        let err = mount_all(&vols, &env, &mut Record::default(), &mut Mounted::new()).unwrap_err();
        assert!(waits.get() >= 2, "it waits on device events between looks");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            err,
            "volume data: no disk labelled \"vol-x\" appeared within 200ms"
        );
    }
}
