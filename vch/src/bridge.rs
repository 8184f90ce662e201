//! `vch network`: bridge networks of containerVMs on this host, built from the parts libvirt
//! uses: a Linux bridge inside a network namespace `vch` owns (nothing of it touches the host's
//! own network), one tap per VM NIC on it, and `dnsmasq` in the namespace as the network's DHCP
//! server (a reservation per container, so `--ip` and the VCH's choice hold) and DNS server
//! (container names and aliases, from a hosts file per container; no upstream: no query leaves,
//! and a name it does not know is REFUSED, so that a container on several networks asks the
//! next network's server instead of taking "no such name" from the first).
//! Bridge networks are host-internal: no outbound NAT.
//!
//! State: `<root>/networks/<name>/` holds `network.json`, dnsmasq's pid, log and leases, and the
//! per-container files in `dhcp-hosts/` and `hosts/` (dnsmasq watches both directories).

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// A network as `vch network create` made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// The bridge's own address: the containers' gateway and DNS server.
    pub gateway: Ipv4Addr,
    /// The network namespace that holds the bridge.
    pub netns: String,
}

/// A container's place on a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ip: Ipv4Addr,
    pub aliases: Vec<String>,
}

/// The bridge in every network's namespace.
const BRIDGE: &str = "br0";

fn networks_dir(root: &Path) -> PathBuf {
    root.join("networks")
}

/// What `vch network` needs of the machine, or what is missing: root (namespaces, a bridge,
/// taps), `ip` (iproute2) and `dnsmasq`.
pub fn check_host(uid: u32, has: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if uid != 0 {
        missing.push(
            "root (network namespaces, a bridge and taps need CAP_NET_ADMIN): run vch as root"
                .to_string(),
        );
    }
    for (bin, package) in [("ip", "iproute2"), ("dnsmasq", "dnsmasq-base")] {
        if !has(bin) {
            missing.push(format!(
                "{bin} (Debian package {package}; scripts/setup installs it)"
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        bail!("bridge networks need {}", missing.join("; "))
    }
}

fn host_ready() -> anyhow::Result<()> {
    let has = |bin: &str| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(bin).exists())
    };
    check_host(nix::unistd::geteuid().as_raw(), &has)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?}: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n NETNS ARGS`.
fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").arg("-n").arg(netns).args(args))
}

/// A network's name: what an interface name may be (it names the NIC in the container).
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name != "bridge";
    if !ok {
        bail!("bad network name {name:?}: 1 to 15 of a-z, 0-9, - and _ (and not \"bridge\")");
    }
    Ok(())
}

/// `a.b.c.d/n` as its network address and prefix.
pub fn parse_subnet(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, prefix) = s
        .split_once('/')
        .with_context(|| format!("bad subnet {s:?}: want A.B.C.D/N"))?;
    let ip: Ipv4Addr = ip.parse().with_context(|| format!("bad subnet {s:?}"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("bad subnet {s:?}"))?;
    if !(8..=29).contains(&prefix) {
        bail!("bad subnet {s:?}: the prefix is 8 to 29");
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    Ok((Ipv4Addr::from(u32::from(ip) & mask), prefix))
}

impl Network {
    pub fn dir(&self, root: &Path) -> PathBuf {
        networks_dir(root).join(&self.name)
    }

    fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix)))
    }

    /// Whether `ip` is a host address of this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.mask());
        let host = u32::from(ip) & !m;
        u32::from(ip) & m == u32::from(self.subnet) && host != 0 && host != !m
    }

    pub fn load(root: &Path, name: &str) -> anyhow::Result<Self> {
        crate::container::load_record(&networks_dir(root), name, "network.json", "network")
    }

    pub fn all(root: &Path) -> Vec<Self> {
        crate::container::load_each(
            &networks_dir(root),
            |n| Self::load(root, n),
            |n| n.name.clone(),
        )
    }

    /// Makes the namespace, the bridge and the DNS/DHCP server of a new network. Without a
    /// subnet, the first free `10.89.N.0/24`.
    pub fn create(root: &Path, name: &str, subnet: Option<&str>) -> anyhow::Result<Self> {
        check_name(name)?;
        host_ready()?;
        if Self::load(root, name).is_ok() {
            bail!("network {name} exists");
        }
        let taken: Vec<Ipv4Addr> = Self::all(root).iter().map(|n| n.subnet).collect();
        let (subnet, prefix) = match subnet {
            Some(s) => parse_subnet(s)?,
            None => (1..=254u8)
                .map(|n| Ipv4Addr::new(10, 89, n, 0))
                .find(|s| !taken.contains(s))
                .map(|s| (s, 24))
                .context("no free 10.89.N.0/24 left")?,
        };
        let dir = networks_dir(root).join(name);
        std::fs::create_dir_all(dir.join("dhcp-hosts"))?;
        std::fs::create_dir_all(dir.join("hosts"))?;
        let dir = std::fs::canonicalize(&dir)?;
        // One namespace per network and state root (tests keep several roots at once).
        let tag = dir
            .to_string_lossy()
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
            });
        let net = Self {
            name: name.to_string(),
            subnet,
            prefix,
            gateway: Ipv4Addr::from(u32::from(subnet) + 1),
            netns: format!("vch-{:012x}", tag & 0xffff_ffff_ffff),
        };
        let made = net.make(&dir);
        if let Err(e) = made {
            net.destroy(&dir);
            return Err(e);
        }
        std::fs::write(dir.join("network.json"), serde_json::to_vec_pretty(&net)?)?;
        Ok(net)
    }

    fn make(&self, dir: &Path) -> anyhow::Result<()> {
        run(Command::new("ip").args(["netns", "add", &self.netns]))?;
        ip_in(&self.netns, &["link", "set", "lo", "up"])?;
        ip_in(&self.netns, &["link", "add", BRIDGE, "type", "bridge"])?;
        ip_in(
            &self.netns,
            &[
                "addr",
                "add",
                &format!("{}/{}", self.gateway, self.prefix),
                "dev",
                BRIDGE,
            ],
        )?;
        ip_in(&self.netns, &["link", "set", BRIDGE, "up"])?;
        let first = Ipv4Addr::from(u32::from(self.gateway) + 1);
        let last = Ipv4Addr::from(u32::from(self.subnet) | (!u32::from(self.mask()) - 1));
        let p = |name: &str| dir.join(name).display().to_string();
        // dnsmasq puts itself in the background once it is serving; its pid file tells where.
        run(Command::new("ip")
            .args(["netns", "exec", &self.netns, "dnsmasq"])
            .args([
                "--conf-file=/dev/null",
                "--bind-interfaces",
                &format!("--interface={BRIDGE}"),
                "--except-interface=lo",
                &format!("--dhcp-range={first},{last},{},12h", self.mask()),
                "--dhcp-authoritative",
                "--no-resolv",
                "--no-hosts",
                "--log-dhcp",
            ])
            .arg(format!("--dhcp-hostsdir={}", p("dhcp-hosts")))
            .arg(format!("--hostsdir={}", p("hosts")))
            .arg(format!("--dhcp-leasefile={}", p("leases")))
            .arg(format!("--log-facility={}", p("dnsmasq.log")))
            .arg(format!("--pid-file={}", p("dnsmasq.pid"))))
    }

    fn dnsmasq_pid(dir: &Path) -> Option<nix::unistd::Pid> {
        let pid: i32 = std::fs::read_to_string(dir.join("dnsmasq.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(nix::unistd::Pid::from_raw(pid))
    }

    /// Stops the server and removes the namespace (and with it the bridge and any tap).
    fn destroy(&self, dir: &Path) {
        if let Some(pid) = Self::dnsmasq_pid(dir) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }

    /// `vch network rm`: refused while a running container is on it.
    pub fn remove(root: &Path, name: &str) -> anyhow::Result<()> {
        let net = Self::load(root, name)?;
        let users: Vec<String> = crate::container::Container::all(root)?
            .into_iter()
            .filter(|c| c.vm_running() && c.meta.networks.iter().any(|a| a.network == name))
            .map(|c| c.meta.name)
            .collect();
        if !users.is_empty() {
            bail!("network {name} is in use by {}", users.join(", "));
        }
        let dir = net.dir(root);
        net.destroy(&dir);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// The addresses containers hold on this network (by the reservations written).
    fn taken(&self, root: &Path) -> Vec<Ipv4Addr> {
        crate::container::Container::all(root)
            .unwrap_or_default()
            .iter()
            .flat_map(|c| c.meta.networks.iter())
            .filter(|a| a.network == self.name)
            .map(|a| a.ip)
            .collect()
    }

    /// An address for a new container: `wanted` if free and inside, else the first free.
    pub fn allocate(&self, root: &Path, wanted: Option<Ipv4Addr>) -> anyhow::Result<Ipv4Addr> {
        let taken = self.taken(root);
        if let Some(ip) = wanted {
            if !self.contains(ip) || ip == self.gateway {
                bail!(
                    "{ip} is not a free address of network {} ({}/{})",
                    self.name,
                    self.subnet,
                    self.prefix
                );
            }
            if taken.contains(&ip) {
                bail!("{ip} is in use on network {}", self.name);
            }
            return Ok(ip);
        }
        let first = u32::from(self.gateway) + 1;
        (first..u32::from(self.subnet) | !u32::from(self.mask()))
            .map(Ipv4Addr::from)
            .find(|ip| !taken.contains(ip))
            .with_context(|| format!("network {} has no free address", self.name))
    }

    /// The DHCP reservation and DNS names of container `id` (its MAC, address, name, aliases).
    pub fn register(
        &self,
        root: &Path,
        id: &str,
        mac: &str,
        name: &str,
        a: &Attachment,
    ) -> anyhow::Result<()> {
        let dir = self.dir(root);
        std::fs::write(
            dir.join("dhcp-hosts").join(id),
            format!("{mac},{},{name}\n", a.ip),
        )?;
        let mut names = vec![name.to_string()];
        names.extend(a.aliases.iter().cloned());
        std::fs::write(
            dir.join("hosts").join(id),
            format!("{} {}\n", a.ip, names.join(" ")),
        )?;
        self.reload(&dir);
        Ok(())
    }

    /// Forgets container `id` (at `vch rm`).
    pub fn unregister(&self, root: &Path, id: &str) {
        let dir = self.dir(root);
        let _ = std::fs::remove_file(dir.join("dhcp-hosts").join(id));
        let _ = std::fs::remove_file(dir.join("hosts").join(id));
        self.reload(&dir);
    }

    /// dnsmasq reads its directories again (it watches them too; this makes it certain).
    fn reload(&self, dir: &Path) {
        if let Some(pid) = Self::dnsmasq_pid(dir) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP);
        }
    }

    /// `vch network inspect`: the network and the containers on it, as JSON.
    pub fn inspect(&self, root: &Path) -> serde_json::Value {
        let containers: serde_json::Map<String, serde_json::Value> =
            crate::container::Container::all(root)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| {
                    let a = c
                        .meta
                        .networks
                        .iter()
                        .find(|a| a.network == self.name)?
                        .clone();
                    Some((
                        c.meta.id.clone(),
                        serde_json::json!({
                            "Name": c.meta.name,
                            "IPv4Address": format!("{}/{}", a.ip, self.prefix),
                            "Aliases": a.aliases,
                            "Running": c.vm_running(),
                        }),
                    ))
                })
                .collect();
        serde_json::json!({
            "Name": self.name,
            "Driver": "bridge",
            "Subnet": format!("{}/{}", self.subnet, self.prefix),
            "Gateway": self.gateway.to_string(),
            "Namespace": self.netns,
            "Containers": containers,
        })
    }

    /// A tap on this network's bridge, for a VM's NIC: made inside the namespace from a thread
    /// that enters it, so that QEMU (in the host's namespace) gets its descriptor.
    pub fn tap(&self, ifname: &str) -> anyhow::Result<OwnedFd> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.netns)).with_context(|| {
            format!(
                "network {}: its namespace {} is gone",
                self.name, self.netns
            )
        })?;
        let name = ifname.to_string();
        let fd = std::thread::spawn(move || -> anyhow::Result<OwnedFd> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("entering the network's namespace")?;
            crate::sys::open_tap(&name).with_context(|| format!("making tap {name}"))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the tap thread panicked"))??;
        ip_in(&self.netns, &["link", "set", ifname, "master", BRIDGE])?;
        ip_in(&self.netns, &["link", "set", ifname, "up"])?;
        Ok(fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_root_or_tools_the_error_names_what_is_missing() {
        let all = |_: &str| true;
        assert!(check_host(0, &all).is_ok());
        let e = check_host(1000, &all).unwrap_err().to_string();
        assert!(e.contains("root"), "{e}");
        let no_dnsmasq = |b: &str| b != "dnsmasq";
        let e = check_host(0, &no_dnsmasq).unwrap_err().to_string();
        assert!(e.contains("dnsmasq (Debian package dnsmasq-base"), "{e}");
        assert!(!e.contains("root"), "{e}");
    }

    #[test]
    fn subnets_names_and_addresses() {
        assert_eq!(
            parse_subnet("10.1.2.3/24").unwrap(),
            (Ipv4Addr::new(10, 1, 2, 0), 24)
        );
        assert!(parse_subnet("10.1.2.0").is_err());
        assert!(parse_subnet("10.1.2.0/31").is_err());
        assert!(check_name("db-net").is_ok());
        for bad in ["", "bridge", "a/b", "sixteen-chars-xx"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let n = Network {
            name: "n".into(),
            subnet: Ipv4Addr::new(10, 89, 1, 0),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 89, 1, 1),
            netns: "x".into(),
        };
        assert!(n.contains(Ipv4Addr::new(10, 89, 1, 7)));
        assert!(
            !n.contains(Ipv4Addr::new(10, 89, 1, 0)),
            "the network itself"
        );
        assert!(!n.contains(Ipv4Addr::new(10, 89, 1, 255)), "broadcast");
        assert!(!n.contains(Ipv4Addr::new(10, 89, 2, 7)));
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            n.allocate(root.path(), None).unwrap(),
            Ipv4Addr::new(10, 89, 1, 2)
        );
        assert!(
            n.allocate(root.path(), Some(Ipv4Addr::new(10, 89, 1, 1)))
                .is_err(),
            "the gateway"
        );
        assert!(n
            .allocate(root.path(), Some(Ipv4Addr::new(10, 9, 1, 5)))
            .is_err());
    }
}
