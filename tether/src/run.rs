//! `tether run`: the tether as an ordinary process (or as PID 1 of a PID namespace) for
//! development and tests. Everything is as in the VM except that it adopts orphans as a
//! subreaper and exits with status 0 at the end instead of powering off.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tether_proto::config::ExecutorConfig;
use tether_proto::guestinfo::GuestInfo;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::agent::{Agent, Ending, Event, OnConfig};
use crate::boot::pid1;
use crate::guestinfo::Guestinfo;
use crate::guestinfo::{open_guestinfo, virtio_port};
use crate::logging;
use crate::net::endpoint::{Find, RealDhcp};
use crate::net::link::Netlink;
use crate::net::{EtcPaths, Network, Publish};
use crate::session::outlog::{LogOpener, OutputLog};
use crate::session::reaper::Reaper;
use crate::session::{Ctx, Settings};

/// `tether run`'s options (see [`crate::cli::USAGE`]).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the config comes from (a file, `unix:`, `tcp:`/HOST:PORT, `serial:`, `virtio:`,
    /// `backdoor`, `auto`).
    pub guestinfo: String,
    /// The attach line (the tether connects to the host, as the VM's serial port does).
    pub attach: Option<String>,
    /// Where session output goes, in VIC's output.log format.
    pub output_log: Option<PathBuf>,
    /// Where the tether's own diagnostics go (stderr when absent).
    pub debug_log: Option<PathBuf>,
    /// Seconds between a session's stop signal and SIGKILL to its process group.
    pub stop_timeout: f64,
    /// Seconds a session's output may keep draining after it exits.
    pub drain_timeout: f64,
    /// Seconds a RunBlock session waits for `unblock` before it starts anyway.
    pub runblock_timeout: f64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            guestinfo: String::new(),
            attach: None,
            output_log: None,
            debug_log: None,
            stop_timeout: 10.0,
            drain_timeout: 2.0,
            runblock_timeout: 60.0,
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// Opens a log destination: a serial device (made raw: a path under `/dev`, which must exist)
/// or a file (appended to; `/dev/shm` holds files).
fn open_log(path: &Path) -> anyhow::Result<File> {
    let result = if path.starts_with("/dev/") && !path.starts_with("/dev/shm/") {
        crate::sys::serial::open_raw(path, true)
    } else {
        OpenOptions::new().create(true).append(true).open(path)
    };
    result.with_context(|| format!("opening {}", path.display()))
}

/// The output log's device in the VM: the virtio port `org.tether.output` where the host has a
/// virtio-serial controller (its driver is a late module: this waits for the port, at most
/// [`OUTPUT_PORT_WAIT`]), else COM3 as on VMware.
fn output_port(sys: &Path) -> PathBuf {
    const COM3: &str = "/dev/ttyS2";
    // virtio console: legacy and modern PCI device ids.
    if !pci_device_present(sys, 0x1af4, &[0x1003, 0x1043]) {
        return PathBuf::from(COM3);
    }
    let deadline = std::time::Instant::now() + OUTPUT_PORT_WAIT;
    loop {
        if let Ok(p) = virtio_port(sys, tether_proto::vm::OUTPUT_PORT) {
            return p;
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                "no virtio port {:?} after {OUTPUT_PORT_WAIT:?}; the output log goes to COM3",
                tether_proto::vm::OUTPUT_PORT
            );
            return PathBuf::from(COM3);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long the output log waits for its virtio port to appear.
const OUTPUT_PORT_WAIT: Duration = Duration::from_secs(20);

/// Whether a PCI device of `vendor` with one of `devices` is present.
pub fn pci_device_present(sys: &Path, vendor: u16, devices: &[u16]) -> bool {
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| u16::from_str_radix(t.trim().trim_start_matches("0x"), 16).ok())
    };
    std::fs::read_dir(sys.join("bus/pci/devices"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| {
            read(d.path().join("vendor")) == Some(vendor)
                && read(d.path().join("device")).is_some_and(|id| devices.contains(&id))
        })
}

/// Runs the tether in process mode. Returns the process exit status.
pub fn run(opts: RunOptions) -> anyhow::Result<i32> {
    let debug_out: Box<dyn Write + Send> = match &opts.debug_log {
        Some(p) => Box::new(open_log(p)?),
        None => Box::new(std::io::stderr()),
    };
    let level = logging::init(debug_out);
    // What ends the tether is in its debug log too, where the host reads it.
    let gi = open_guestinfo(&opts.guestinfo)
        .inspect_err(|e| tracing::error!("guestinfo {}: {e:#}", opts.guestinfo))?;
    let output = opts.output_log.as_deref().map(open_log).transpose()?;
    if let Err(e) = crate::sys::become_subreaper() {
        tracing::warn!("cannot become a subreaper ({e}); orphans go to the real init");
    }
    let settings = Settings {
        drain_timeout: secs(opts.drain_timeout),
        runblock_timeout: secs(opts.runblock_timeout),
        stop_timeout: secs(opts.stop_timeout),
        attach: opts.attach.clone(),
        ..Settings::default()
    };
    let output = output.map(|f| -> LogOpener { Box::new(move || Some(Box::new(f))) });
    let ending = serve(gi, output, level, settings, None)
        .inspect_err(|e| tracing::error!("stopping: {e:#}"))?;
    tracing::info!("tether done: {ending:?}");
    Ok(0)
}

/// The bootstrap stage. Never returns: it is the container's tether from the start (PID 1 with
/// no exec in between), and finds, mounts and switches to the container's root on a thread of its
/// own ([`crate::boot::switch_root_then`]) while the tether reads its config and the host attaches.
pub fn bootstrap() -> ! {
    let early = crate::boot::early_mounts();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let settings = crate::boot::Settings::from_cmdline(&cmdline);
    let boot = crate::boot::pid1::BootSettings::from_cmdline(&cmdline);
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
    pid1_main(&boot, level, Root::Bootstrap(settings))
}

/// PID 1 of the containerVM (`tether init`): mounts, limits, settings from the kernel command
/// line, the sessions, then sync and power off. Never returns, whatever fails on the way (each
/// failure is reported on the debug port first).
pub fn init(cmdline: Option<String>) -> ! {
    let mount_errors = pid1::mount_all(&pid1::System);
    let boot = match cmdline {
        Some(c) => pid1::BootSettings::from_cmdline(&c),
        None => pid1::BootSettings::read(),
    };
    let debug_out: Box<dyn Write + Send> = match open_log(Path::new(&boot.debug_log)) {
        Ok(f) => Box::new(f),
        Err(_) => Box::new(std::io::stderr()),
    };
    let level = logging::init(debug_out);
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    let lo = pid1::loopback_up().err();
    for e in mount_errors
        .iter()
        .chain(pid1::raise_limits().iter())
        .chain(lo.iter())
    {
        tracing::warn!("setup: {e}");
    }
    pid1_main(&boot, level, Root::Ready)
}

/// Where PID 1's container root comes from.
pub enum Root {
    /// In place already.
    Ready,
    /// The bootstrap stage prepares it on a thread of its own and switches to it, while the
    /// config is read and the host attaches; launches wait for it.
    Bootstrap(crate::boot::Settings),
}

/// The sessions as PID 1, then power off.
pub fn pid1_main(boot: &pid1::BootSettings, level: logging::LevelHandle, root: Root) -> ! {
    tracing::info!(
        ?boot,
        "tether {} starting as PID 1",
        env!("CARGO_PKG_VERSION")
    );
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> anyhow::Result<Ending> {
            // Before any other thread: the backdoor's I/O permission is inherited only by later
            // threads. (COM4 and the backdoor need no module: this works in the initramfs.)
            let gi = open_guestinfo(&boot.guestinfo)?;
            // The disk in place (the bootstrap thread's gate), then the container's network and
            // identity in it (NICs, addresses, routes, hostname, hosts, resolv.conf) once the
            // config is known: launches wait for both. The leases are kept on that thread after.
            let disk_ready = Arc::new(crate::gate::Gate::default());
            let root_ready = Arc::new(crate::gate::Gate::default());
            let (config_tx, config_rx) =
                std::sync::mpsc::sync_channel::<(ExecutorConfig, Guestinfo)>(1);
            let network: Arc<Mutex<Option<Arc<Mutex<Network>>>>> = Arc::default();
            let volume_mounts: Arc<Mutex<crate::volume::Mounted>> = Arc::default();
            {
                let (disk, root, held) = (disk_ready.clone(), root_ready.clone(), network.clone());
                let mounts = volume_mounts.clone();
                let boot = boot.clone();
                std::thread::Builder::new()
                    .name("network".into())
                    .spawn(move || {
                        let outcome = disk.wait_blocking().and_then(|()| {
                            let (cfg, gi) = config_rx
                                .recv()
                                .map_err(|_| "no config was read".to_string())?;
                            let volumes = crate::volume::plan(&cfg)?;
                            let up = network_up(cfg, gi, &boot)?;
                            // After the network: NFS needs it.
                            volumes_up(&volumes, &boot, &mounts)?;
                            Ok(up)
                        });
                        match outcome {
                            Ok((net, mut links)) => {
                                *held.lock().unwrap_or_else(|p| p.into_inner()) = Some(net.clone());
                                root.open(Ok(()));
                                crate::net::keep_leases(&net, &mut links);
                            }
                            Err(e) => {
                                tracing::error!("preparing the container (network, volumes): {e}");
                                root.open(Err(e));
                            }
                        }
                    })
                    .context("starting the network thread")?;
            }
            let on_config: OnConfig = Box::new(move |cfg, gi| {
                // The first config is the one applied (the receiver goes after it).
                let _ = config_tx.try_send((cfg.clone(), gi.clone()));
            });
            match root {
                Root::Ready => {
                    disk_ready.open(Ok(()));
                    // The drivers the bootstrap stage left (virtio, NICs, IDE, fw_cfg, vsock)
                    // load beside the container's start.
                    crate::boot::start_late();
                }
                Root::Bootstrap(settings) => {
                    let gate = disk_ready.clone();
                    std::thread::Builder::new()
                        .name("bootstrap".into())
                        .spawn(move || crate::boot::switch_root_then(&settings, &gate))
                        .context("starting the bootstrap thread")?;
                }
            }
            let output_log = boot.output_log.clone();
            let ready = disk_ready.clone();
            let output: LogOpener = Box::new(move || {
                // Device paths resolve in the container's root, with its /dev and /sys.
                if ready.wait_blocking().is_err() {
                    return None;
                }
                let path = match output_log.as_str() {
                    "auto" => output_port(Path::new("/sys")),
                    other => PathBuf::from(other),
                };
                tracing::info!("output log on {}", path.display());
                match open_log(&path) {
                    Ok(f) => Some(Box::new(f) as Box<dyn Write + Send>),
                    Err(e) => {
                        tracing::error!("output log: {e:#}; session output is not persisted");
                        None
                    }
                }
            });
            // The container has started: the late modules give way for its first moments only
            // (a busy container would starve them at idle priority).
            let on_launch: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {
                tokio::spawn(async {
                    tokio::time::sleep(crate::boot::LATE_IDLE_AFTER_LAUNCH).await;
                    crate::boot::hurry_late();
                });
            });
            let settings = Settings {
                attach: Some(boot.attach.clone()),
                root_ready,
                on_launch: Some(on_launch),
                ..Settings::default()
            };
            let ending = serve(gi, Some(output), level, settings, Some(on_config));
            // Volumes unmounted in reverse order after a sync: nothing written is lost and each
            // filesystem is left clean.
            let mut mounted = volume_mounts.lock().unwrap_or_else(|p| p.into_inner());
            for e in crate::volume::unmount_all(&mut mounted) {
                tracing::warn!("shutdown: {e}");
            }
            // DHCP leases go back to their servers before the power goes.
            let held = network.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(net) = held {
                net.lock().unwrap_or_else(|p| p.into_inner()).release();
            }
            ending
        },
    ));
    match outcome {
        Ok(Ok(ending)) => tracing::info!("tether done: {ending:?}; powering off"),
        Ok(Err(e)) => tracing::error!("{e:#}; powering off"),
        Err(_) => tracing::error!("the tether panicked; powering off"),
    }
    pid1::power_off()
}

/// How long the network waits for a slot's NIC once no driver is loading any more, and at most.
const NIC_GRACE: Duration = Duration::from_secs(2);
const NIC_LIMIT: Duration = Duration::from_secs(60);
/// How long DHCP may take to get a lease (VIC's 10 s).
const DHCP_TIMEOUT: Duration = Duration::from_secs(10);

/// The container's network from its first config: NICs (their drivers hurried when the config
/// has endpoints), addresses, routes and identity; the keys published through `gi`.
fn network_up(
    cfg: ExecutorConfig,
    gi: Guestinfo,
    boot: &pid1::BootSettings,
) -> Result<(Arc<Mutex<Network>>, Netlink), String> {
    if !cfg.networks.is_empty() {
        crate::boot::hurry_late();
    }
    let find = Find {
        sys: PathBuf::from(&boot.sys),
        drivers_loading: &crate::boot::late_loading,
        grace: NIC_GRACE,
        limit: NIC_LIMIT,
    };
    let mut links = Netlink::open()?;
    let mut dhcp = RealDhcp {
        timeout: DHCP_TIMEOUT,
    };
    let paths = EtcPaths {
        etc: PathBuf::from("/etc"),
        own: Path::new(&boot.tether_dir).join("etc"),
    };
    let publish: Publish = Box::new(move |keys| gi.write("the network's state", keys));
    let net = Network::bring_up(cfg, &find, &mut links, &mut dhcp, paths, publish)?;
    Ok((net, links))
}

/// How long a volume's disk may take to show up (`tether.volwait=` seconds).
const VOLUME_WAIT: Duration = Duration::from_secs(60);

/// The config's volumes, mounted in order; their disks come with a full SCSI scan (which
/// otherwise waits for after the launch).
fn volumes_up(
    volumes: &[crate::volume::Volume],
    boot: &pid1::BootSettings,
    mounted: &Mutex<crate::volume::Mounted>,
) -> Result<(), String> {
    if volumes.is_empty() {
        return Ok(());
    }
    crate::boot::hurry_late();
    let sys = PathBuf::from(&boot.sys);
    if volumes
        .iter()
        .any(|v| matches!(v.source, crate::volume::Source::Label(_)))
    {
        crate::boot::modules::scan_scsi_fully(&sys);
    }
    if volumes
        .iter()
        .any(|v| matches!(v.source, crate::volume::Source::Nfs { .. }))
    {
        for e in crate::boot::modules::load_named(&["nfsv4"]) {
            tracing::warn!("NFS client module: {e}");
        }
    }
    let find =
        |label: &str| crate::boot::disk::find_labelled_with_loops(&sys, Path::new("/dev"), label);
    // A new disk is looked for as its device event arrives (polling where there are none).
    let events = crate::sys::uevent::Uevents::open().ok();
    let device_wait = |d: Duration| match &events {
        Some(e) => {
            let _ = e.wait(d.min(Duration::from_millis(500)));
        }
        None => std::thread::sleep(d.min(Duration::from_millis(50))),
    };
    let env = crate::volume::Env {
        by_label: Path::new(&boot.tether_dir).join(".filesystem-by-label"),
        find_label: &find,
        device_wait: &device_wait,
        wait: boot.volume_wait.map_or(VOLUME_WAIT, Duration::from_secs),
        resolve: &crate::volume::resolve,
    };
    let mut made = crate::volume::Mounted::new();
    let result = crate::volume::mount_all(volumes, &env, &mut crate::volume::Kernel, &mut made);
    mounted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(made);
    result
}

/// What process mode and PID 1 share: the runtime, the reaper, the output log, the guestinfo
/// thread, signal handling and the agent.
fn serve(
    gi: Box<dyn GuestInfo>,
    output: Option<LogOpener>,
    level: logging::LevelHandle,
    settings: Settings,
    on_config: Option<OnConfig>,
) -> anyhow::Result<Ending> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // The blocking threads (launches wait there for the exec) give their memory back soon
        // after, not 10 s later: the tether stays small beside the container.
        .thread_keep_alive(std::time::Duration::from_millis(500))
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let reaper = Reaper::new();
        reaper.clone().start();
        let log = match output {
            Some(open) => OutputLog::start(open),
            None => OutputLog::disabled(),
        };
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            reaper,
            gi: Guestinfo::start(gi),
            log,
            settings,
            finished: finished_tx,
        });
        watch_signals(events_tx.clone())?;
        let known = crate::tools::Known::default();
        let on_config = {
            let known = known.clone();
            Box::new(move |cfg: &ExecutorConfig, gi: &Guestinfo| {
                let _ = level.modify(|f| *f = logging::level_for(cfg.debug_level));
                known.update(cfg);
                if let Some(f) = &on_config {
                    f(cfg, gi);
                }
            })
        };
        let tools_gi = ctx.gi.clone();
        let agent = Agent::new(ctx, (events_tx.clone(), events_rx), finished_rx, on_config);
        // The embedded VMware Tools, where the transport carries a TCLO channel.
        let stop_tools = Arc::new(std::sync::atomic::AtomicBool::new(false));
        crate::tools::start(
            tools_gi,
            known,
            agent.registry(),
            events_tx,
            stop_tools.clone(),
        );
        let ending = agent
            .run()
            .await
            .map_err(|e| anyhow::anyhow!("reading the config: {e}"));
        stop_tools.store(true, std::sync::atomic::Ordering::Relaxed);
        ending
    })
}

/// SIGHUP reloads; SIGTERM, SIGINT, SIGUSR1, SIGUSR2 and SIGPWR stop.
pub fn watch_signals(events: mpsc::UnboundedSender<Event>) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let reload = events.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if reload.send(Event::Reload).is_err() {
                return;
            }
        }
    });
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
        (SignalKind::from_raw(libc::SIGPWR), "SIGPWR"),
    ] {
        let mut s = signal(kind)?;
        let tx = events.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(Event::Stop(format!("{name} received"))).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_log_goes_to_com3_without_a_virtio_console() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let dev = |name: &str, vendor: &str, device: &str| {
            let d = sys.join("bus/pci/devices").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), format!("{vendor}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{device}\n")).unwrap();
        };
        dev("0000:00:02.0", "0x15ad", "0x07c0");
        assert!(!pci_device_present(sys, 0x1af4, &[0x1003, 0x1043]));
        assert_eq!(output_port(sys), Path::new("/dev/ttyS2"));
        dev("0000:00:03.0", "0x1af4", "0x1003");
        assert!(pci_device_present(sys, 0x1af4, &[0x1003, 0x1043]));
        let port = sys.join("class/virtio-ports/vport0p1");
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(
            port.join("name"),
            format!("{}\n", tether_proto::vm::OUTPUT_PORT),
        )
        .unwrap();
        assert_eq!(output_port(sys), Path::new("/dev/vport0p1"));
    }
}
