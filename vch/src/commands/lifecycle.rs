//! `vch stop`, `vch kill` and `vch rm`: each returns as soon as the container is gone (docker's
//! semantics: stop's timeout only bounds the wait before SIGKILL).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::{connect, signal_container, vm_ended};
use crate::container::Container;
use crate::guestinfo_server::ListenAddr;

/// `vch stop NAME -t SECONDS`.
pub async fn stop(root: &Path, container: &str, time: u64) -> anyhow::Result<i32> {
    let c = Container::find(root, container)?;
    crate::manage::stop(&c, Duration::from_secs(time)).await?;
    println!("{}", c.meta.name);
    Ok(0)
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
    crate::manage::remove(root, &c, force, volumes)?;
    println!("{}", c.meta.name);
    Ok(())
}
