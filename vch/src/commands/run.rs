//! `vch run`: the container's state, its supervisor (QEMU in the background), the wait for the
//! tether, then attach (or `-d`: back once the process has started).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};

use super::{attach_to, connect_container, default_image, vm_ended, wait_for};
use crate::cli::RunArgs;
use crate::container::{executor_config, new_id, AttachLine, BootMode, Container, Meta, RunSpec};

/// The image to boot: a VMDK as it is; a directory or tar made into one (cached by path and
/// modification time); the default image.
fn image_for(root: &std::path::Path, image: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let Some(p) = image else {
        let d = default_image();
        crate::image::ensure_default(&d)?;
        return Ok(d);
    };
    if p.is_file() && p.extension().is_some_and(|e| e == "vmdk") {
        return Ok(p);
    }
    let m = std::fs::metadata(&p).with_context(|| format!("the image {}", p.display()))?;
    let key: String = format!(
        "{}-{:?}",
        std::fs::canonicalize(&p)?.display(),
        m.modified()?
    )
    .bytes()
    .fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
    .to_string();
    let out = root.join("images").join(format!("{key}.vmdk"));
    if !out.exists() {
        eprintln!("vch: building an image from {}", p.display());
        crate::image::build(&p, &out, crate::image::LABEL)?;
    }
    Ok(out)
}

pub async fn run(root: PathBuf, args: RunArgs) -> anyhow::Result<i32> {
    let image = image_for(&root, args.image)?;
    let id = new_id();
    let name = args.name.unwrap_or_else(|| id[..12].to_string());
    let command = if args.command.is_empty() {
        vec!["/hello".to_string()]
    } else {
        args.command
    };
    let (tty, detach) = (args.process.tty, args.process.detach);
    let spec = RunSpec {
        debug: args.debug,
        debug_shell: args.debug_shell,
        ..args.process.spec(Some(name.clone()), command.clone())
    };
    let meta = Meta {
        id: id.clone(),
        name: name.clone(),
        image,
        command,
        tty,
        boot: args.boot,
        memory_mib: args.memory,
        cmdline: args.cmdline,
        attach_line: args.attach_line,
        net: args.net.unwrap_or(if args.networks.is_empty() {
            crate::network::NetMode::User
        } else {
            crate::network::NetMode::None
        }),
        publish: args.publish,
        host_ports: args.host_ports,
        networks: Vec::new(),
        volumes: Vec::new(),
    };
    let mut meta = meta;
    // An address on each bridge network (--ip on the first), before the NICs are laid out.
    let mut joined = Vec::new();
    for (i, net) in args.networks.iter().enumerate() {
        let n = crate::bridge::Network::load(&root, net)?;
        let wanted = if i == 0 { args.ip } else { None };
        let ip = n.allocate(&root, wanted)?;
        meta.networks.push(crate::bridge::Attachment {
            network: net.clone(),
            ip,
            aliases: args.network_aliases.clone(),
        });
        joined.push(n);
    }
    if meta.attach_line == AttachLine::Vsock && meta.boot == BootMode::Iso {
        bail!("--attach-line vsock needs --boot kernel (the ISO's command line is fixed)");
    }
    crate::vm::check_assets(&crate::vm::assets_dir(), meta.boot)?;
    // Volumes: made on first use (anonymous ones for this container), never on two running
    // containerVMs at once.
    for arg in args.volumes {
        use crate::volume::{Volume, VolumeArg, VolumeUse, DEFAULT_MIB};
        let u = match arg {
            VolumeArg::Named {
                name: v,
                target,
                read_only,
            } => {
                if Volume::load(&root, &v).is_err() {
                    Volume::create(&root, &v, DEFAULT_MIB, None, false)?;
                }
                VolumeUse {
                    name: v,
                    target,
                    read_only,
                    nfs: None,
                }
            }
            VolumeArg::Anonymous { target } => {
                let v = new_id();
                Volume::create(&root, &v, DEFAULT_MIB, None, true)?;
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
                name: format!("nfs{}", meta.volumes.len()),
                target,
                read_only,
                nfs: Some(format!("nfs://{host}{export}")),
            },
        };
        if u.nfs.is_none() {
            let users = Volume::load(&root, &u.name)?.users(&root, true);
            if !users.is_empty() {
                bail!(
                    "volume {} is in use by {} (a volume's disk is on one running containerVM at a time)",
                    u.name,
                    users.join(", ")
                );
            }
        }
        meta.volumes.push(u);
    }
    let mut cfg = executor_config(&id, &name, &spec);
    for u in &meta.volumes {
        let label = match &u.nfs {
            None => crate::volume::Volume::load(&root, &u.name)?.label,
            Some(_) => String::new(),
        };
        cfg.mounts
            .insert(u.name.clone(), crate::volume::mount_spec(u, &label));
    }
    crate::network::add_endpoints(&mut cfg, meta.net, &meta.nics(), &meta.publish);
    let c = Container::create(&root, meta, &cfg)?;
    // The network's DHCP server reserves each NIC's address, and its DNS knows the names.
    let nics = c.meta.nics();
    for (n, a) in joined.iter().zip(&c.meta.networks) {
        let nic = nics
            .iter()
            .find(|x| x.tap.as_deref() == Some(n.name.as_str()));
        let mac = nic.map(|x| x.mac.clone()).unwrap_or_default();
        n.register(&root, &c.meta.id, &mac, &name, a)?;
    }
    start_supervisor(&c)?;
    let booted = wait_for(Duration::from_secs(180), || {
        c.ctl_socket().exists() || !c.running()
    })
    .await;
    if !booted || !c.ctl_socket().exists() {
        let why = boot_failure(&c);
        if args.rm {
            wait_for(Duration::from_secs(10), || !c.running()).await;
            let _ = std::fs::remove_dir_all(&c.dir);
        }
        bail!("{name} did not start: {why}");
    }
    if let Some(t) = args.kill_after {
        spawn_stopper(&c, t)?;
    }
    if detach {
        // As docker's run -d: back once the process has started (so that a kill or an exec
        // right after finds it), or with the reason it could not.
        let mut started = None;
        wait_for(Duration::from_secs(180), || {
            started = c.started();
            started.is_some() || !c.vm_running()
        })
        .await;
        match started.as_deref() {
            Some("true") => {}
            Some(why) => {
                eprintln!("vch: {name}: {why}");
                return Ok(c.exit_status().unwrap_or(125));
            }
            None => bail!("{name} did not start: {}", boot_failure(&c)),
        }
        println!("{id}");
        return Ok(0);
    }
    let h = connect_container(&c).await?;
    let Some(mut status) = attach_to(&h, id, tty).await? else {
        return Ok(0); // detached
    };
    // The VM powers off after its primary session; its recorded status is the final word.
    let ended = vm_ended(&c, Duration::from_secs(30)).await;
    if let Some(s) = c.exit_status() {
        status = s;
    }
    // The state goes once the supervisor has gone too (it may still serve other clients).
    if args.rm && ended && wait_for(Duration::from_secs(70), || !c.running()).await {
        let _ = std::fs::remove_dir_all(&c.dir);
    }
    Ok(status)
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
    Ok(())
}

/// `--kill-after`: a detached `vch stop` after the delay.
fn spawn_stopper(c: &Container, after: f64) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe()?;
    std::process::Command::new("sh")
        .arg("-c")
        .arg("sleep \"$1\" && exec \"$2\" stop \"$3\" >/dev/null 2>&1")
        .arg("vch-stopper")
        .arg(after.to_string())
        .arg(exe)
        .arg(&c.meta.id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("scheduling the stop")?;
    Ok(())
}

/// Why a containerVM ended before its tether connected: the last error of the debug port.
fn boot_failure(c: &Container) -> String {
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
