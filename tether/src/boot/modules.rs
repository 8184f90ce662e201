//! Kernel modules without udev or kmod: the initramfs' index of packed modules, the ones the
//! devices present need (by `modalias`), loaded once each in dependency order; the SCSI scans; and
//! the late modules (NICs, virtio, vsock) the tether loads after the container's start at idle
//! priority.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tether_proto::modindex::ModuleIndex;

/// Where the index of packed modules lives in the initramfs.
pub const MODULE_DIR: &str = "/lib/modules";
pub const INDEX_FILE: &str = "tether.index";

/// The `modalias` of every device on `buses` under `sys` (`/sys`): only those the packed
/// modules' aliases name, since a walk of every bus costs tens of milliseconds under emulation.
pub fn modaliases(sys: &Path, buses: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for bus in buses {
        for dev in std::fs::read_dir(sys.join("bus").join(bus).join("devices"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(a) = std::fs::read_to_string(dev.path().join("modalias")) {
                let a = a.trim();
                if !a.is_empty() {
                    out.insert(a.to_string());
                }
            }
        }
    }
    out
}

/// Loads kernel modules from files; behind a trait so that selection is tested without root.
pub trait ModuleLoader {
    /// Loads the module in `file` with `params` (`name=value` words).
    fn load(&mut self, file: &Path, params: &str) -> Result<(), String>;
    /// Whether the kernel has module `name` already (the bootstrap stage loaded it, for the
    /// tether loading the late ones).
    fn is_loaded(&self, _name: &str) -> bool {
        false
    }
}

pub struct Finit;

impl ModuleLoader for Finit {
    fn is_loaded(&self, name: &str) -> bool {
        Path::new("/sys/module").join(name).exists()
    }

    fn load(&mut self, file: &Path, params: &str) -> Result<(), String> {
        let params = CString::new(params).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let compressed = file
            .to_str()
            .is_some_and(|f| f.ends_with(tether_proto::modindex::COMPRESSED_SUFFIX));
        let r = if compressed {
            let z = std::fs::read(file).map_err(|e| e.to_string())?;
            let image = miniz_oxide::inflate::decompress_to_vec_zlib(&z)
                .map_err(|e| format!("inflating: {e:?}"))?;
            nix::kmod::init_module(&image, &params)
        } else {
            let f = File::open(file).map_err(|e| e.to_string())?;
            nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty())
        };
        tracing::debug!("{} loaded in {:?}", file.display(), t.elapsed());
        match r {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Loads modules once each, dependencies first.
pub struct Modules<L> {
    index: ModuleIndex,
    dir: PathBuf,
    pub(super) loader: L,
    loaded_modules: BTreeSet<String>,
    loaded_files: BTreeSet<String>,
    /// Parameters by module name.
    params: std::collections::BTreeMap<String, String>,
    /// Modules that failed, with why (reported once).
    pub failures: Vec<String>,
}

impl<L: ModuleLoader> Modules<L> {
    pub fn new(index: ModuleIndex, dir: PathBuf, loader: L) -> Self {
        Self {
            index,
            dir,
            loader,
            loaded_modules: BTreeSet::new(),
            loaded_files: BTreeSet::new(),
            params: Default::default(),
            failures: Vec::new(),
        }
    }

    pub fn index(&self) -> &ModuleIndex {
        &self.index
    }

    /// Loads module `name` with `params` when it comes to be loaded.
    pub fn set_params(&mut self, name: &str, params: &str) {
        self.params.insert(name.to_string(), params.to_string());
    }

    /// Loads a module and what it needs; returns whether anything new was tried.
    pub fn load(&mut self, name: &str) -> bool {
        if !self.loaded_modules.insert(name.to_string()) || self.loader.is_loaded(name) {
            return false;
        }
        let files = self.index.modules.get(name).cloned().unwrap_or_default();
        for f in files {
            let module = tether_proto::modindex::module_name(&f);
            if !self.loaded_files.insert(f.clone()) || self.loader.is_loaded(&module) {
                continue;
            }
            let params = self.params.get(&module).map_or("", String::as_str);
            if let Err(e) = self.loader.load(&self.dir.join(&f), params) {
                // A CPU-specific variant may refuse (ENODEV) while its generic twin loads.
                self.failures.push(format!("{f}: {e}"));
            }
        }
        true
    }

    pub fn load_always(&mut self) {
        for m in self.index.always.clone() {
            self.load(&m);
        }
    }

    /// The modules matching any of `aliases` not loaded yet (the late ones too with `late`): the
    /// others first, by name, then the late ones in the index's order.
    fn wanted(&self, aliases: &BTreeSet<String>, late: bool) -> Vec<String> {
        let matching: BTreeSet<String> = aliases
            .iter()
            .flat_map(|a| self.index.matching(a).map(String::from).collect::<Vec<_>>())
            .filter(|m| !self.loaded_modules.contains(m))
            .collect();
        let rank = |m: &String| self.index.late.iter().position(|l| l == m);
        let mut wanted: Vec<String> = matching
            .into_iter()
            .filter(|m| late || rank(m).is_none())
            .collect();
        wanted.sort_by_key(|m| rank(m).map_or(0, |r| r + 1));
        wanted
    }

    /// Loads the modules matching any of `aliases` (the late ones too with `late`); returns the
    /// names newly loaded.
    pub fn load_matching(&mut self, aliases: &BTreeSet<String>, late: bool) -> Vec<String> {
        let wanted = self.wanted(aliases, late);
        wanted.into_iter().filter(|m| self.load(m)).collect()
    }

    /// Loads the first module [`Self::load_matching`] would load (skipping those the kernel has
    /// already); returns its name.
    pub fn load_next(&mut self, aliases: &BTreeSet<String>, late: bool) -> Option<String> {
        self.wanted(aliases, late)
            .into_iter()
            .find(|m| self.load(m))
    }
}

/// Where the SCSI hosts are asked to scan: `/sys/class/scsi_host/host*/scan`.
pub fn scsi_hosts(sys: &Path) -> Vec<PathBuf> {
    let mut hosts: Vec<PathBuf> = std::fs::read_dir(sys.join("class/scsi_host"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("scan"))
        .collect();
    hosts.sort();
    hosts
}

/// The SCSI midlayer loads with this: the bootstrap stage scans only where the container's disk
/// is (target 0, LUN 0 of each host) instead of every target of every host (16 on pvscsi, each a
/// device set up and torn down: a third of a second under emulation); the rest waits for the
/// tether ([`scan_scsi_fully`]).
pub const SCSI_MANUAL_SCAN: (&str, &str) = ("scsi_mod", "scan=manual");
/// Channel, target and LUN of the container's disk on its SCSI host.
pub const SCSI_DISK_ADDRESS: &str = "0 0 0";

pub(super) fn manual_scsi_scan(sys: &Path) -> bool {
    std::fs::read_to_string(sys.join("module/scsi_mod/parameters/scan"))
        .is_ok_and(|s| s.trim() == "manual")
}

pub(super) fn scan_scsi(scan: &Path, what: &str) {
    let t = Instant::now();
    match std::fs::write(scan, what) {
        Ok(()) => tracing::debug!("SCSI scan {what:?} in {:?}", t.elapsed()),
        Err(e) => tracing::warn!("scanning SCSI {what:?} at {}: {e}", scan.display()),
    }
}

/// Scans every SCSI host whole, if the midlayer left scanning to us: the disks beside the
/// container's (volumes) show up.
pub fn scan_scsi_fully(sys: &Path) {
    if manual_scsi_scan(sys) {
        for h in scsi_hosts(sys) {
            scan_scsi(&h, "- - -");
        }
    }
}

/// The tether's copy in the container (VIC's place for it).
pub const TETHER_COPY: &str = "/.tether/tether";

/// Where the tether finds the modules after switch_root (the bootstrap stage binds them there).
pub const TETHER_MODULE_DIR: &str = "/.tether/lib/modules";

/// In the tether: loads the modules the bootstrap stage left for later (see the index's `late`),
/// as drivers bring new devices (virtio_pci, then the virtio devices'), then scans the SCSI hosts
/// whole.
pub fn load_late() {
    let dir = Path::new(TETHER_MODULE_DIR);
    let Ok(text) = std::fs::read_to_string(dir.join(INDEX_FILE)) else {
        return;
    };
    match ModuleIndex::parse(&text) {
        Ok(index) => {
            let buses = index.buses(true);
            let mut m = Modules::new(index, dir.to_path_buf(), Finit);
            // One at a time, looking again after each: the virtio devices that virtio_pci
            // brings (the output log's port) get their driver before the slower late ones.
            let mut loaded = Vec::new();
            while let Some(name) = m.load_next(&modaliases(Path::new("/sys"), &buses), true) {
                loaded.push(name);
            }
            if !loaded.is_empty() {
                tracing::info!("loaded {}", loaded.join(" "));
            }
            for f in &m.failures {
                tracing::warn!("module {f}");
            }
        }
        Err(e) => tracing::warn!("late modules: {e}"),
    }
    scan_scsi_fully(Path::new("/sys"));
}

/// Loads the packed modules `names` (with what they need) from the tether's module directory,
/// for a feature of the container's config (NFS volumes). Returns the failures.
pub fn load_named(names: &[&str]) -> Vec<String> {
    let dir = Path::new(TETHER_MODULE_DIR);
    let Ok(text) = std::fs::read_to_string(dir.join(INDEX_FILE)) else {
        // No module directory (process mode): the running kernel has what it has.
        return Vec::new();
    };
    match ModuleIndex::parse(&text) {
        Ok(index) => {
            let mut m = Modules::new(index, dir.to_path_buf(), Finit);
            for n in names {
                if m.load(n) {
                    tracing::info!("loaded {n}");
                }
            }
            m.failures
        }
        Err(e) => vec![format!("the module index: {e}")],
    }
}

/// The late modules' thread: its id while it runs, and whether it should run at normal priority.
struct LateThread {
    tid: i32,
    hurried: bool,
    /// The late modules are all loaded (or failed): no driver will bring another device.
    done: bool,
}

static LATE: std::sync::Mutex<LateThread> = std::sync::Mutex::new(LateThread {
    tid: 0,
    hurried: false,
    done: false,
});

fn late_thread() -> std::sync::MutexGuard<'static, LateThread> {
    LATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts [`load_late`] on a thread of its own at idle priority: on a one-CPU VM, module loading
/// beside the container's start would otherwise take the CPU from the config read, the attach
/// handshake and the launch, which the user waits for. [`hurry_late`] lifts that.
pub fn start_late() {
    let spawned = std::thread::Builder::new()
        .name("late-modules".into())
        .spawn(|| load_late_here(|| {}));
    if let Err(e) = spawned {
        tracing::warn!("late modules: {e}");
    }
}

/// [`load_late`], then `then`, on the calling thread, at idle priority until [`hurry_late`].
pub(super) fn load_late_here(then: impl FnOnce()) {
    {
        let mut t = late_thread();
        t.tid = crate::sys::sched::gettid();
        if !t.hurried {
            if let Err(e) = crate::sys::sched::set_idle(t.tid, true) {
                tracing::debug!("late modules at idle priority: {e}");
            }
        }
    }
    load_late();
    late_thread().done = true;
    then();
    late_thread().tid = 0;
}

/// Whether the late modules may still bring devices (they have not all loaded yet).
pub fn late_loading() -> bool {
    !late_thread().done
}

/// How long after a launch the late modules still load at idle priority.
pub const LATE_IDLE_AFTER_LAUNCH: Duration = Duration::from_secs(1);

/// The late modules load at normal priority from now on.
pub fn hurry_late() {
    let mut t = late_thread();
    if !t.hurried {
        t.hurried = true;
        if t.tid != 0 {
            if let Err(e) = crate::sys::sched::set_idle(t.tid, false) {
                tracing::debug!("late modules at normal priority: {e}");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records the files loaded; the modules in `.1` count as loaded already.
    struct Recorder(Vec<String>, Vec<&'static str>);
    impl ModuleLoader for &mut Recorder {
        fn is_loaded(&self, name: &str) -> bool {
            self.1.contains(&name)
        }
        fn load(&mut self, file: &Path, params: &str) -> Result<(), String> {
            let f = file.file_name().unwrap().to_string_lossy().into_owned();
            self.0.push(if params.is_empty() {
                f.clone()
            } else {
                format!("{f} {params}")
            });
            if f == "crc32c-intel.ko" {
                return Err("No such device".into());
            }
            Ok(())
        }
    }

    /// A sysfs with devices of (bus, name, modalias).
    pub(crate) fn fake_devices(devices: &[(&str, &str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (bus, dev, alias) in devices {
            let d = t.path().join("bus").join(bus).join("devices").join(dev);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("modalias"), format!("{alias}\n")).unwrap();
        }
        t
    }

    #[test]
    fn loads_what_the_devices_present_need_once_each() {
        let t = fake_devices(&[
            (
                "pci",
                "0000:00:04.0",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            ),
            (
                "pci",
                "0000:00:05.0",
                "pci:v00008086d00007010sv00000000sd00000000bc01sc01i80",
            ),
            ("virtio", "virtio0", "virtio:d00000002v00001AF4"),
        ]);
        let sys = t.path();
        let index = ModuleIndex::parse(
            "module virtio_pci v/virtio_ring.ko v/virtio.ko v/virtio_pci.ko\n\
             module virtio_blk v/virtio_ring.ko v/virtio.ko v/virtio_blk.ko\n\
             module vmw_pvscsi s/vmw_pvscsi.ko\n\
             module ext4 c/crc32c-intel.ko c/crc32c_generic.ko e/ext4.ko\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias virtio:d00000002v* virtio_blk\n\
             alias pci:v000015ADd000007C0sv*sd*bc*sc*i* vmw_pvscsi\n\
             module ata_piix a/ata_piix.ko\n\
             alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix\n\
             always ext4\n\
             late ata_piix\n",
        )
        .unwrap();
        let mut rec = Recorder(Vec::new(), Vec::new());
        let buses = index.buses(true);
        let mut m = Modules::new(index, PathBuf::from("/lib/modules"), &mut rec);
        m.load_always();
        let aliases = modaliases(sys, &buses);
        assert_eq!(
            m.load_matching(&aliases, false),
            ["virtio_blk", "virtio_pci"]
        );
        assert!(
            m.load_matching(&aliases, false).is_empty(),
            "a second scan loads nothing"
        );
        assert_eq!(
            m.load_matching(&aliases, true),
            ["ata_piix"],
            "late modules when asked"
        );
        assert_eq!(m.failures, ["c/crc32c-intel.ko: No such device"]);
        assert_eq!(
            rec.0,
            [
                "crc32c-intel.ko",
                "crc32c_generic.ko",
                "ext4.ko",
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_blk.ko",
                "virtio_pci.ko",
                "ata_piix.ko"
            ],
            "shared dependencies load once, before their users; late ones last; pvscsi is not present"
        );
    }

    #[test]
    fn one_at_a_time_the_others_first_then_the_late_ones_in_order_with_parameters() {
        let t = fake_devices(&[
            (
                "pci",
                "0000:00:04.0",
                "pci:v00001AF4d00001003sv0sd0bc07sc80i00",
            ),
            (
                "pci",
                "0000:00:05.0",
                "pci:v00008086d00007010sv0sd0bc01sc01i80",
            ),
            ("virtio", "virtio0", "virtio:d00000002v00001AF4"),
        ]);
        let sys = t.path();
        let index = ModuleIndex::parse(
            "module virtio_pci v/virtio_ring.ko v/virtio.ko v/virtio_pci.ko\n\
             module virtio_blk v/virtio_ring.ko v/virtio.ko v/virtio_blk.ko\n\
             module ata_piix a/ata_piix.ko\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
             alias pci:v00008086d00007010sv*sd*bc*sc*i* ata_piix\n\
             alias virtio:d00000002v* virtio_blk\n\
             late virtio_pci ata_piix\n",
        )
        .unwrap();
        let mut rec = Recorder(Vec::new(), vec!["ata_piix"]);
        let buses = index.buses(true);
        let mut m = Modules::new(index, PathBuf::from("/m"), &mut rec);
        m.set_params("virtio_pci", "force_legacy=1");
        let aliases = modaliases(sys, &buses);
        assert_eq!(m.load_next(&aliases, true).as_deref(), Some("virtio_blk"));
        assert_eq!(m.load_next(&aliases, true).as_deref(), Some("virtio_pci"));
        assert_eq!(
            m.load_next(&aliases, true),
            None,
            "ata_piix is in the kernel already"
        );
        assert_eq!(
            rec.0,
            [
                "virtio_ring.ko",
                "virtio.ko",
                "virtio_blk.ko",
                "virtio_pci.ko force_legacy=1"
            ]
        );
    }

    #[test]
    fn modules_the_kernel_has_are_not_loaded_again() {
        let index = ModuleIndex::parse(
            "module virtio_blk v/virtio_ring.ko v/virtio.ko v/virtio_blk.ko\n\
             module ata_piix a/ata_piix.ko\n",
        )
        .unwrap();
        let mut rec = Recorder(Vec::new(), vec!["virtio_ring", "ata_piix"]);
        let mut m = Modules::new(index, PathBuf::from("/m"), &mut rec);
        assert!(m.load("virtio_blk"));
        assert!(!m.load("ata_piix"), "loaded already: nothing new tried");
        assert_eq!(rec.0, ["virtio.ko", "virtio_blk.ko"]);
    }
}
