//! `vch exec`: an exec added to the container's config, a `reload`, the wait for the tether to
//! start it, then attach (or `-d`).

use std::path::PathBuf;

use super::{attach_to, connect_container};
use crate::cli::ExecArgs;
use crate::container::{new_id, Container};

pub async fn exec(root: PathBuf, args: ExecArgs) -> anyhow::Result<i32> {
    let c = Container::find(&root, &args.container)?;
    let h = connect_container(&c).await?;
    let exec_id = new_id();
    let (tty, detach) = (args.process.tty, args.process.detach);
    let spec = args.process.spec(None, args.command);
    let session = crate::container::session(&exec_id, &c.meta.name, &spec);
    crate::manage::start_exec(&c, &h, &exec_id, &session).await?;
    if detach {
        println!("{exec_id}");
        return Ok(0);
    }
    Ok(attach_to(&h, exec_id, tty).await?.unwrap_or(0))
}
