//! The container's identity in its root, as VIC's tether sets it: the kernel's hostname, and the
//! tether's own `hostname`, `hosts` and `resolv.conf` (in its directory, `/.tether/etc` in the
//! VM) bind-mounted over the image's. Applied again (a renewal), the files are rewritten in
//! place: the mounts already show them.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use tether_proto::config::{ExecutorConfig, NetworkEndpoint};

use super::etc;

/// What the container is called and how it resolves names, from its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub hostname: String,
    /// The nameservers for `resolv.conf`, in order.
    pub nameservers: Vec<IpAddr>,
    /// `(network, address)` for `<network>.localhost` in `/etc/hosts`.
    pub networks: Vec<(String, IpAddr)>,
    /// The container's name (usually empty in VIC's config), beside the hostname.
    pub name: String,
}

/// An address that is really one (not `0.0.0.0` or `::`).
pub(super) fn usable(ip: Option<IpAddr>) -> Option<IpAddr> {
    ip.filter(|ip| !ip.is_unspecified())
}

impl Identity {
    /// VIC's rules: the hostname rule of [`etc::hostname`]; per endpoint, the configured
    /// nameservers, else those DHCP gave, else the gateway; `<network>.localhost` for each
    /// endpoint with an address (assigned, else static).
    pub fn from_config(cfg: &ExecutorConfig) -> Self {
        let mut nameservers = Vec::new();
        let mut networks = Vec::new();
        let mut endpoints: Vec<(&String, &NetworkEndpoint)> = cfg.networks.iter().collect();
        // Internal networks are applied first.
        endpoints.sort_by_key(|(_, e)| !e.internal);
        for (key, e) in endpoints {
            let n = &e.network;
            if !n.nameservers.is_empty() {
                nameservers.extend(n.nameservers.iter().copied());
            } else if !n.assigned.nameservers.is_empty() {
                nameservers.extend(n.assigned.nameservers.iter().copied());
            } else if let Some(gw) = usable(n.gateway.ip).or(usable(n.assigned.gateway.ip)) {
                nameservers.push(gw);
            }
            let address = usable(e.assigned.ip).or(e.ip.as_ref().and_then(|ip| usable(ip.ip)));
            let network = match n.common.name.as_str() {
                "" => key.clone(),
                name => name.to_string(),
            };
            if let Some(ip) = address {
                networks.push((network, ip));
            }
        }
        Self {
            hostname: etc::hostname(cfg),
            nameservers,
            networks,
            name: cfg.common.name.clone(),
        }
    }
}

/// The files in `own` (created if missing) and mounted over those of `etc`, the kernel's
/// hostname set; `etc` is the container's `/etc`, whose `hosts` is the starting point.
pub fn apply(id: &Identity, etc: &Path, own: &Path) -> Result<(), String> {
    nix::unistd::sethostname(&id.hostname)
        .map_err(|e| format!("setting the hostname {:?}: {e}", id.hostname))?;
    for dir in [own, etc] {
        std::fs::create_dir_all(dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
    }
    // The image's hosts (or, applied again, ours over it: the result is the same).
    let image_hosts = std::fs::read_to_string(etc.join("hosts")).unwrap_or_default();
    let files = [
        ("hostname", format!("{}\n", id.hostname)),
        (
            "hosts",
            etc::hosts(&image_hosts, &id.hostname, &id.name, &id.networks),
        ),
        ("resolv.conf", etc::resolv_conf(&id.nameservers)),
    ];
    for (name, text) in files {
        let ours = own.join(name);
        write(&ours, &text)?;
        bind_over(&ours, &etc.join(name))?;
    }
    Ok(())
}

/// Rewrites `path` in place (a mount of it shows the new text), mode 0644.
fn write(path: &Path, text: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Mounts `ours` over `target` unless it is there already (same file); makes `target` when
/// the image has none (or only a dangling link, as an image made for systemd-resolved may).
fn bind_over(ours: &Path, target: &Path) -> Result<(), String> {
    let same =
        |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    if let (Ok(a), Ok(b)) = (std::fs::metadata(ours), std::fs::metadata(target)) {
        if same(&a, &b) {
            return Ok(());
        }
    }
    if std::fs::metadata(target).is_err() {
        if std::fs::symlink_metadata(target).is_ok() {
            let _ = std::fs::remove_file(target);
        }
        write(target, "")?;
    }
    mount(
        Some(ours),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("mounting {} over {}: {e}", ours.display(), target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::config::IpNet;

    fn endpoint(gateway: &str, dns: &[&str], assigned: Option<&str>) -> NetworkEndpoint {
        let mut e = NetworkEndpoint::default();
        e.network.gateway.ip = Some(gateway.parse().unwrap());
        e.network.nameservers = dns.iter().map(|s| s.parse().unwrap()).collect();
        e.assigned = IpNet {
            ip: assigned.map(|a| a.parse().unwrap()),
            mask: None,
        };
        e
    }

    #[test]
    fn nameservers_configured_else_dhcps_else_the_gateway_and_each_network_by_name() {
        let mut c = ExecutorConfig::default();
        c.common.id = "abcdef0123456789".into();
        c.networks.insert(
            "bridge".into(),
            endpoint("172.16.0.1", &["8.8.8.8"], Some("172.16.0.2")),
        );
        let mut dhcp = endpoint("10.0.2.2", &[], Some("10.0.2.15"));
        dhcp.network.assigned.nameservers = vec!["10.0.2.3".parse().unwrap()];
        dhcp.network.common.name = "public".into();
        c.networks.insert("ext".into(), dhcp);
        let mut internal = endpoint("192.168.9.1", &[], None);
        internal.internal = true;
        c.networks.insert("zinternal".into(), internal);
        let id = Identity::from_config(&c);
        assert_eq!(id.hostname, "abcdef012345");
        let ns: Vec<String> = id.nameservers.iter().map(|i| i.to_string()).collect();
        assert_eq!(ns, ["192.168.9.1", "8.8.8.8", "10.0.2.3"], "internal first");
        let nets: Vec<String> = id
            .networks
            .iter()
            .map(|(n, i)| format!("{n}={i}"))
            .collect();
        assert_eq!(nets, ["bridge=172.16.0.2", "public=10.0.2.15"]);
    }
}
