//! `vch stop`, `vch kill` and `vch rm`: each returns as soon as the container is gone (docker's
//! semantics: stop's timeout only bounds the wait before SIGKILL).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use nix::sys::signal::{kill as kill_process, Signal};
use nix::unistd::Pid;

use super::{connect, signal_container, vm_ended, wait_until};
use crate::container::Container;
use crate::guestinfo_server::ListenAddr;

/// `vch stop NAME -t SECONDS`.
pub async fn stop(root: &Path, container: &str, time: u64) -> anyhow::Result<i32> {
    let c = Container::find(root, container)?;
    stop_container(&c, Duration::from_secs(time)).await?;
    println!("{}", c.meta.name);
    Ok(0)
}

/// The stop signal, then SIGKILL to the process group after `grace`, then QEMU itself; returns
/// as soon as the VM is gone (docker's stop: the timeout only bounds the wait before SIGKILL).
async fn stop_container(c: &Container, grace: Duration) -> anyhow::Result<()> {
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

/// `vch kill [-s SIG] [--group] TARGET`: a containerVM's session (its own by default), or with
/// `listen` a session of a process-mode tether.
pub async fn kill(
    root: &Path,
    target: String,
    listen: Option<ListenAddr>,
    id: Option<String>,
    signal: &str,
    group: bool,
    timeout: u64,
) -> anyhow::Result<i32> {
    let Some(l) = listen else {
        let c = Container::find(root, &target)?;
        let id = id.unwrap_or_else(|| c.meta.id.clone());
        signal_container(&c, &id, signal, group).await?;
        // As docker's kill: SIGKILL to the container's own process returns once the container is
        // gone; any other signal once it is delivered.
        let fatal = tether_proto::signal::parse(signal)? == libc::SIGKILL;
        if fatal && id == c.meta.id && !vm_ended(&c, Duration::from_secs(15)).await {
            bail!("{} still runs 15 s after SIGKILL", c.meta.name);
        }
        return Ok(0);
    };
    let h = connect(&l, Duration::from_secs(timeout)).await?;
    crate::attach::kill(&h, &target, signal, group).await?;
    h.disconnect("done").await;
    Ok(0)
}

/// `vch rm [-f] NAME`: a stopped container's state (`-f`: its VM ended first).
pub fn rm(root: &Path, container: &str, force: bool, volumes: bool) -> anyhow::Result<()> {
    let c = Container::find(root, container)?;
    if let Some(pid) = c.supervisor() {
        if !force {
            bail!("{} is running (stop it, or rm -f)", c.meta.name);
        }
        let _ = kill_process(Pid::from_raw(pid), Signal::SIGTERM);
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
    println!("{}", c.meta.name);
    Ok(())
}
