//! A containerVM's networks under QEMU: the NIC at a fixed PCI slot, written into the config as
//! VIC's VCH writes an endpoint (the slot as the endpoint's ID), and QEMU's user network behind
//! it (DHCP from QEMU, outbound NAT, ports published with `hostfwd`).

use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tether_proto::config::{ExecutorConfig, NetworkEndpoint};

/// The PCI slot of a containerVM's first NIC (bus 0: VIC's slot number is the device number).
/// Far above the slots QEMU gives the other devices in order.
pub const FIRST_NIC_SLOT: u32 = 0x10;
/// The name of the user network's endpoint (and the interface in the guest), as docker's default.
pub const USER_NETWORK: &str = "bridge";
/// Where a container on a user network reaches the host's loopback ports given with
/// `--host-port` (QEMU's `guestfwd`).
pub const HOST_ALIAS_IP: &str = "10.0.2.100";

/// How a containerVM is networked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// QEMU's user network: DHCP, outbound NAT, published ports.
    #[default]
    User,
    /// The user network with nothing routed out of it (QEMU's `restrict=on`): only published
    /// ports and `--host-port` services reach across. What the tests use.
    Isolated,
    /// No NIC at all (only `lo`).
    None,
}

/// A TCP or UDP port number, 1 to 65535.
fn port_number(p: &str) -> Option<u16> {
    p.parse::<u16>().ok().filter(|p| *p != 0)
}

/// A published port: `[IP:]HOSTPORT:CTRPORT[/tcp|udp]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub udp: bool,
}

impl FromStr for PortSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("bad port spec {s:?} ({why}): want [IP:]HOSTPORT:CTRPORT[/tcp|udp]")
        };
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, false),
            Some((p, "udp")) => (p, true),
            Some(_) => return Err(bad("the protocol is tcp or udp")),
            None => (s, false),
        };
        let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
        let port = |p: &str| port_number(p).ok_or_else(|| bad("a port is 1 to 65535"));
        let (host_ip, host, ctr) = match parts.as_slice() {
            [ctr, host] => ("127.0.0.1".parse().unwrap(), *host, *ctr),
            [ctr, host, ip] => (
                ip.trim_matches(['[', ']'])
                    .parse()
                    .map_err(|_| bad("not an IP address"))?,
                *host,
                *ctr,
            ),
            _ => return Err(bad("both ports are needed")),
        };
        Ok(Self {
            host_ip,
            host_port: port(host)?,
            container_port: port(ctr)?,
            udp: proto,
        })
    }
}

impl std::fmt::Display for PortSpec {
    /// Docker's form in VIC's `ports` key: `HOST:CTR/proto`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = if self.udp { "udp" } else { "tcp" };
        write!(f, "{}:{}/{proto}", self.host_port, self.container_port)
    }
}

/// A service on the host's loopback the container may reach: `PORT` (the same port on both
/// sides) or `GUESTPORT:HOSTPORT`, at [`HOST_ALIAS_IP`] in the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    pub guest: u16,
    pub host: u16,
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            port_number(p)
                .ok_or_else(|| format!("bad host port {s:?}: want PORT or GUESTPORT:HOSTPORT"))
        };
        match s.split_once(':') {
            Some((g, h)) => Ok(Self {
                guest: port(g)?,
                host: port(h)?,
            }),
            None => port(s).map(|p| Self { guest: p, host: p }),
        }
    }
}

/// A NIC of a containerVM: its slot and MAC, and QEMU's backend for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub slot: u32,
    pub mac: String,
    /// `-netdev`'s value without the id (for a tap, filled in once it is open).
    pub netdev: String,
    /// The bridge network whose tap backs this NIC (see [`crate::bridge`]).
    pub tap: Option<String>,
}

/// A stable, locally administered MAC for NIC `n` of container `id`.
pub fn mac(id: &str, n: u8) -> String {
    let h = id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let b = h.to_be_bytes();
    format!("02:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], n)
}

/// The NICs of a container: the user network's (with `mode`, its published ports and the
/// host's loopback ports it may reach) at [`FIRST_NIC_SLOT`], then one per bridge network.
pub fn nics(
    id: &str,
    mode: NetMode,
    publish: &[PortSpec],
    host_ports: &[HostPort],
    bridges: &[String],
) -> Vec<Nic> {
    let mut out: Vec<Nic> = bridges
        .iter()
        .enumerate()
        .map(|(i, net)| Nic {
            slot: FIRST_NIC_SLOT + 1 + i as u32,
            mac: mac(id, 1 + i as u8),
            netdev: String::new(),
            tap: Some(net.clone()),
        })
        .collect();
    if mode == NetMode::None {
        return out;
    }
    let mut netdev = String::from("user");
    if mode == NetMode::Isolated {
        netdev.push_str(",restrict=on");
    }
    for p in publish {
        let proto = if p.udp { "udp" } else { "tcp" };
        netdev.push_str(&format!(
            ",hostfwd={proto}:{}:{}-:{}",
            p.host_ip, p.host_port, p.container_port
        ));
    }
    for p in host_ports {
        netdev.push_str(&format!(
            ",guestfwd=tcp:{HOST_ALIAS_IP}:{}-tcp:127.0.0.1:{}",
            p.guest, p.host
        ));
    }
    out.insert(
        0,
        Nic {
            slot: FIRST_NIC_SLOT,
            mac: mac(id, 0),
            netdev,
            tap: None,
        },
    );
    out
}

/// QEMU's user network: its gateway and DNS server.
const USER_GATEWAY: &str = "10.0.2.2";
const USER_PREFIX: u8 = 24;
const USER_DNS: &str = "10.0.2.3";

/// The endpoints of `nics` in the container's config, as VIC's VCH writes them: the slot as
/// the ID, the network's name for the interface, DHCP (no address), the default route. On an
/// isolated network QEMU's DHCP names no gateway or DNS server, so the config does (as VIC's VCH
/// does for its bridge networks).
pub fn add_endpoints(cfg: &mut ExecutorConfig, mode: NetMode, nics: &[Nic], publish: &[PortSpec]) {
    let has_user = nics.iter().any(|n| n.tap.is_none());
    for (i, nic) in nics.iter().enumerate() {
        let mut e = NetworkEndpoint::default();
        e.common.id = nic.slot.to_string();
        e.network.network_type = "bridge".into();
        // The default route: the user network's, else the first bridge network's.
        e.network.default = i == 0;
        if let Some(net) = &nic.tap {
            // On a bridge network, dnsmasq's reservation gives the address, gateway and DNS.
            e.common.name = net.clone();
            e.network.common.name = net.clone();
            e.network.default = !has_user && i == 0;
            if e.network.default {
                e.ports = publish.iter().map(ToString::to_string).collect();
            }
            cfg.networks.insert(net.clone(), e);
            continue;
        }
        e.common.name = USER_NETWORK.into();
        e.network.common.name = USER_NETWORK.into();
        e.ports = publish.iter().map(ToString::to_string).collect();
        if mode == NetMode::Isolated {
            let gw: IpAddr = USER_GATEWAY.parse().expect("an address");
            e.network.gateway = tether_proto::config::IpNet::with_prefix(gw, USER_PREFIX);
            e.network.nameservers = vec![USER_DNS.parse().expect("an address")];
        }
        cfg.networks.insert(USER_NETWORK.into(), e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_as_dockers() {
        let p: PortSpec = "8080:80".parse().unwrap();
        assert_eq!(p.host_ip.to_string(), "127.0.0.1", "loopback by default");
        assert_eq!((p.host_port, p.container_port, p.udp), (8080, 80, false));
        let p: PortSpec = "0.0.0.0:53:5353/udp".parse().unwrap();
        assert_eq!((p.host_ip.to_string().as_str(), p.udp), ("0.0.0.0", true));
        assert_eq!(p.to_string(), "53:5353/udp");
        for bad in ["80", "a:80", "8080:80/sctp", "x:1:2", "0:80", "70000:80"] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_user_nic_sits_at_its_slot_with_forwards_and_restriction() {
        let p: PortSpec = "8080:80".parse().unwrap();
        let fwd = HostPort {
            guest: 9000,
            host: 9000,
        };
        assert_eq!("9000".parse::<HostPort>().unwrap(), fwd);
        assert_eq!(
            "2049:20490".parse::<HostPort>().unwrap(),
            HostPort {
                guest: 2049,
                host: 20490
            }
        );
        assert!("0".parse::<HostPort>().is_err() && "1:x".parse::<HostPort>().is_err());
        let n = nics(
            "abc",
            NetMode::Isolated,
            std::slice::from_ref(&p),
            &[fwd],
            &[],
        );
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].slot, 16);
        assert_eq!(
            n[0].netdev,
            "user,restrict=on,hostfwd=tcp:127.0.0.1:8080-:80,\
             guestfwd=tcp:10.0.2.100:9000-tcp:127.0.0.1:9000"
        );
        assert_eq!(n[0].mac, mac("abc", 0));
        assert_ne!(mac("abc", 0), mac("abd", 0));
        assert!(nics("abc", NetMode::None, &[], &[], &[]).is_empty());
        assert_eq!(nics("abc", NetMode::User, &[], &[], &[])[0].netdev, "user");
        // Bridge networks after the user network's, each at the next slot with its own MAC.
        let b = nics("abc", NetMode::User, &[], &[], &["n1".into(), "n2".into()]);
        let slots: Vec<u32> = b.iter().map(|n| n.slot).collect();
        assert_eq!(slots, [16, 17, 18]);
        assert_eq!(b[2].tap.as_deref(), Some("n2"));
        assert_ne!(b[1].mac, b[2].mac);
        let mut two = ExecutorConfig::default();
        add_endpoints(&mut two, NetMode::None, &b[1..], &[]);
        assert_eq!(two.networks["n1"].common.id, "17");
        assert_eq!(two.networks["n1"].common.name, "n1");
        assert!(
            two.networks["n1"].network.default,
            "the first when there is no user network"
        );
        assert!(!two.networks["n2"].network.default);
        let mut cfg = ExecutorConfig::default();
        add_endpoints(&mut cfg, NetMode::Isolated, &n, &[p]);
        let e = &cfg.networks[USER_NETWORK];
        assert_eq!(e.network.gateway.ip, Some("10.0.2.2".parse().unwrap()));
        assert_eq!(
            e.network.nameservers,
            ["10.0.2.3".parse::<IpAddr>().unwrap()]
        );
        let mut nat = ExecutorConfig::default();
        add_endpoints(&mut nat, NetMode::User, &n, &[]);
        assert!(
            nat.networks[USER_NETWORK].network.nameservers.is_empty(),
            "DHCP's"
        );
        assert_eq!(e.common.id, "16");
        assert!(e.ip.is_none() && !e.static_ip, "DHCP");
        assert_eq!(e.ports, ["8080:80/tcp"]);
        assert!(e.network.default);
    }
}
