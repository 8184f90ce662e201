//! A containerVM's life on the host, shared by the `vch` commands and the Docker API
//! ([`crate::docker`]): create (state, disk, volumes, networks, config), start (the supervisor,
//! the wait for the tether and for the process's start), stop, and remove.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill as kill_process, Signal};
use nix::unistd::Pid;

use crate::commands::{signal_container, vm_ended, wait_for, wait_until};
use crate::container::{executor_config, new_id, AttachLine, BootMode, Container, Meta, RunSpec};
use crate::network::{HostPort, NetMode, PortSpec};
use crate::volume::VolumeArg;

/// Everything a new containerVM is made from.
#[derive(Clone, Debug)]
pub struct NewContainer {
    /// The image disk (VMDK).
    pub image: PathBuf,
    /// The image as the user named it (`busybox:latest`); the disk's file name when empty.
    pub image_ref: String,
    pub spec: RunSpec,
    pub boot: BootMode,
    pub memory_mib: u32,
    pub cmdline: String,
    pub attach_line: AttachLine,
    /// `None`: `user`, or `none` when it joins bridge networks.
    pub net: Option<NetMode>,
    pub networks: Vec<String>,
    pub ip: Option<std::net::Ipv4Addr>,
    pub aliases: Vec<String>,
    pub volumes: Vec<VolumeArg>,
    pub publish: Vec<PortSpec>,
    pub host_ports: Vec<HostPort>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u64>,
    pub labels: BTreeMap<String, String>,
    pub auto_remove: bool,
}

impl NewContainer {
    /// A container of `image` running `spec` with the defaults of `vch run`.
    pub fn new(image: PathBuf, spec: RunSpec) -> Self {
        Self {
            image,
            image_ref: String::new(),
            spec,
            boot: BootMode::Kernel,
            memory_mib: 256,
            cmdline: String::new(),
            attach_line: AttachLine::Serial,
            net: None,
            networks: Vec::new(),
            ip: None,
            aliases: Vec::new(),
            volumes: Vec::new(),
            publish: Vec::new(),
            host_ports: Vec::new(),
            stop_signal: None,
            stop_timeout: None,
            labels: BTreeMap::new(),
            auto_remove: false,
        }
    }
}

/// The time now as RFC 3339 with nanoseconds (docker's `Created`, `StartedAt`).
pub fn now_rfc3339() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    tether_proto::iolog::rfc3339_nanos(nanos)
}

/// Makes the container's state: its volumes (made on first use), its addresses on bridge
/// networks, its config and disk. Nothing runs yet.
pub fn create(root: &Path, new: NewContainer) -> anyhow::Result<Container> {
    let id = new_id();
    let name = new
        .spec
        .name
        .clone()
        .unwrap_or_else(|| id[..12].to_string());
    if new.attach_line == AttachLine::Vsock && new.boot == BootMode::Iso {
        bail!("--attach-line vsock needs --boot kernel (the ISO's command line is fixed)");
    }
    crate::vm::check_assets(&crate::vm::assets_dir(), new.boot)?;
    if Container::all(root)?.iter().any(|c| c.meta.name == name) {
        bail!("the name {name:?} is in use");
    }
    let mut meta = Meta {
        id: id.clone(),
        name: name.clone(),
        image: new.image,
        image_ref: new.image_ref,
        command: new.spec.command.clone(),
        tty: new.spec.tty,
        boot: new.boot,
        memory_mib: new.memory_mib,
        cmdline: new.cmdline,
        attach_line: new.attach_line,
        net: new.net.unwrap_or(if new.networks.is_empty() {
            NetMode::User
        } else {
            NetMode::None
        }),
        publish: new.publish,
        host_ports: new.host_ports,
        networks: Vec::new(),
        volumes: Vec::new(),
        created: now_rfc3339(),
        labels: new.labels,
        stop_timeout: new.stop_timeout,
        auto_remove: new.auto_remove,
    };
    // An address on each bridge network (the given one on the first), before the NICs are laid
    // out.
    let mut joined = Vec::new();
    for (i, net) in new.networks.iter().enumerate() {
        let n = crate::bridge::Network::load(root, net)?;
        let wanted = if i == 0 { new.ip } else { None };
        let ip = n.allocate(root, wanted)?;
        meta.networks.push(crate::bridge::Attachment {
            network: net.clone(),
            ip,
            aliases: new.aliases.clone(),
        });
        joined.push(n);
    }
    for arg in new.volumes {
        let u = volume_use(root, arg, meta.volumes.len())?;
        meta.volumes.push(u);
    }
    let mut cfg = executor_config(&id, &name, &new.spec);
    if let Some(sig) = new.stop_signal.filter(|s| !s.is_empty()) {
        tether_proto::signal::parse(&sig)?;
        if let Some(s) = cfg.sessions.get_mut(&id) {
            s.stop_signal = sig.trim_start_matches("SIG").to_string();
        }
    }
    for u in &meta.volumes {
        let label = match &u.nfs {
            None => crate::volume::Volume::load(root, &u.name)?.label,
            Some(_) => String::new(),
        };
        cfg.mounts
            .insert(u.name.clone(), crate::volume::mount_spec(u, &label));
    }
    crate::network::add_endpoints(&mut cfg, meta.net, &meta.nics(), &meta.publish);
    let c = Container::create(root, meta, &cfg)?;
    // The network's DHCP server reserves each NIC's address, and its DNS knows the names.
    let nics = c.meta.nics();
    for (n, a) in joined.iter().zip(&c.meta.networks) {
        let nic = nics
            .iter()
            .find(|x| x.tap.as_deref() == Some(n.name.as_str()));
        let mac = nic.map(|x| x.mac.clone()).unwrap_or_default();
        n.register(root, &c.meta.id, &mac, &name, a)?;
    }
    Ok(c)
}

/// One `-v`: a named volume (made on first use), an anonymous one (made now), or NFS; a disk
/// is on one running containerVM at a time.
fn volume_use(
    root: &Path,
    arg: VolumeArg,
    index: usize,
) -> anyhow::Result<crate::volume::VolumeUse> {
    use crate::volume::{Volume, VolumeUse, DEFAULT_MIB};
    let u = match arg {
        VolumeArg::Named {
            name,
            target,
            read_only,
        } => {
            if Volume::load(root, &name).is_err() {
                Volume::create(root, &name, DEFAULT_MIB, None, false)?;
            }
            VolumeUse {
                name,
                target,
                read_only,
                nfs: None,
            }
        }
        VolumeArg::Anonymous { target } => {
            let v = new_id();
            Volume::create(root, &v, DEFAULT_MIB, None, true)?;
            VolumeUse {
                name: v,
                target,
                read_only: false,
                nfs: None,
            }
        }
        VolumeArg::Nfs {
            host,
            export,
            target,
            read_only,
        } => VolumeUse {
            name: format!("nfs{index}"),
            target,
            read_only,
            nfs: Some(format!("nfs://{host}{export}")),
        },
    };
    if u.nfs.is_none() {
        let users = Volume::load(root, &u.name)?.users(root, true);
        if !users.is_empty() {
            bail!(
                "volume {} is in use by {} (a volume's disk is on one running containerVM at a time)",
                u.name,
                users.join(", ")
            );
        }
    }
    Ok(u)
}

/// Why a start failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The VM did not come up (or its tether never connected).
    #[error("{name} did not start: {why}")]
    Boot { name: String, why: String },
    /// The tether could not launch the process: its reason, and the status it recorded.
    #[error("{why}")]
    Launch { why: String, status: i32 },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Boots the container's VM (again, for a container that has run before) and waits for its
/// tether; `attached`: the process waits for the first attach (VIC's runblock), so that no
/// output is missed. Returns once the tether is connected.
pub async fn boot(c: &Container, attached: bool) -> Result<(), StartError> {
    c.prepare_start(attached)?;
    std::fs::write(c.started_at_file(), now_rfc3339()).context("recording the start")?;
    start_supervisor(c)?;
    let booted = wait_for(Duration::from_secs(180), || {
        c.ctl_socket().exists() || !c.running()
    })
    .await;
    if !booted || !c.ctl_socket().exists() {
        return Err(StartError::Boot {
            name: c.meta.name.clone(),
            why: boot_failure(c),
        });
    }
    Ok(())
}

/// Waits (after [`boot`]) for the tether to have launched the process, as docker's start does:
/// so that a kill or an exec right after finds it, or with the reason it could not.
pub async fn launched(c: &Container) -> Result<(), StartError> {
    let mut started = None;
    wait_for(Duration::from_secs(180), || {
        started = c.started();
        started.is_some() || !c.vm_running()
    })
    .await;
    match started {
        Some(s) if s == "true" => Ok(()),
        Some(why) => Err(StartError::Launch {
            why,
            status: c.exit_status().unwrap_or(125),
        }),
        None => Err(StartError::Boot {
            name: c.meta.name.clone(),
            why: boot_failure(c),
        }),
    }
}

/// Starts `vch supervise DIR` in the background, in its own process group.
fn start_supervisor(c: &Container) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(c.supervisor_log())?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("supervise")
        .arg(&c.dir)
        .env(
            "VCH_LOG",
            std::env::var("VCH_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the supervisor")?;
    // Its PID file may lag the first poll: write it here too.
    std::fs::write(c.pid_file(), child.id().to_string())?;
    // Reaped by a thread of its own: a long-lived caller (`vch serve`) must not keep zombies.
    let mut child = child;
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// Why a containerVM ended before its tether connected: the last error of the debug port.
pub fn boot_failure(c: &Container) -> String {
    let debug = std::fs::read_to_string(c.debug_log()).unwrap_or_default();
    let supervisor = std::fs::read_to_string(c.supervisor_log()).unwrap_or_default();
    let line = debug
        .lines()
        .chain(supervisor.lines())
        .rfind(|l| l.contains("ERROR") || l.contains("Error") || l.contains("error:"))
        .map(str::to_string);
    match line {
        Some(l) => l,
        None if c.running() => "no tether connected within 180 s".into(),
        None => format!("the VM stopped; see {}", c.debug_log().display()),
    }
}

/// The stop signal, then SIGKILL to the process group after `grace`, then QEMU itself; returns
/// as soon as the VM is gone (docker's stop: the timeout only bounds the wait before SIGKILL).
pub async fn stop(c: &Container, grace: Duration) -> anyhow::Result<()> {
    if !c.vm_running() {
        return Ok(());
    }
    let id = c.meta.id.clone();
    let sig = c
        .config()
        .ok()
        .and_then(|cfg| cfg.sessions.get(&id).map(|s| s.stop_signal.clone()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "TERM".into());
    // Each signal on a connection of its own, closed at once: the supervisor stays while it has
    // clients, and this one must not be among them while it waits for the VM to end.
    let _ = signal_container(c, &id, &sig, false).await;
    if vm_ended(c, grace).await {
        return Ok(());
    }
    let _ = signal_container(c, &id, "KILL", true).await;
    if vm_ended(c, Duration::from_secs(15)).await {
        return Ok(());
    }
    if let Some(pid) = c.supervisor() {
        let _ = kill_process(Pid::from_raw(pid), Signal::SIGTERM);
    }
    vm_ended(c, Duration::from_secs(10)).await;
    Ok(())
}

/// Removes a container's state (`force`: its VM ended first; `volumes`: its anonymous volumes
/// too). Blocking: the supervisor may hand attached clients their last output first.
pub fn remove(root: &Path, c: &Container, force: bool, volumes: bool) -> anyhow::Result<()> {
    if let Some(pid) = c.supervisor() {
        if !force && c.vm_running() {
            bail!(
                "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
                c.meta.id
            );
        }
        if c.vm_running() {
            let _ = kill_process(Pid::from_raw(pid), Signal::SIGTERM);
        }
        // The VM ends at once; the supervisor may still hand attached clients their last output
        // (it leaves within a minute at most) before the state can go.
        wait_until(Duration::from_secs(70), || !c.running());
    }
    for a in &c.meta.networks {
        if let Ok(n) = crate::bridge::Network::load(root, &a.network) {
            n.unregister(root, &c.meta.id);
        }
    }
    std::fs::remove_dir_all(&c.dir)?;
    if volumes {
        for u in c.meta.volumes.iter().filter(|u| u.nfs.is_none()) {
            let anonymous = crate::volume::Volume::load(root, &u.name).is_ok_and(|v| v.anonymous);
            if anonymous {
                crate::volume::Volume::remove(root, &u.name)?;
            }
        }
    }
    Ok(())
}

/// Starts an exec in a running containerVM as VIC's VCH does: the session added to its config,
/// a `reload` through the VM's tools (else over the attach line `h`), then the wait for the
/// tether to list it. Returns the ended execs that left the config to make room (with their last
/// state), for whoever keeps records of them.
pub async fn start_exec(
    c: &Container,
    h: &ssh::Handle,
    exec_id: &str,
    session: &tether_proto::config::SessionConfig,
) -> anyhow::Result<Vec<(String, tether_proto::config::SessionConfig)>> {
    let removed = c.add_exec(exec_id, session)?;
    if !crate::commands::tools_program(c, "reload", "").await
        && h.global_request("reload", true, Vec::new())
            .await?
            .is_none()
    {
        bail!("the tether refused the reload");
    }
    let start = std::time::Instant::now();
    while !crate::attach::container_ids(h)
        .await?
        .iter()
        .any(|i| i == exec_id)
    {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the tether did not start the exec within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(removed)
}
