//! Commands that reach a tether directly, or a containerVM through its supervisor: `attach`,
//! `proxy` (OpenSSH's ProxyCommand) and `ps --listen`.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::{connect, connect_container};
use crate::container::Container;
use crate::guestinfo_server::ListenAddr;

/// What `vch attach` attaches to.
pub struct AttachArgs {
    pub container: Option<String>,
    pub listen: Option<ListenAddr>,
    pub id: Option<String>,
    pub tty: bool,
    pub detach_keys: String,
    pub timeout: u64,
}

/// `vch attach`: relays the terminal; the session's exit status (0 after a detach).
pub async fn attach(root: &Path, a: AttachArgs) -> anyhow::Result<i32> {
    let mut opts = crate::attach::AttachOptions {
        id: a.id,
        tty: a.tty,
        detach_keys: crate::attach::parse_detach_keys(&a.detach_keys)?,
        deadline: Duration::from_secs(a.timeout),
    };
    let h = match (&a.listen, &a.container) {
        (Some(l), None) => connect(l, opts.deadline).await?,
        (None, Some(name)) => {
            let c = Container::find(root, name)?;
            opts.id.get_or_insert(c.meta.id.clone());
            connect_container(&c).await?
        }
        _ => bail!("name a containerVM or give --listen"),
    };
    let status = crate::attach::attach(&h, &opts).await?;
    h.disconnect("detached").await;
    Ok(status.unwrap_or(0))
}

/// `vch proxy --listen ADDR`: the handshake, then stdin and stdout relayed to the line.
pub async fn proxy(listen: ListenAddr, timeout: u64) -> anyhow::Result<i32> {
    let deadline = Duration::from_secs(timeout);
    let line = tokio::time::timeout(deadline, async {
        crate::attach::bind(&listen).await?.accept().await
    })
    .await
    .map_err(|_| anyhow::anyhow!("no tether connected within {deadline:?}"))??;
    crate::attach::proxy(line, deadline).await?;
    Ok(0)
}

/// `vch ps --listen ADDR`: a process-mode tether's live sessions and execs.
pub async fn ps_listen(listen: ListenAddr, timeout: u64) -> anyhow::Result<i32> {
    let h = connect(&listen, Duration::from_secs(timeout)).await?;
    for id in crate::attach::container_ids(&h).await? {
        println!("{id}");
    }
    h.disconnect("done").await;
    Ok(0)
}
