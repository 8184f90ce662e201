//! `vch exec`: an exec added to the container's config, a `reload`, the wait for the tether to
//! start it, then attach (or `-d`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::{attach_to, connect_container};
use crate::cli::ExecArgs;
use crate::container::{new_id, Container};

pub async fn exec(root: PathBuf, args: ExecArgs) -> anyhow::Result<i32> {
    let c = Container::find(&root, &args.container)?;
    let h = connect_container(&c).await?;
    let exec_id = new_id();
    let (tty, detach) = (args.process.tty, args.process.detach);
    let spec = args.process.spec(None, args.command);
    c.add_exec(
        &exec_id,
        &crate::container::session(&exec_id, &c.meta.name, &spec),
    )?;
    // The reload as VIC's VCH makes it, through the VM's tools; else over the attach line.
    if !super::tools_program(&c, "reload", "").await
        && h.global_request("reload", true, Vec::new())
            .await?
            .is_none()
    {
        bail!("the tether refused the reload");
    }
    let start = Instant::now();
    while !crate::attach::container_ids(&h).await?.contains(&exec_id) {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the tether did not start the exec within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if detach {
        println!("{exec_id}");
        return Ok(0);
    }
    Ok(attach_to(&h, exec_id, tty).await?.unwrap_or(0))
}
