//! The bootstrap stage's steps on its own thread: the settings from the kernel command line, the
//! mounts before the switch, the disk mounted with `/.tether`, the initramfs freed and the root
//! moved; then the gate opens for the launches.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use tether_proto::modindex::ModuleIndex;

use super::disk::{find_disk, DeviceEvents, CONTAINERFS_LABEL};
use super::modules::{
    load_late_here, Finit, Modules, INDEX_FILE, MODULE_DIR, SCSI_MANUAL_SCAN, TETHER_COPY,
    TETHER_MODULE_DIR,
};
use super::say;

const NEW_ROOT: &str = "/mnt/containerfs";

/// Settings of the bootstrap stage from the kernel command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `tether.rootwait=SECONDS`: how long to wait for the container's disk.
    pub root_wait: Duration,
}

impl Settings {
    pub fn from_cmdline(cmdline: &str) -> Self {
        let mut s = Self {
            root_wait: Duration::from_secs(30),
        };
        for (k, v) in cmdline.split_whitespace().filter_map(|w| w.split_once('=')) {
            if k == "tether.rootwait" {
                if let Ok(secs) = v.parse::<f64>() {
                    s.root_wait = Duration::try_from_secs_f64(secs).unwrap_or(s.root_wait);
                }
            }
        }
        s
    }
}

/// On the bootstrap thread: finds and mounts the container's disk, switches the root of the whole
/// process to it, mounts what PID 1 mounts there, then opens `ready` (launches wait for it) and
/// loads the late modules on this thread. When there is no root, `ready` opens with why: the
/// sessions fail with that (exit status 125, in guestinfo and to attached clients) and the VM
/// powers off.
pub fn switch_root_then(settings: &Settings, ready: &crate::gate::Gate) {
    let outcome = match std::panic::catch_unwind(|| boot(settings)) {
        Ok(r) => r,
        Err(_) => Err("the bootstrap stage panicked".to_string()),
    };
    match &outcome {
        Ok(()) => {
            tracing::debug!("bootstrap: in the container's root");
            let mounts = crate::boot::pid1::mount_all(&crate::boot::pid1::System);
            let lo = crate::boot::pid1::loopback_up().err();
            for e in mounts
                .iter()
                .chain(crate::boot::pid1::raise_limits().iter())
                .chain(lo.iter())
            {
                tracing::warn!("setup: {e}");
            }
            tracing::debug!("bootstrap: mounts done");
        }
        Err(why) => tracing::error!("bootstrap: {why}"),
    }
    ready.open(outcome.clone());
    if outcome.is_ok() {
        // This thread's work is done: it loads the late modules itself, and copies the tether
        // where VIC's containers find it, both at idle priority until the container has started
        // (neither is needed for the start). The running binary stays readable through /proc
        // after the initramfs is gone.
        load_late_here(|| {
            if let Err(e) = std::fs::copy("/proc/self/exe", TETHER_COPY) {
                tracing::warn!("bootstrap: copying the tether to {TETHER_COPY}: {e}");
            }
        });
    }
}

/// What the kernel does not mount for `/init`: proc, sys, devtmpfs; the failures, said.
pub fn early_mounts() -> Vec<String> {
    let mut errors = Vec::new();
    for (src, target, fstype, data) in [
        ("proc", "/proc", "proc", None),
        ("sysfs", "/sys", "sysfs", None),
        ("devtmpfs", "/dev", "devtmpfs", Some("mode=0755")),
    ] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(Some(src), target, Some(fstype), MsFlags::MS_NOSUID, data) {
            errors.push(format!("mount {fstype} on {target}: {e}"));
        }
    }
    errors
}

fn boot(settings: &Settings) -> Result<(), String> {
    let started = Instant::now();
    let index_path = Path::new(MODULE_DIR).join(INDEX_FILE);
    let index = match std::fs::read_to_string(&index_path) {
        Ok(text) => {
            ModuleIndex::parse(&text).map_err(|e| format!("{}: {e}", index_path.display()))?
        }
        Err(e) => {
            tracing::warn!("bootstrap: no module index ({e}); relying on built-in drivers");
            ModuleIndex::default()
        }
    };
    let mut modules = Modules::new(index, PathBuf::from(MODULE_DIR), Finit);
    modules.set_params(SCSI_MANUAL_SCAN.0, SCSI_MANUAL_SCAN.1);
    // Listening before the first look at sysfs: whatever shows up after it is an event.
    let mut uevents = match crate::sys::uevent::Uevents::open() {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!("bootstrap: no uevents ({e}); polling sysfs instead");
            None
        }
    };
    modules.load_always();
    let events = uevents.as_mut().map(|u| u as &mut dyn DeviceEvents);
    let disk = find_disk(
        Path::new("/sys"),
        Path::new("/dev"),
        &mut modules,
        events,
        settings.root_wait,
    );
    for f in &modules.failures {
        tracing::warn!("bootstrap: module {f}");
    }
    let disk = disk?;
    say(&format!(
        "found {} after {} ms",
        disk.display(),
        started.elapsed().as_millis()
    ));
    enter(&disk)
}

/// Mounts the container's disk, prepares `/.tether`, and switches the process's root to it.
fn enter(disk: &Path) -> Result<(), String> {
    let root = Path::new(NEW_ROOT);
    std::fs::create_dir_all(root).map_err(|e| format!("mkdir {NEW_ROOT}: {e}"))?;
    // noinit_itable: no background zeroing of inode tables an image left uninitialized (the
    // group descriptors say which are; e2fsck is all it is for, and it costs the CPU now).
    mount(
        Some(disk),
        root,
        Some("ext4"),
        MsFlags::empty(),
        Some("noinit_itable"),
    )
    .map_err(|e| {
        format!(
            "mounting {} (ext4) on {NEW_ROOT}: {e}; the disk is labelled {CONTAINERFS_LABEL:?} but does not mount",
            disk.display()
        )
    })?;
    for d in [".tether", "dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d))
            .map_err(|e| format!("mkdir /{d} in the container: {e}"))?;
    }
    tracing::debug!("bootstrap: {} mounted", disk.display());
    let tether_dir = root.join(".tether");
    mount(
        Some("tmpfs"),
        &tether_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=64m,mode=755"),
    )
    .map_err(|e| format!("tmpfs on /.tether: {e}"))?;
    // The modules stay reachable for the tether (it loads the late ones) and the container.
    let modules_dir = root.join(TETHER_MODULE_DIR.trim_start_matches('/'));
    if std::fs::create_dir_all(&modules_dir).is_ok() {
        if let Err(e) = mount(
            Some(MODULE_DIR),
            &modules_dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            tracing::warn!("bootstrap: modules for the tether: {e}");
        }
    }
    for d in ["dev", "proc", "sys"] {
        let from = format!("/{d}");
        mount(
            Some(from.as_str()),
            &root.join(d),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| format!("moving /{d} into the container: {e}"))?;
    }
    tracing::debug!("bootstrap: /.tether ready");
    // The initramfs is of no more use: free its memory before leaving it.
    remove_initramfs();
    std::env::set_current_dir(root).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the container's root to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Deletes the initramfs' files: those on the root's own device. The new root is a mount of
/// another device and is left alone, as are the mounts moved into it.
fn remove_initramfs() {
    use std::os::unix::fs::MetadataExt as _;
    fn walk(dir: &Path, dev: u64) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.dev() != dev || p == Path::new(MODULE_DIR) {
                continue;
            }
            if m.is_dir() {
                walk(&p, dev);
                let _ = std::fs::remove_dir(&p); // fails, harmlessly, on the way to the new root
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    if let Ok(m) = std::fs::metadata("/") {
        walk(Path::new("/"), m.dev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_command_line() {
        let s = Settings::from_cmdline("console=ttyS1 tether.rootwait=2.5 tether.debug=/dev/ttyS3");
        assert_eq!(s.root_wait, Duration::from_millis(2500));
        assert_eq!(
            Settings::from_cmdline("").root_wait,
            Duration::from_secs(30)
        );
    }
}
