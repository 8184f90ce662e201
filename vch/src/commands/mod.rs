//! What each `vch` command does, in the library so that `main.rs` only parses and dispatches (as
//! youki's `commands/`): [`run`] and [`exec`] start things and attach, [`lifecycle`] stops,
//! kills and removes, [`line`] talks to a process-mode tether on a line it listens on, [`show`]
//! lists and prints logs. Shared here: reaching a tether, and waiting for a container's end.

pub mod exec;
pub mod lifecycle;
pub mod line;
pub mod run;
pub mod show;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::container::Container;
use crate::guestinfo_server::ListenAddr;

/// Accepts the tether, handshakes and connects, all within `deadline`.
pub async fn connect(
    listen: &ListenAddr,
    deadline: std::time::Duration,
) -> anyhow::Result<ssh::Handle> {
    tokio::time::timeout(deadline, async {
        let line = crate::attach::bind(listen).await?.accept().await?;
        crate::attach::connect(line, deadline).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("no tether connected within {deadline:?}"))?
}

/// A running containerVM's tether, through its supervisor.
pub async fn connect_container(c: &Container) -> anyhow::Result<ssh::Handle> {
    if !c.running() {
        bail!("{} is not running", c.meta.name);
    }
    crate::front::connect(&c.ctl_socket()).await
}

pub fn default_image() -> PathBuf {
    crate::vm::assets_dir().join("images/default.vmdk")
}

/// Polls `done` every 5 ms (a stat: cheap, and `vch run` waits on it for the container's start)
/// until it holds or `limit` passes; whether it held.
pub async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// [`wait_for`] outside a runtime.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Waits at most `limit` for the VM to end; whether it did.
pub async fn vm_ended(c: &Container, limit: Duration) -> bool {
    wait_for(limit, || !c.vm_running()).await
}

/// Has the VM's tools run TCLO `request` (the supervisor plays the VMX); their reply, or `None`
/// when they did not answer.
pub async fn tools_request(c: &Container, request: Vec<u8>) -> Option<Vec<u8>> {
    let h = connect_container(c).await.ok()?;
    let reply = h
        .global_request(crate::front::TOOLS_REQUEST, true, request)
        .await
        .ok()
        .flatten();
    h.disconnect("done").await;
    reply
}

/// VIC's guest operation: StartProgram `path args` through the tools, with the container's ID
/// as the credential; whether the tools ran it.
pub async fn tools_program(c: &Container, path: &str, args: &str) -> bool {
    let tclo = tether_proto::vix::start_program_as(&c.meta.id, path, args);
    let reply = tools_request(c, tclo).await;
    let ok = reply.as_deref().is_some_and(|r| r.starts_with(b"OK 0 0 "));
    if !ok {
        tracing::info!(
            "the tools did not run {path} {args} ({:?}); the attach line instead",
            reply.as_deref().map(String::from_utf8_lossy)
        );
    }
    ok
}

/// Sends `sig` to session `id` of a running containerVM: the container's own process through
/// the VM's tools, as VIC's VCH does, else (process mode, tools not running, another session)
/// over the attach line, on a connection of its own.
pub async fn signal_container(
    c: &Container,
    id: &str,
    sig: &str,
    group: bool,
) -> anyhow::Result<()> {
    let program = if group { "group-kill" } else { "kill" };
    if id == c.meta.id && tools_program(c, program, sig).await {
        return Ok(());
    }
    let h = connect_container(c).await?;
    let sent = crate::attach::kill(&h, id, sig, group).await;
    h.disconnect("done").await;
    sent
}

/// Attaches to session `id` with docker's detach keys; its exit status, `None` after a detach.
pub async fn attach_to(h: &ssh::Handle, id: String, tty: bool) -> anyhow::Result<Option<i32>> {
    let opts = crate::attach::AttachOptions {
        id: Some(id),
        tty,
        detach_keys: crate::attach::parse_detach_keys("ctrl-p,ctrl-q")?,
        deadline: Duration::from_secs(60),
    };
    let status = crate::attach::attach(h, &opts).await?;
    h.disconnect("done").await;
    Ok(status)
}
