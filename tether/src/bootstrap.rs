//! The bootstrap stage: the tether binary running as `/init` of the initramfs, PID 1 from the
//! start. It mounts what the kernel does not and, on a thread of its own while the tether reads
//! its config and the host attaches (neither needs a module: the backdoor, COM4, COM1), loads the
//! kernel modules that match the devices present, waits for the container's disk (an ext4
//! filesystem labelled `containerfs`), mounts it with a tmpfs at `/.tether` holding a copy of this
//! binary, moves /dev /proc /sys into it and switches the process's root to it; then the sessions
//! may launch. Without a disk the sessions fail with the reason (exit status 125, in guestinfo and
//! to attached clients, and on the debug port) and the VM powers off.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use tether_proto::modindex::ModuleIndex;

pub use tether_proto::vm::CONTAINERFS_LABEL;
/// Where the index of packed modules lives in the initramfs.
pub const MODULE_DIR: &str = "/lib/modules";
pub const INDEX_FILE: &str = "tether.index";
const NEW_ROOT: &str = "/mnt/containerfs";
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
        let f = File::open(file).map_err(|e| e.to_string())?;
        let params = CString::new(params).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let r = nix::kmod::finit_module(&f, &params, nix::kmod::ModuleInitFlags::empty());
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
    loader: L,
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

fn manual_scsi_scan(sys: &Path) -> bool {
    std::fs::read_to_string(sys.join("module/scsi_mod/parameters/scan"))
        .is_ok_and(|s| s.trim() == "manual")
}

fn scan_scsi(scan: &Path, what: &str) {
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

/// The late modules' thread: its id while it runs, and whether it should run at normal priority.
struct LateThread {
    tid: i32,
    hurried: bool,
}

static LATE: std::sync::Mutex<LateThread> = std::sync::Mutex::new(LateThread {
    tid: 0,
    hurried: false,
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
fn load_late_here(then: impl FnOnce()) {
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
    then();
    late_thread().tid = 0;
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

fn say(line: &str) {
    tracing::info!("bootstrap: {line}");
}

/// The bootstrap stage. Never returns: it is the container's tether from the start (PID 1 with
/// no exec in between), and finds, mounts and switches to the container's root on a thread of its
/// own ([`switch_root_then`]) while the tether reads its config and the host attaches.
pub fn main() -> ! {
    let early = early_mounts();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let settings = Settings::from_cmdline(&cmdline);
    let boot = crate::pid1::BootSettings::from_cmdline(&cmdline);
    let out: Box<dyn std::io::Write + Send> =
        match crate::sys::serial::open_raw(Path::new(&boot.debug_log), true) {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(std::io::stderr()),
        };
    let level = crate::logging::init(out);
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    for e in early {
        tracing::warn!("bootstrap: {e}");
    }
    crate::run::pid1_main(&boot, level, crate::run::Root::Bootstrap(settings))
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
            let mounts = crate::pid1::mount_all(&crate::pid1::System);
            let lo = crate::pid1::loopback_up().err();
            for e in mounts
                .iter()
                .chain(crate::pid1::raise_limits().iter())
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

fn early_mounts() -> Vec<String> {
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
        let head = std::fs::read(&other).unwrap();
        assert_eq!(ext_label(&head[..2048]).as_deref(), Some("scratch"));
        assert_eq!(ext_label(&[0u8; 2048]), None);
        assert_eq!(
            ext_label(&[0u8; 100]),
            None,
            "a short read is not a filesystem"
        );
    }

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
    fn fake_devices(devices: &[(&str, &str, &str)]) -> tempfile::TempDir {
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

    #[test]
    fn kernel_command_line() {
        let s = Settings::from_cmdline("console=ttyS1 tether.rootwait=2.5 tether.debug=/dev/ttyS3");
        assert_eq!(s.root_wait, Duration::from_millis(2500));
        assert_eq!(
            Settings::from_cmdline("").root_wait,
            Duration::from_secs(30)
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
