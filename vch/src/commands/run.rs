//! `vch run`: the container's state, its supervisor (QEMU in the background), the wait for the
//! tether, then attach (or `-d`: back once the process has started).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::{attach_to, connect_container, default_image, vm_ended, wait_for};
use crate::cli::RunArgs;
use crate::container::{Container, RunSpec};
use crate::manage::{self, NewContainer, StartError};

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
    let command = if args.command.is_empty() {
        vec!["/hello".to_string()]
    } else {
        args.command
    };
    let (tty, detach) = (args.process.tty, args.process.detach);
    let spec = RunSpec {
        debug: args.debug,
        debug_shell: args.debug_shell,
        ..args.process.spec(args.name, command)
    };
    let new = NewContainer {
        boot: args.boot,
        memory_mib: args.memory,
        cmdline: args.cmdline,
        attach_line: args.attach_line,
        net: args.net,
        networks: args.networks,
        ip: args.ip,
        aliases: args.network_aliases,
        volumes: args.volumes,
        publish: args.publish,
        host_ports: args.host_ports,
        ..NewContainer::new(image, spec)
    };
    let c = manage::create(&root, new)?;
    let (id, name) = (c.meta.id.clone(), c.meta.name.clone());
    if let Err(e) = manage::boot(&c, !detach).await {
        if args.rm {
            wait_for(Duration::from_secs(10), || !c.running()).await;
            let _ = std::fs::remove_dir_all(&c.dir);
        }
        return Err(e.into());
    }
    if let Some(t) = args.kill_after {
        spawn_stopper(&c, t)?;
    }
    if detach {
        // As docker's run -d: back once the process has started, or with the reason it could
        // not.
        return match manage::launched(&c).await {
            Ok(()) => {
                println!("{id}");
                Ok(0)
            }
            Err(StartError::Launch { why, status }) => {
                eprintln!("vch: {name}: {why}");
                Ok(status)
            }
            Err(e) => Err(e.into()),
        };
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
