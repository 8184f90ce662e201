//! Finding the container's disk: ext4 labels read from the block devices, and the wait for the
//! disk on the kernel's device events (a new device's driver loaded as it shows up). Reads sysfs
//! and /dev under the roots it is given; loads modules only through [`ModuleLoader`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::modules::{
    manual_scsi_scan, modaliases, scan_scsi, scan_scsi_fully, scsi_hosts, ModuleLoader, Modules,
    SCSI_DISK_ADDRESS,
};
use super::say;

pub use tether_proto::vm::CONTAINERFS_LABEL;

/// How long after the last driver loaded the bootstrap stage waits for the disk before it loads
/// the late modules too (a disk on virtio or IDE needs them; pvscsi's shows well within this).
const LATE_FALLBACK: Duration = Duration::from_millis(500);
/// Without device events for this long, the bootstrap stage looks at sysfs whole all the same.
const QUIET_LOOK: Duration = Duration::from_millis(100);
/// The pace of looking at sysfs where there are no device events to wait on.
const POLL: Duration = Duration::from_millis(10);

/// The ext4 (or ext2/3) label of a filesystem whose first 2 KiB are `head`; `None` when the
/// superblock magic is not there.
pub fn ext_label(head: &[u8]) -> Option<String> {
    // The superblock starts at byte 1024: magic at offset 0x38, volume name (16 bytes) at 0x78.
    let magic = head.get(1024 + 0x38..1024 + 0x3a)?;
    if magic != [0x53, 0xef] {
        return None;
    }
    let name = head.get(1024 + 0x78..1024 + 0x88)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The kernel's block devices under `sys` (`/sys`), partitions included; loop devices, RAM disks
/// and CD-ROMs left out.
pub fn block_devices(sys: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys.join("class/block"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_disk_name(n))
        .collect();
    names.sort();
    names
}

/// Whether block device `name` may hold the container's filesystem: not a loop device, RAM disk
/// or CD-ROM.
fn is_disk_name(name: &str) -> bool {
    !["loop", "ram", "sr", "zram"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `dev/name` when the filesystem on it carries `label`; `dev` is `/dev`.
fn labelled(dev: &Path, name: &str, label: &str) -> Option<PathBuf> {
    let path = dev.join(name);
    let mut head = vec![0u8; 2048];
    let mut f = File::open(&path).ok()?;
    f.read_exact(&mut head).ok()?;
    (ext_label(&head)? == label).then_some(path)
}

/// Finds the block device whose filesystem carries `label`; `dev` is `/dev`.
pub fn find_labelled(sys: &Path, dev: &Path, label: &str) -> Option<PathBuf> {
    block_devices(sys)
        .into_iter()
        .find_map(|name| labelled(dev, &name, label))
}

/// [`find_labelled`] among loop devices too (the process-mode tests' volumes are on them; the
/// container's own disk never is).
pub fn find_labelled_with_loops(sys: &Path, dev: &Path, label: &str) -> Option<PathBuf> {
    let loops = std::fs::read_dir(sys.join("class/block"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("loop"));
    let mut names: Vec<String> = block_devices(sys).into_iter().chain(loops).collect();
    names.sort();
    names
        .into_iter()
        .find_map(|name| labelled(dev, &name, label))
}

/// Where the bootstrap stage learns of new devices: the kernel's uevents (scripted in tests).
pub trait DeviceEvents {
    /// Waits at most `timeout`, then returns what came.
    fn wait(&mut self, timeout: Duration) -> Result<crate::sys::uevent::Batch, String>;
}

impl DeviceEvents for crate::sys::uevent::Uevents {
    fn wait(&mut self, timeout: Duration) -> Result<crate::sys::uevent::Batch, String> {
        crate::sys::uevent::Uevents::wait(self, timeout).map_err(|e| e.to_string())
    }
}

/// Loads the drivers of the devices under `sys` and finds the block device in `dev` labelled
/// `containerfs`, within `root_wait`. Between looks it waits on `events` (a new device's
/// `MODALIAS` brings its driver, a new block device is read), or polls without them; sysfs is
/// looked at whole at first, after a quiet spell, after lost events, and at the fallback to the
/// late modules (when no driver has come for [`LATE_FALLBACK`]).
pub fn find_disk<L: ModuleLoader>(
    sys: &Path,
    dev: &Path,
    modules: &mut Modules<L>,
    mut events: Option<&mut dyn DeviceEvents>,
    root_wait: Duration,
) -> Result<PathBuf, String> {
    let deadline = Instant::now() + root_wait;
    let mut scanned = BTreeSet::new();
    // The late modules (virtio, NICs, IDE, fw_cfg, vsock) wait for the tether, unless the disk
    // does not show up without them.
    let mut late = false;
    let mut last_new = Instant::now();
    // Every round but those woken by events looks at sysfs whole; an event round looks at what
    // the events name.
    // The devices on the buses the wanted modules' aliases name (the late ones' too once they
    // are wanted).
    let present = |modules: &Modules<L>, late: bool| modaliases(sys, &modules.index().buses(late));
    let mut aliases = present(modules, late);
    let mut look_all = true;
    let mut new_disks: Vec<String> = Vec::new();
    loop {
        let new = modules.load_matching(&aliases, late);
        if !new.is_empty() {
            say(&format!("loaded {}", new.join(" ")));
            last_new = Instant::now();
        }
        let new_hosts: Vec<PathBuf> = scsi_hosts(sys)
            .into_iter()
            .filter(|h| scanned.insert(h.clone()))
            .collect();
        if !new_hosts.is_empty() && manual_scsi_scan(sys) {
            for h in &new_hosts {
                scan_scsi(h, if late { "- - -" } else { SCSI_DISK_ADDRESS });
            }
            last_new = Instant::now();
        }
        let found = if look_all {
            find_labelled(sys, dev, CONTAINERFS_LABEL)
        } else {
            new_disks
                .iter()
                .filter(|n| is_disk_name(n))
                .find_map(|n| labelled(dev, n, CONTAINERFS_LABEL))
        };
        if let Some(d) = found {
            // Devices that showed up meanwhile get their drivers with the late ones, after the
            // launch.
            return Ok(d);
        }
        if !late && last_new.elapsed() > LATE_FALLBACK {
            say("no disk yet: loading the remaining drivers, scanning every SCSI target");
            late = true;
            scan_scsi_fully(sys);
            aliases = present(modules, late);
            look_all = true;
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            let seen = block_devices(sys);
            return Err(format!(
                "no disk labelled {CONTAINERFS_LABEL:?} after {root_wait:?} (block devices: {}; module failures: {})",
                if seen.is_empty() { "none".into() } else { seen.join(" ") },
                if modules.failures.is_empty() { "none".into() } else { modules.failures.join("; ") },
            ));
        }
        // Until the next thing to do: the fallback, the deadline, or a quiet spell after which
        // sysfs is looked at whole anyway.
        let mut wait = (deadline - now).min(QUIET_LOOK);
        if !late {
            wait = wait.min((last_new + LATE_FALLBACK).saturating_duration_since(now));
        }
        new_disks.clear();
        look_all = true;
        match events.as_mut().map(|u| u.wait(wait)) {
            Some(Ok(batch)) if !batch.lost && !batch.events.is_empty() => {
                look_all = false;
                tracing::trace!("bootstrap: {} device events", batch.events.len());
                for ev in batch.events {
                    if let Some(m) = ev.modalias {
                        aliases.insert(m);
                    }
                    if ev.subsystem == "block" && ev.action == "add" {
                        new_disks.extend(ev.devname);
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!("bootstrap: uevents: {e}; polling sysfs from now on");
                events = None;
                std::thread::sleep(POLL);
            }
            None => std::thread::sleep(POLL),
        }
        if look_all {
            aliases = present(modules, late);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::modules::tests::fake_devices;
    use crate::boot::modules::{ModuleLoader, Modules};
    use tether_proto::modindex::ModuleIndex;

    fn mkfs(dir: &Path, label: &str) -> Option<PathBuf> {
        let img = dir.join(format!("{label}.img"));
        let ok = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label])
            .arg(&img)
            .arg("4M")
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .status()
            .ok()?
            .success();
        ok.then_some(img)
    }

    #[test]
    fn finds_the_disk_by_its_ext4_label() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        std::fs::create_dir_all(sys.join("class/block")).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        let other = mkfs(t.path(), "scratch").expect("mkfs.ext4 (e2fsprogs) is needed");
        let ours = mkfs(t.path(), CONTAINERFS_LABEL).unwrap();
        for (name, img) in [("sda", &other), ("sdb", &ours), ("loop0", &ours)] {
            std::fs::create_dir(sys.join("class/block").join(name)).unwrap();
            std::fs::copy(img, dev.join(name)).unwrap();
        }
        std::fs::create_dir(sys.join("class/block/vda")).unwrap();
        std::fs::write(dev.join("vda"), vec![0u8; 4096]).unwrap(); // not a filesystem
        assert_eq!(
            block_devices(&sys),
            ["sda", "sdb", "vda"],
            "loop devices are skipped"
        );
        assert_eq!(
            find_labelled(&sys, &dev, CONTAINERFS_LABEL),
            Some(dev.join("sdb"))
        );
        assert_eq!(find_labelled(&sys, &dev, "nope"), None);
        // Volumes may be on loop devices (process mode): those are looked at too.
        assert_eq!(find_labelled(&sys, &dev, "scratch"), Some(dev.join("sda")));
        std::fs::create_dir(sys.join("class/block/loop1")).unwrap();
        let vol = mkfs(t.path(), "vol-x").unwrap();
        std::fs::copy(&vol, dev.join("loop1")).unwrap();
        assert_eq!(find_labelled(&sys, &dev, "vol-x"), None);
        assert_eq!(
            find_labelled_with_loops(&sys, &dev, "vol-x"),
            Some(dev.join("loop1"))
        );
        let head = std::fs::read(&other).unwrap();
        assert_eq!(ext_label(&head[..2048]).as_deref(), Some("scratch"));
        assert_eq!(ext_label(&[0u8; 2048]), None);
        assert_eq!(
            ext_label(&[0u8; 100]),
            None,
            "a short read is not a filesystem"
        );
    }

    /// Loads nothing for real: records the modules and runs `hook` with each module's name.
    struct Hooked<F: FnMut(&str)> {
        loaded: Vec<String>,
        hook: F,
    }
    impl<F: FnMut(&str)> ModuleLoader for Hooked<F> {
        fn load(&mut self, file: &Path, _: &str) -> Result<(), String> {
            let name = tether_proto::modindex::module_name(&file.to_string_lossy());
            (self.hook)(&name);
            self.loaded.push(name);
            Ok(())
        }
    }

    /// Device events from a script: each wait runs the next step (which may change the fake
    /// sysfs and /dev) and returns its events; past the end, the wait times out.
    struct Script(std::collections::VecDeque<Step>, usize);
    impl DeviceEvents for Script {
        fn wait(&mut self, timeout: Duration) -> Result<crate::sys::uevent::Batch, String> {
            self.1 += 1;
            match self.0.pop_front() {
                Some(mut step) => Ok(step()),
                None => {
                    std::thread::sleep(timeout.min(Duration::from_millis(5)));
                    Ok(Default::default())
                }
            }
        }
    }

    fn event(
        action: &str,
        subsystem: &str,
        devname: Option<&str>,
        modalias: Option<&str>,
    ) -> crate::sys::uevent::Uevent {
        crate::sys::uevent::Uevent {
            action: action.into(),
            subsystem: subsystem.into(),
            devpath: String::new(),
            devname: devname.map(String::from),
            modalias: modalias.map(String::from),
        }
    }

    type Step = Box<dyn FnMut() -> crate::sys::uevent::Batch>;

    fn script(steps: Vec<Step>) -> Script {
        Script(steps.into(), 0)
    }

    fn batch(events: Vec<crate::sys::uevent::Uevent>, lost: bool) -> crate::sys::uevent::Batch {
        crate::sys::uevent::Batch { events, lost }
    }

    /// `find_disk` under the fake `sys` with its `dev`, with a generous deadline.
    fn find<L: ModuleLoader>(
        sys: &Path,
        modules: &mut Modules<L>,
        events: Option<&mut dyn DeviceEvents>,
    ) -> Result<PathBuf, String> {
        find_disk(
            sys,
            &sys.join("dev"),
            modules,
            events,
            Duration::from_secs(10),
        )
    }

    /// A block device `name` in the fake sysfs and /dev, holding the ext4 image `img`.
    fn plug(sys: &Path, dev: &Path, name: &str, img: &Path) {
        std::fs::create_dir_all(sys.join("class/block").join(name)).unwrap();
        std::fs::create_dir_all(dev).unwrap();
        std::fs::copy(img, dev.join(name)).unwrap();
    }

    const PVSCSI: &str = "pci:v000015ADd000007C0sv000015ADsd000007C0bc01sc00i00";

    fn pvscsi_index() -> ModuleIndex {
        ModuleIndex::parse(
            "module sd_mod s/scsi_mod.ko s/sd_mod.ko\n\
             module vmw_pvscsi s/scsi_mod.ko s/vmw_pvscsi.ko\n\
             module virtio_pci v/virtio_pci.ko\n\
             alias pci:v000015ADd000007C0sv*sd*bc*sc*i* vmw_pvscsi\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             always sd_mod\n\
             late virtio_pci\n",
        )
        .unwrap()
    }

    #[test]
    fn the_disk_comes_as_an_event_after_its_adapters_driver_and_a_scan_of_target_0() {
        let t = fake_devices(&[("pci", "0000:00:10.0", PVSCSI)]);
        let (sys, dev) = (t.path().to_path_buf(), t.path().join("dev"));
        let img = mkfs(t.path(), CONTAINERFS_LABEL).expect("mkfs.ext4 (e2fsprogs) is needed");
        let host = sys.join("class/scsi_host/host0");
        let loader = Hooked {
            loaded: Vec::new(),
            hook: |name: &str| {
                // The midlayer loads with scan=manual; the adapter brings its host.
                if name == "scsi_mod" {
                    let p = sys.join("module/scsi_mod/parameters");
                    std::fs::create_dir_all(&p).unwrap();
                    std::fs::write(p.join("scan"), "manual\n").unwrap();
                }
                if name == "vmw_pvscsi" {
                    std::fs::create_dir_all(&host).unwrap();
                    std::fs::write(host.join("scan"), "").unwrap();
                }
            },
        };
        let mut modules = Modules::new(pvscsi_index(), PathBuf::from("/m"), loader);
        modules.load_always();
        let (s2, d2, i2) = (sys.clone(), dev.clone(), img.clone());
        let mut script = script(vec![
            // Events of no interest first: nothing is looked at again for them.
            Box::new(|| batch(vec![event("add", "module", None, None)], false)),
            Box::new(move || {
                plug(&s2, &d2, "sda", &i2);
                batch(vec![event("add", "block", Some("sda"), None)], false)
            }),
        ]);
        let found = find(&sys, &mut modules, Some(&mut script));
        assert_eq!(found, Ok(dev.join("sda")));
        assert_eq!(
            script.1, 2,
            "found at the second wake-up, with no wait after it"
        );
        assert_eq!(
            std::fs::read_to_string(host.join("scan")).unwrap(),
            SCSI_DISK_ADDRESS,
            "only target 0 is scanned"
        );
        assert_eq!(
            modules.loader.loaded,
            ["scsi_mod", "sd_mod", "vmw_pvscsi"],
            "no late module"
        );
    }

    #[test]
    fn a_device_named_by_an_event_gets_its_driver() {
        let t = fake_devices(&[]);
        let (sys, dev) = (t.path().to_path_buf(), t.path().join("dev"));
        let img = mkfs(t.path(), CONTAINERFS_LABEL).expect("mkfs.ext4 (e2fsprogs) is needed");
        let loader = Hooked {
            loaded: Vec::new(),
            hook: |_: &str| {},
        };
        let mut modules = Modules::new(pvscsi_index(), PathBuf::from("/m"), loader);
        let (s2, d2) = (sys.clone(), dev.clone());
        let mut script = script(vec![
            // The adapter shows up after the first look: its event carries the alias.
            Box::new(|| batch(vec![event("add", "pci", None, Some(PVSCSI))], false)),
            // The disk shows up while events were lost: found by looking at sysfs whole.
            Box::new(move || {
                plug(&s2, &d2, "sdb", &img);
                batch(Vec::new(), true)
            }),
        ]);
        let found = find(&sys, &mut modules, Some(&mut script));
        assert_eq!(found, Ok(dev.join("sdb")));
        assert_eq!(
            script.1, 2,
            "found right after the lost events, not at a later quiet look"
        );
        assert_eq!(modules.loader.loaded, ["scsi_mod", "vmw_pvscsi"]);
    }

    #[test]
    fn without_events_it_polls_and_falls_back_to_the_late_drivers() {
        // A virtio disk: its driver's chain is late, so the disk shows only after the fallback.
        let t = fake_devices(&[(
            "pci",
            "0000:00:04.0",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        )]);
        let (sys, dev) = (t.path().to_path_buf(), t.path().join("dev"));
        let img = mkfs(t.path(), CONTAINERFS_LABEL).expect("mkfs.ext4 (e2fsprogs) is needed");
        let (s2, d2) = (sys.clone(), dev.clone());
        let loader = Hooked {
            loaded: Vec::new(),
            hook: move |name: &str| {
                if name == "virtio_pci" {
                    plug(&s2, &d2, "vda", &img);
                }
            },
        };
        let mut modules = Modules::new(pvscsi_index(), PathBuf::from("/m"), loader);
        let t0 = Instant::now();
        let found = find(&sys, &mut modules, None);
        assert_eq!(found, Ok(dev.join("vda")));
        assert!(
            t0.elapsed() >= LATE_FALLBACK,
            "the late drivers wait for the fallback"
        );
        assert_eq!(modules.loader.loaded, ["virtio_pci"]);
    }

    #[test]
    fn no_disk_by_the_deadline_names_what_was_there() {
        let t = fake_devices(&[]);
        let (sys, dev) = (t.path().to_path_buf(), t.path().join("dev"));
        let other = mkfs(t.path(), "scratch").expect("mkfs.ext4 (e2fsprogs) is needed");
        plug(&sys, &dev, "sdz", &other);
        let loader = Hooked {
            loaded: Vec::new(),
            hook: |_: &str| {},
        };
        let mut modules = Modules::new(pvscsi_index(), PathBuf::from("/m"), loader);
        // An event source that breaks: polling goes on, and the deadline ends it.
        struct Broken;
        impl DeviceEvents for Broken {
            fn wait(&mut self, _: Duration) -> Result<crate::sys::uevent::Batch, String> {
                Err("gone".into())
            }
        }
        let e = find_disk(
            &sys,
            &dev,
            &mut modules,
            Some(&mut Broken),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.contains("no disk labelled \"containerfs\""), "{e}");
        assert!(e.contains("block devices: sdz"), "{e}");
    }
}
