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

/// `vch volume ...`.
pub fn volume(root: &Path, cmd: crate::cli::VolumeCommand) -> anyhow::Result<()> {
    use crate::cli::VolumeCommand as V;
    use crate::volume::Volume;
    match cmd {
        V::Create { name, size, label } => {
            let mib = crate::volume::parse_size(&size)?;
            Volume::create(root, &name, mib, label.as_deref(), false)?;
            println!("{name}");
        }
        V::Ls => {
            println!("{:<24}  {:<16}  {:>8}  USED BY", "NAME", "LABEL", "SIZE");
            for v in Volume::all(root) {
                let size = format!("{}M", v.size_mib);
                let users = v.users(root, false).join(",");
                println!("{:<24}  {:<16}  {:>8}  {users}", v.name, v.label, size);
            }
        }
        V::Inspect { name } => {
            let v = Volume::load(root, &name)?;
            println!("{}", serde_json::to_string_pretty(&v.inspect(root))?);
        }
        V::Rm { name } => {
            Volume::remove(root, &name)?;
            println!("{name}");
        }
    }
    Ok(())
}

/// `vch network ...`.
pub fn network(root: &Path, cmd: crate::cli::NetworkCommand) -> anyhow::Result<()> {
    use crate::bridge::Network;
    use crate::cli::NetworkCommand as N;
    match cmd {
        N::Create { name, subnet } => {
            Network::create(root, &name, subnet.as_deref())?;
            println!("{name}");
        }
        N::Ls => {
            println!("{:<16}  {:<18}  GATEWAY", "NAME", "SUBNET");
            for n in Network::all(root) {
                let subnet = format!("{}/{}", n.subnet, n.prefix);
                println!("{:<16}  {:<18}  {}", n.name, subnet, n.gateway);
            }
        }
        N::Rm { name } => {
            Network::remove(root, &name)?;
            println!("{name}");
        }
        N::Inspect { name } => {
            let n = Network::load(root, &name)?;
            println!("{}", serde_json::to_string_pretty(&n.inspect(root))?);
        }
    }
    Ok(())
}

/// `vch inspect NAME`: the container's state as JSON, from its meta and the keys the tether
/// wrote back (docker's field names where docker has one).
pub fn inspect(root: &Path, what: &str) -> anyhow::Result<()> {
    let c = Container::find(root, what)?;
    let cfg = c.config()?;
    let session = cfg.sessions.get(&c.meta.id);
    let started = session.map(|s| s.started.clone()).unwrap_or_default();
    let nics = c.meta.nics();
    let networks: serde_json::Map<String, serde_json::Value> = cfg
        .networks
        .iter()
        .map(|(name, e)| {
            let mac = nics
                .iter()
                .find(|n| n.slot.to_string() == e.common.id)
                .map(|n| n.mac.clone());
            let v = serde_json::json!({
                "IPAddress": e.assigned.ip.map(|i| i.to_string()).unwrap_or_default(),
                "IPPrefixLen": e.assigned.prefix().unwrap_or(0),
                "Gateway": e.network.assigned.gateway.ip.map(|i| i.to_string()).unwrap_or_default(),
                "DNS": e.network.assigned.nameservers.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "MacAddress": mac.unwrap_or_default(),
                "PciSlot": e.common.id,
                "Ports": e.ports,
            });
            (name.clone(), v)
        })
        .collect();
    let running = c.vm_running();
    let v = serde_json::json!({
        "Id": c.meta.id,
        "Name": c.meta.name,
        "Image": c.meta.image.display().to_string(),
        "Cmd": c.meta.command,
        "State": {
            "Status": if running { "running" } else if c.exit_status().is_some() { "exited" } else { "created" },
            "Running": running,
            "ExitCode": c.exit_status(),
            "Started": started,
        },
        "Config": { "Hostname": cfg.hostname },
        // The guest's tools poll the VMX (the supervisor) every 100 ms at most when idle.
        "Tools": { "Running": running && tools_polled_lately(&c) },
        "NetworkSettings": { "Networks": networks },
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Whether the VM's tools polled within the last few seconds (`tools.poll`, by the supervisor).
fn tools_polled_lately(c: &Container) -> bool {
    let Some(at) = std::fs::read_to_string(c.dir.join("tools.poll"))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_sub(at) <= 5
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
