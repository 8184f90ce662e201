//! `vch ps` (the containerVMs) and `vch logs` (a container's output.log as text).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::container::Container;
use crate::logs::{render, LogOptions};

/// `vch ps`: every containerVM with its state.
pub fn ps(root: &Path) -> anyhow::Result<()> {
    println!(
        "{:<12}  {:<20}  {:<14}  {:<16}  COMMAND",
        "ID", "NAME", "STATUS", "IMAGE"
    );
    for c in Container::all(root)? {
        let status = if c.vm_running() {
            "running".to_string()
        } else {
            match c.exit_status() {
                Some(s) => format!("exited ({s})"),
                None => "stopped".to_string(),
            }
        };
        let image = c
            .meta
            .image
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        println!(
            "{:<12}  {:<20}  {:<14}  {:<16}  {}",
            &c.meta.id[..12.min(c.meta.id.len())],
            c.meta.name,
            status,
            image,
            c.meta.command.join(" ")
        );
    }
    Ok(())
}

/// `vch logs TARGET`: a containerVM's output (or an output.log file) as plain text.
pub fn logs(root: &Path, target: PathBuf, opts: LogOptions) -> anyhow::Result<()> {
    let file = if target.is_file() {
        target
    } else {
        Container::find(root, &target.to_string_lossy())?.output_log()
    };
    let log = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    Ok(render(
        &log,
        opts,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )?)
}
