//! What only PID 1 of the containerVM does: mount the filesystems a container expects, raise the
//! limits as VIC did, read its settings from the kernel command line, and at the end sync and
//! power off. It never exits: the kernel would panic.

use std::collections::BTreeSet;
use std::path::Path;

use nix::mount::MsFlags;

/// Mount operations, behind a trait so that the plan is tested without root.
pub trait Mounter {
    /// The mount points in place.
    fn mounted(&self) -> BTreeSet<String>;
    /// The filesystem types the kernel has; `None` while that cannot be told (no /proc yet).
    fn filesystems(&self) -> Option<BTreeSet<String>>;
    fn mkdir(&self, path: &str) -> Result<(), String>;
    fn mount(
        &self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), String>;
    fn symlink(&self, to: &str, at: &str) -> Result<(), String>;
}

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
    /// Tried when `data` is refused (older kernels lack devpts' ptmxmode).
    fallback: Option<&'static str>,
}

fn plan() -> Vec<Mount> {
    let nsd = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    vec![
        Mount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nsd | MsFlags::MS_NOEXEC,
            data: "",
            fallback: None,
        },
        Mount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nsd | MsFlags::MS_NOEXEC,
            data: "",
            fallback: None,
        },
        Mount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: "mode=0755",
            fallback: None,
        },
        Mount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: "gid=5,mode=620,ptmxmode=666",
            fallback: Some("gid=5,mode=620"),
        },
        Mount {
            source: "shm",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: nsd,
            data: "mode=1777",
            fallback: None,
        },
        Mount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: nsd,
            data: "mode=755",
            fallback: None,
        },
        Mount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nsd | MsFlags::MS_NOEXEC,
            data: "",
            fallback: None,
        },
    ]
}

/// Mounts what is not mounted yet. Failures are returned to be reported; none is fatal.
pub fn mount_all(m: &dyn Mounter) -> Vec<String> {
    let mut errors = Vec::new();
    // Read once each (each read of /proc costs a millisecond or two under emulation), the
    // filesystems again once /proc is there.
    let mounted = m.mounted();
    let mut filesystems = m.filesystems();
    for p in plan() {
        let lacking = filesystems.as_ref().is_some_and(|f| !f.contains(p.fstype));
        if mounted.contains(p.target) || lacking {
            continue;
        }
        if let Err(e) = m.mkdir(p.target) {
            errors.push(format!("mkdir {}: {e}", p.target));
            continue;
        }
        let first = m.mount(p.source, p.target, p.fstype, p.flags, p.data);
        let result = match (first, p.fallback) {
            (Err(_), Some(data)) => m.mount(p.source, p.target, p.fstype, p.flags, data),
            (r, _) => r,
        };
        match result {
            Ok(()) if p.target == "/proc" => filesystems = m.filesystems(),
            Ok(()) => {}
            Err(e) => errors.push(format!("mount {} on {}: {e}", p.fstype, p.target)),
        }
    }
    for (to, at) in [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        if let Err(e) = m.symlink(to, at) {
            errors.push(format!("symlink {at}: {e}"));
        }
    }
    errors
}

/// The real system.
pub struct System;

impl Mounter for System {
    fn mounted(&self) -> BTreeSet<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.split(' ').nth(4))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn filesystems(&self) -> Option<BTreeSet<String>> {
        // Before /proc is mounted nothing can be checked; the first mounts are always there.
        let t = std::fs::read_to_string("/proc/filesystems").ok()?;
        Some(
            t.lines()
                .filter_map(|l| l.split_whitespace().last())
                .map(String::from)
                .collect(),
        )
    }

    fn mkdir(&self, path: &str) -> Result<(), String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())
    }

    fn mount(
        &self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(), String> {
        let data = (!data.is_empty()).then_some(data);
        nix::mount::mount(Some(source), target, Some(fstype), flags, data)
            .map_err(|e| e.to_string())
    }

    fn symlink(&self, to: &str, at: &str) -> Result<(), String> {
        match std::os::unix::fs::symlink(to, at) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}

/// Brings the loopback interface up: every container has `lo` (PID 1's duty whatever the
/// network config; the rest of networking is configured from the config).
pub fn loopback_up() -> Result<(), String> {
    crate::sys::ioctl::interface_up("lo").map_err(|e| format!("bringing lo up: {e}"))
}

/// VIC's limits: open files 1048576; core, locked memory and processes unlimited; the stack's
/// hard limit unlimited (its soft limit left alone).
pub fn raise_limits() -> Vec<String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let mut errors = Vec::new();
    let mut set = |r: Resource, soft: u64, hard: u64| {
        if let Err(e) = setrlimit(r, soft, hard) {
            errors.push(format!("{r:?}: {e}"));
        }
    };
    set(Resource::RLIMIT_NOFILE, 1_048_576, 1_048_576);
    set(Resource::RLIMIT_CORE, RLIM_INFINITY, RLIM_INFINITY);
    set(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY);
    set(Resource::RLIMIT_NPROC, RLIM_INFINITY, RLIM_INFINITY);
    let stack_soft = getrlimit(Resource::RLIMIT_STACK).map_or(8 << 20, |(s, _)| s);
    set(Resource::RLIMIT_STACK, stack_soft, RLIM_INFINITY);
    errors
}

/// Settings from the kernel command line (`tether.KEY=VALUE`), with the VM's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSettings {
    /// `tether.guestinfo=`: by default `auto`: the backdoor on VMware, else COM4 (`/dev/ttyS3`),
    /// where a QEMU host serves it.
    pub guestinfo: String,
    /// `tether.attach=`
    pub attach: String,
    /// `tether.debug=`: where diagnostics go.
    pub debug_log: String,
    /// `tether.output=`: where session output goes; by default `auto`: the virtio port
    /// `org.tether.output` when the host offers one (QEMU), else COM3 (`/dev/ttyS2`) as on VMware.
    pub output_log: String,
    /// `tether.dir=`: the tether's own directory in the container (VIC's `/.tether`), where its
    /// copies of `/etc/hosts`, `resolv.conf` and `hostname` live.
    pub tether_dir: String,
    /// `tether.sys=`: where the NICs' PCI devices are looked up (`/sys`; a test's own tree).
    pub sys: String,
    /// `tether.volwait=`: seconds a volume's disk may take to show up.
    pub volume_wait: Option<u64>,
}

impl Default for BootSettings {
    fn default() -> Self {
        Self {
            guestinfo: "auto".into(),
            attach: "serial:/dev/ttyS0".into(),
            debug_log: "/dev/ttyS1".into(),
            output_log: "auto".into(),
            tether_dir: "/.tether".into(),
            sys: "/sys".into(),
            volume_wait: None,
        }
    }
}

impl BootSettings {
    pub fn from_cmdline(cmdline: &str) -> Self {
        let mut s = Self::default();
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "tether.guestinfo" => s.guestinfo = value.into(),
                "tether.attach" => s.attach = value.into(),
                "tether.debug" => s.debug_log = value.into(),
                "tether.output" => s.output_log = value.into(),
                "tether.dir" => s.tether_dir = value.into(),
                "tether.sys" => s.sys = value.into(),
                "tether.volwait" => s.volume_wait = value.parse().ok(),
                _ => {}
            }
        }
        s
    }

    pub fn read() -> Self {
        Self::from_cmdline(&std::fs::read_to_string(Path::new("/proc/cmdline")).unwrap_or_default())
    }
}

/// Syncs and powers the machine off. Never returns: if the power-off fails, this waits forever.
pub fn power_off() -> ! {
    nix::unistd::sync();
    // Returns only on failure (in a PID namespace it ends the namespace instead).
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!("power off: {e}; halting here");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    #[derive(Default)]
    struct Fake {
        mounted: BTreeSet<String>,
        unsupported: BTreeSet<String>,
        refuse_data: BTreeSet<String>,
        log: RefCell<Vec<String>>,
    }

    impl Mounter for Fake {
        fn mounted(&self) -> BTreeSet<String> {
            self.mounted.clone()
        }
        fn filesystems(&self) -> Option<BTreeSet<String>> {
            // Like the kernel's list: unknown until /proc is mounted.
            let proc_there = self.mounted.contains("/proc")
                || self
                    .log
                    .borrow()
                    .iter()
                    .any(|l| l.starts_with("proc /proc"));
            proc_there.then(|| {
                ["proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup2"]
                    .into_iter()
                    .filter(|f| !self.unsupported.contains(*f))
                    .map(String::from)
                    .collect()
            })
        }
        fn mkdir(&self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn mount(
            &self,
            _: &str,
            target: &str,
            fstype: &str,
            _: MsFlags,
            data: &str,
        ) -> Result<(), String> {
            if self.refuse_data.contains(data) {
                return Err("invalid argument".into());
            }
            self.log
                .borrow_mut()
                .push(format!("{fstype} {target} {data}"));
            Ok(())
        }
        fn symlink(&self, to: &str, at: &str) -> Result<(), String> {
            self.log.borrow_mut().push(format!("{at} -> {to}"));
            Ok(())
        }
    }

    #[test]
    fn mounts_everything_in_order_on_a_bare_root() {
        let f = Fake::default();
        assert!(mount_all(&f).is_empty());
        let log = f.log.borrow();
        assert_eq!(
            log[..7],
            [
                "proc /proc ",
                "sysfs /sys ",
                "devtmpfs /dev mode=0755",
                "devpts /dev/pts gid=5,mode=620,ptmxmode=666",
                "tmpfs /dev/shm mode=1777",
                "tmpfs /run mode=755",
                "cgroup2 /sys/fs/cgroup ",
            ]
        );
        assert!(log.contains(&"/dev/fd -> /proc/self/fd".to_string()));
    }

    #[test]
    fn on_a_bare_root_what_the_kernel_lacks_is_known_once_proc_is_mounted() {
        let f = Fake {
            unsupported: ["cgroup2".to_string()].into(),
            ..Fake::default()
        };
        assert!(mount_all(&f).is_empty());
        let log = f.log.borrow();
        assert!(log.iter().any(|l| l.starts_with("tmpfs /run")));
        assert!(
            !log.iter().any(|l| l.starts_with("cgroup2")),
            "cgroup2 is not tried: {log:?}"
        );
    }

    #[test]
    fn skips_what_the_bootstrap_moved_in_and_what_the_kernel_lacks() {
        let f = Fake {
            mounted: ["/proc", "/sys", "/dev"].map(String::from).into(),
            unsupported: ["cgroup2".to_string()].into(),
            refuse_data: ["gid=5,mode=620,ptmxmode=666".to_string()].into(),
            ..Fake::default()
        };
        assert!(mount_all(&f).is_empty());
        let log = f.log.borrow();
        assert_eq!(
            log[..3],
            [
                "devpts /dev/pts gid=5,mode=620",
                "tmpfs /dev/shm mode=1777",
                "tmpfs /run mode=755"
            ]
        );
    }

    #[test]
    fn failures_are_reported_not_fatal() {
        let f = Fake {
            refuse_data: ["mode=1777".to_string()].into(),
            ..Fake::default()
        };
        let errors = mount_all(&f);
        assert_eq!(errors, ["mount tmpfs on /dev/shm: invalid argument"]);
        assert!(
            f.log.borrow().iter().any(|l| l.starts_with("tmpfs /run")),
            "later mounts still happen"
        );
    }

    #[test]
    fn kernel_command_line() {
        let s = BootSettings::from_cmdline(
            "console=ttyS1 tether.guestinfo=serial:/dev/ttyS3 quiet tether.attach=tcp:10.0.2.2:2377",
        );
        assert_eq!(s.guestinfo, "serial:/dev/ttyS3");
        assert_eq!(s.attach, "tcp:10.0.2.2:2377");
        assert_eq!(s.debug_log, "/dev/ttyS1");
        assert_eq!(BootSettings::from_cmdline(""), BootSettings::default());
    }
}
