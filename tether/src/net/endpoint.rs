//! VIC's endpoints onto the VM's NICs, as VIC's tether applies them: each endpoint's NIC found by
//! its PCI slot, renamed (or aliased) to the endpoint's name and brought up; its address static,
//! left to someone else (`0.0.0.0`) or leased by DHCP (one lease per NIC, shared by the endpoints
//! on it); the default route, or the network's destinations, through the gateway; and what the
//! guest ended up with recorded in the endpoint's read-write fields for the host.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tether_proto::config::{ExecutorConfig, IpNet, NetworkEndpoint};

use super::dhcp::{Client, Lease};
use super::identity::usable;
use super::link::{Cidr, Links};
use super::slot;

/// How an endpoint gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// Static `0.0.0.0`: managed outside the guest; the tether leaves the NIC unaddressed.
    External,
    Static(Cidr),
    Dhcp,
}

/// VIC's rule: not static and no (or an unspecified) address means DHCP.
pub fn addressing(e: &NetworkEndpoint) -> Addressing {
    match e.ip.as_ref().and_then(|n| n.ip) {
        Some(ip) if !ip.is_unspecified() => {
            Addressing::Static(cidr(ip, e.ip.as_ref().and_then(|n| n.mask)))
        }
        _ if e.static_ip => Addressing::External,
        _ => Addressing::Dhcp,
    }
}

/// An address and mask as a [`Cidr`]; without a mask, the host's own prefix.
fn cidr(ip: IpAddr, mask: Option<IpAddr>) -> Cidr {
    let host = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = IpNet { ip: Some(ip), mask }.prefix().unwrap_or(host);
    Cidr { ip, prefix }
}

fn ipnet(c: Cidr) -> IpNet {
    IpNet::with_prefix(c.ip, c.prefix)
}

/// What DHCP needs to ask for an endpoint's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub hostname: Option<String>,
    pub router: bool,
    pub dns: bool,
}

/// Where leases come from (the real client, or a test's).
pub trait Dhcp {
    fn obtain(&mut self, index: u32, name: &str, ask: &Ask) -> Result<(Client, Lease), String>;
}

/// [`Dhcp`] over the network.
pub struct RealDhcp {
    pub timeout: Duration,
}

impl Dhcp for RealDhcp {
    fn obtain(&mut self, index: u32, name: &str, ask: &Ask) -> Result<(Client, Lease), String> {
        let mac = super::dhcp::mac_address(name)?;
        let client = Client {
            ifindex: index,
            mac,
            client_id: super::dhcp::client_id(&mac, &super::dhcp::machine_identity()),
            hostname: ask.hostname.clone(),
            want_router: ask.router,
            want_dns: ask.dns,
            timeout: self.timeout,
        };
        let lease = client.obtain()?;
        Ok((client, lease))
    }
}

/// One NIC and what it carries.
#[derive(Debug, Clone)]
pub struct Nic {
    pub slot: u32,
    pub index: u32,
    /// Its name now (after a rename).
    pub name: String,
    /// The networks (config keys) of its endpoints.
    pub endpoints: Vec<String>,
    /// Its DHCP client and lease, when an endpoint on it is dynamic, and when the lease came.
    pub dhcp: Option<(Client, Lease, Instant)>,
}

/// Where NICs are looked for, and for how long.
pub struct Find<'a> {
    /// sysfs (`/sys`), for the slot's device.
    pub sys: PathBuf,
    /// Whether drivers may still bring NICs (the late modules are loading).
    pub drivers_loading: &'a dyn Fn() -> bool,
    /// How long to go on looking once no driver is loading.
    pub grace: Duration,
    /// How long to look at most.
    pub limit: Duration,
}

/// The interface in PCI slot `slot`, waiting while drivers may still bring it.
pub fn find_interface(find: &Find, slot: u32) -> Result<String, String> {
    let start = Instant::now();
    let mut idle_since: Option<Instant> = None;
    loop {
        let last = match slot::interface(&find.sys, slot) {
            Ok(name) => return Ok(name),
            Err(e) => e,
        };
        let now = Instant::now();
        if (find.drivers_loading)() {
            idle_since = None;
        } else if idle_since.get_or_insert(now).elapsed() >= find.grace {
            return Err(last);
        }
        if now.duration_since(start) >= find.limit {
            return Err(format!("{last} (after {:?})", find.limit));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Endpoints in VIC's order: internal networks first, then by name.
fn order(cfg: &ExecutorConfig) -> Vec<String> {
    let mut keys: Vec<(&String, &NetworkEndpoint)> = cfg.networks.iter().collect();
    keys.sort_by_key(|(k, e)| (!e.internal, (*k).clone()));
    keys.into_iter().map(|(k, _)| k.clone()).collect()
}

/// VIC's hostname for DHCP's option 12 (`Hostname[.Domainname]`), only when one is configured.
fn dhcp_hostname(cfg: &ExecutorConfig, e: &NetworkEndpoint) -> Option<String> {
    if cfg.hostname.is_empty() || e.internal {
        return None;
    }
    Some(match cfg.domainname.as_str() {
        "" => cfg.hostname.clone(),
        d => format!("{}.{d}", cfg.hostname),
    })
}

/// Configures every endpoint of `cfg` and records what each got in its read-write fields.
/// Stops at the first failure, naming the network and the cause.
pub fn configure(
    cfg: &mut ExecutorConfig,
    find: &Find,
    links: &mut dyn Links,
    dhcp: &mut dyn Dhcp,
) -> Result<Vec<Nic>, String> {
    let mut nics: Vec<Nic> = Vec::new();
    for key in order(cfg) {
        let fail = |e: String| format!("network {key}: {e}");
        let mut e = cfg.networks[&key].clone();
        let slot: u32 = e.common.id.trim().parse().map_err(|_| {
            fail(format!(
                "the endpoint's ID {:?} is not a PCI slot number",
                e.common.id
            ))
        })?;
        let at = match nics.iter().position(|n| n.slot == slot) {
            Some(i) => i,
            None => {
                let name = find_interface(find, slot).map_err(fail)?;
                let index = links.index(&name).map_err(fail)?;
                nics.push(Nic {
                    slot,
                    index,
                    name,
                    endpoints: Vec::new(),
                    dhcp: None,
                });
                nics.len() - 1
            }
        };
        let nic = &mut nics[at];
        name_link(links, nic, &e.common.name).map_err(fail)?;
        links.set_up(nic.index, true).map_err(fail)?;
        nic.endpoints.push(key.clone());
        if addressing(&e) == Addressing::Dhcp && nic.dhcp.is_none() {
            let ask = Ask {
                hostname: dhcp_hostname(cfg, &e),
                router: usable(e.network.gateway.ip).is_none(),
                dns: e.network.nameservers.is_empty(),
            };
            let (client, lease) = dhcp.obtain(nic.index, &nic.name, &ask).map_err(fail)?;
            tracing::info!(
                "network {key}: {}/{} from {} for {:?}",
                lease.address,
                lease.prefix,
                lease.server,
                lease.duration
            );
            nic.dhcp = Some((client, lease, Instant::now()));
        }
        apply(links, nic, &mut e).map_err(fail)?;
        cfg.networks.insert(key, e);
    }
    Ok(nics)
}

/// VIC's naming: a NIC already called `want` (or no name wanted) is left alone; an `ethN` is
/// renamed (down first, as the kernel requires); any other gets `want` as its alias.
fn name_link(links: &mut dyn Links, nic: &mut Nic, want: &str) -> Result<(), String> {
    if want.is_empty() || nic.name == want {
        return Ok(());
    }
    if nic.name.starts_with("eth") {
        links.set_up(nic.index, false)?;
        links
            .rename(nic.index, want)
            .map_err(|e| format!("renaming {} to {want}: {e}", nic.name))?;
        tracing::info!("interface {} is now {want}", nic.name);
        nic.name = want.to_string();
        Ok(())
    } else {
        links
            .set_alias(nic.index, want)
            .map_err(|e| format!("aliasing {} as {want}: {e}", nic.name))
    }
}

/// The endpoint's address (replacing another it had), its announcement and routes, and the
/// read-write fields that report them. Applied again after every DHCP renewal.
pub fn apply(links: &mut dyn Links, nic: &Nic, e: &mut NetworkEndpoint) -> Result<(), String> {
    let lease = nic.dhcp.as_ref().map(|(_, l, _)| l);
    let address = match addressing(e) {
        Addressing::External => return Ok(()),
        Addressing::Static(c) => c,
        Addressing::Dhcp => {
            let l = lease.ok_or("no DHCP lease")?;
            Cidr {
                ip: IpAddr::V4(l.address),
                prefix: l.prefix,
            }
        }
    };
    if let Some(old) = usable(e.assigned.ip) {
        let old = cidr(old, e.assigned.mask);
        if old != address {
            links.remove_address(nic.index, old)?;
        }
    }
    links
        .add_address(nic.index, address)
        .map_err(|err| format!("adding {address} to {}: {err}", nic.name))?;
    if let Err(err) = links.announce(nic.index, &nic.name, address.ip) {
        tracing::warn!("{err}");
    }
    let dhcp_router = lease
        .and_then(|l| l.routers.first())
        .map(|r| IpAddr::V4(*r));
    let gateway = usable(e.network.gateway.ip).or(dhcp_router);
    if let Some(gw) = gateway {
        if e.network.default {
            links
                .replace_route(nic.index, None, gw)
                .map_err(|err| format!("default route via {gw}: {err}"))?;
        } else {
            for d in &e.network.destinations {
                if let Some(ip) = d.ip {
                    let dest = cidr(ip, d.mask);
                    links
                        .replace_route(nic.index, Some(dest), gw)
                        .map_err(|err| format!("route to {dest} via {gw}: {err}"))?;
                }
            }
        }
    }
    e.assigned = ipnet(address);
    e.network.assigned.gateway = match gateway {
        Some(gw) if Some(gw) == usable(e.network.gateway.ip) => e.network.gateway.clone(),
        Some(gw) => IpNet::with_prefix(gw, address.prefix),
        None => IpNet::default(),
    };
    e.network.assigned.nameservers = if e.network.nameservers.is_empty() {
        lease
            .map(|l| l.dns.iter().map(|d| IpAddr::V4(*d)).collect())
            .unwrap_or_default()
    } else {
        e.network.nameservers.clone()
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Records every change; interface indexes by name.
    #[derive(Default)]
    struct Fake {
        indexes: BTreeMap<String, u32>,
        calls: Vec<String>,
    }

    impl Links for Fake {
        fn index(&mut self, name: &str) -> Result<u32, String> {
            self.indexes
                .get(name)
                .copied()
                .ok_or_else(|| format!("no interface {name}"))
        }
        fn rename(&mut self, index: u32, name: &str) -> Result<(), String> {
            self.calls.push(format!("rename {index} {name}"));
            Ok(())
        }
        fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), String> {
            self.calls.push(format!("alias {index} {alias}"));
            Ok(())
        }
        fn set_up(&mut self, index: u32, up: bool) -> Result<(), String> {
            self.calls
                .push(format!("{} {index}", if up { "up" } else { "down" }));
            Ok(())
        }
        fn add_address(&mut self, index: u32, a: Cidr) -> Result<(), String> {
            self.calls.push(format!("add {index} {a}"));
            Ok(())
        }
        fn remove_address(&mut self, index: u32, a: Cidr) -> Result<(), String> {
            self.calls.push(format!("remove {index} {a}"));
            Ok(())
        }
        fn replace_route(&mut self, index: u32, d: Option<Cidr>, gw: IpAddr) -> Result<(), String> {
            let d = d.map_or("default".to_string(), |d| d.to_string());
            self.calls.push(format!("route {index} {d} via {gw}"));
            Ok(())
        }
        fn announce(&mut self, index: u32, _name: &str, ip: IpAddr) -> Result<(), String> {
            self.calls.push(format!("announce {index} {ip}"));
            Ok(())
        }
    }

    struct FakeDhcp(Vec<Ask>);
    impl Dhcp for FakeDhcp {
        fn obtain(&mut self, index: u32, _: &str, ask: &Ask) -> Result<(Client, Lease), String> {
            self.0.push(ask.clone());
            let client = Client {
                ifindex: index,
                mac: [2, 0, 0, 0, 0, 1],
                client_id: vec![],
                hostname: ask.hostname.clone(),
                want_router: ask.router,
                want_dns: ask.dns,
                timeout: Duration::from_secs(1),
            };
            let lease = Lease {
                address: "10.0.2.15".parse().unwrap(),
                prefix: 24,
                routers: vec!["10.0.2.2".parse().unwrap()],
                dns: vec!["10.0.2.3".parse().unwrap()],
                server: "10.0.2.2".parse().unwrap(),
                duration: Duration::from_secs(86400),
                renew: Duration::from_secs(43200),
                rebind: Duration::from_secs(75600),
            };
            Ok((client, lease))
        }
    }

    /// A sysfs with `eth0` in slot 5 and `eth1` in slot 6.
    fn sys() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (slot, name) in [("05", "eth0"), ("06", "eth1")] {
            let d = t
                .path()
                .join(format!("bus/pci/devices/0000:00:{slot}.0/net/{name}"));
            std::fs::create_dir_all(d).unwrap();
        }
        t
    }

    fn endpoint(slot: &str, name: &str) -> NetworkEndpoint {
        let mut e = NetworkEndpoint::default();
        e.common.id = slot.into();
        e.common.name = name.into();
        e
    }

    fn net(ip: &str) -> IpNet {
        let (ip, prefix) = ip.split_once('/').unwrap();
        IpNet::with_prefix(ip.parse().unwrap(), prefix.parse().unwrap())
    }

    fn run(cfg: &mut ExecutorConfig) -> (Result<Vec<Nic>, String>, Fake, FakeDhcp) {
        let s = sys();
        let never = || false;
        let find = Find {
            sys: s.path().to_path_buf(),
            drivers_loading: &never,
            grace: Duration::from_millis(50),
            limit: Duration::from_secs(5),
        };
        let mut links = Fake::default();
        links.indexes.insert("eth0".into(), 2);
        links.indexes.insert("eth1".into(), 3);
        let mut dhcp = FakeDhcp(vec![]);
        let r = configure(cfg, &find, &mut links, &mut dhcp);
        (r, links, dhcp)
    }

    #[test]
    fn addressing_follows_vics_rules() {
        let mut e = NetworkEndpoint::default();
        assert_eq!(addressing(&e), Addressing::Dhcp, "no address");
        e.ip = Some(net("0.0.0.0/0"));
        assert_eq!(addressing(&e), Addressing::Dhcp, "unspecified, not static");
        e.static_ip = true;
        assert_eq!(addressing(&e), Addressing::External, "static 0.0.0.0");
        e.ip = Some(net("172.16.0.2/16"));
        assert_eq!(
            addressing(&e),
            Addressing::Static(Cidr {
                ip: "172.16.0.2".parse().unwrap(),
                prefix: 16
            })
        );
    }

    #[test]
    fn a_static_endpoint_is_renamed_addressed_and_routed() {
        let mut cfg = ExecutorConfig::default();
        let mut e = endpoint("5", "bridge");
        e.static_ip = true;
        e.ip = Some(net("172.16.0.2/16"));
        e.network.gateway = net("172.16.0.1/16");
        e.network.default = true;
        cfg.networks.insert("bridge".into(), e);
        let (r, links, dhcp) = run(&mut cfg);
        let nics = r.unwrap();
        assert_eq!(nics[0].name, "bridge");
        assert!(dhcp.0.is_empty());
        assert_eq!(
            links.calls,
            [
                "down 2",
                "rename 2 bridge",
                "up 2",
                "add 2 172.16.0.2/16",
                "announce 2 172.16.0.2",
                "route 2 default via 172.16.0.1"
            ]
        );
        let e = &cfg.networks["bridge"];
        assert_eq!(e.assigned, net("172.16.0.2/16"));
        assert_eq!(e.network.assigned.gateway, net("172.16.0.1/16"));
        assert!(e.network.assigned.nameservers.is_empty());
    }

    #[test]
    fn two_endpoints_on_one_nic_share_it_and_one_lease() {
        let mut cfg = ExecutorConfig {
            hostname: "web".into(),
            ..Default::default()
        };
        let mut public = endpoint("5", "public");
        public.network.default = true;
        let mut internal = endpoint("5", "management");
        internal.internal = true;
        internal.network.nameservers = vec!["192.0.2.53".parse().unwrap()];
        internal.network.destinations = vec![net("198.51.100.0/24")];
        cfg.networks.insert("public".into(), public);
        cfg.networks.insert("management".into(), internal);
        let (r, links, dhcp) = run(&mut cfg);
        let nics = r.unwrap();
        assert_eq!(nics.len(), 1);
        assert_eq!(
            nics[0].endpoints,
            ["management", "public"],
            "internal first"
        );
        // One lease, asked for by the internal endpoint: no hostname there, no DNS wanted.
        assert_eq!(
            dhcp.0,
            [Ask {
                hostname: None,
                router: true,
                dns: false
            }]
        );
        assert_eq!(
            links.calls,
            [
                "down 2",
                "rename 2 management",
                "up 2",
                "add 2 10.0.2.15/24",
                "announce 2 10.0.2.15",
                "route 2 198.51.100.0/24 via 10.0.2.2",
                // The second name can only be an alias.
                "alias 2 public",
                "up 2",
                "add 2 10.0.2.15/24",
                "announce 2 10.0.2.15",
                "route 2 default via 10.0.2.2",
            ]
        );
        let p = &cfg.networks["public"];
        assert_eq!(p.assigned, net("10.0.2.15/24"));
        assert_eq!(p.network.assigned.gateway, net("10.0.2.2/24"));
        assert_eq!(
            p.network.assigned.nameservers,
            vec!["10.0.2.3".parse::<IpAddr>().unwrap()]
        );
        let m = &cfg.networks["management"];
        assert_eq!(
            m.network.assigned.nameservers,
            vec!["192.0.2.53".parse::<IpAddr>().unwrap()],
            "configured name servers win"
        );
    }

    #[test]
    fn dhcp_asks_with_the_hostname_on_external_networks() {
        let mut cfg = ExecutorConfig {
            hostname: "web".into(),
            domainname: "example.com".into(),
            ..Default::default()
        };
        cfg.networks.insert("public".into(), endpoint("6", ""));
        let (r, links, dhcp) = run(&mut cfg);
        assert_eq!(r.unwrap()[0].name, "eth1", "no name wanted: left alone");
        assert_eq!(dhcp.0[0].hostname.as_deref(), Some("web.example.com"));
        assert!(dhcp.0[0].dns);
        assert_eq!(links.calls[0], "up 3");
    }

    #[test]
    fn an_external_endpoint_is_brought_up_and_left_unaddressed() {
        let mut cfg = ExecutorConfig::default();
        let mut e = endpoint("5", "");
        e.static_ip = true;
        e.ip = Some(net("0.0.0.0/0"));
        cfg.networks.insert("ext".into(), e);
        let (r, links, _) = run(&mut cfg);
        r.unwrap();
        assert_eq!(links.calls, ["up 2"]);
        assert_eq!(cfg.networks["ext"].assigned, IpNet::default());
    }

    #[test]
    fn a_missing_slot_or_a_bad_id_fails_with_the_network_named() {
        let mut cfg = ExecutorConfig::default();
        cfg.networks
            .insert("bridge".into(), endpoint("7", "bridge"));
        let err = run(&mut cfg).0.unwrap_err();
        assert!(err.starts_with("network bridge: "), "{err}");
        assert!(err.contains("slot 7"), "{err}");
        let mut cfg = ExecutorConfig::default();
        cfg.networks
            .insert("bridge".into(), endpoint("x1", "bridge"));
        let err = run(&mut cfg).0.unwrap_err();
        assert!(err.contains("not a PCI slot number"), "{err}");
    }

    #[test]
    fn a_changed_lease_replaces_the_old_address() {
        let mut cfg = ExecutorConfig::default();
        cfg.networks.insert("public".into(), endpoint("5", ""));
        let (r, _, _) = run(&mut cfg);
        let mut nics = r.unwrap();
        let (_, lease, _) = nics[0].dhcp.as_mut().unwrap();
        lease.address = "10.0.2.16".parse().unwrap();
        let mut links = Fake::default();
        let mut e = cfg.networks["public"].clone();
        apply(&mut links, &nics[0], &mut e).unwrap();
        assert_eq!(
            links.calls,
            [
                "remove 2 10.0.2.15/24",
                "add 2 10.0.2.16/24",
                "announce 2 10.0.2.16"
            ]
        );
        assert_eq!(e.assigned, net("10.0.2.16/24"));
    }

    #[test]
    fn the_wait_for_a_nic_lasts_while_drivers_load() {
        let s = sys();
        let started = Instant::now();
        let loading = || started.elapsed() < Duration::from_millis(300);
        let find = Find {
            sys: s.path().to_path_buf(),
            drivers_loading: &loading,
            grace: Duration::from_millis(100),
            limit: Duration::from_secs(5),
        };
        // The NIC appears while drivers load: found.
        let dir = s.path().join("bus/pci/devices/0000:00:08.0/net/eth7");
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            std::fs::create_dir_all(dir).unwrap();
        });
        assert_eq!(find_interface(&find, 8).unwrap(), "eth7");
        maker.join().unwrap();
        // One that never comes: given up once the drivers are done and the grace is over.
        let err = find_interface(&find, 9).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(400), "{err}");
    }
}
