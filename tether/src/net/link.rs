//! Network interfaces, addresses and routes: the few changes the tether makes, behind [`Links`]
//! so that the endpoint logic is tested against a recording fake; [`Netlink`] makes them through
//! the kernel's routing netlink (the `neli` crate), never by running `ip`.

use std::net::IpAddr;

use neli::consts::nl::{NlmF, Nlmsg};
use neli::consts::rtnl::{
    Arphrd, Ifa, Ifla, RtAddrFamily, RtScope, RtTable, Rta, Rtm, Rtn, Rtprot,
};
use neli::consts::socket::NlFamily;
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::rtnl::{IfaddrmsgBuilder, IfinfomsgBuilder, RtattrBuilder, RtmsgBuilder};
use neli::socket::synchronous::NlSocketHandle;
use neli::types::{Buffer, RtBuffer};
use neli::utils::Groups;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// The changes the tether makes to the network. Adding what is there already and removing
/// what is not are not errors.
pub trait Links {
    /// The index of the interface called `name`.
    fn index(&mut self, name: &str) -> Result<u32, String>;
    /// Renames interface `index` (it must be down).
    fn rename(&mut self, index: u32, name: &str) -> Result<(), String>;
    /// Sets the interface's alias (`ip link set alias`).
    fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), String>;
    fn set_up(&mut self, index: u32, up: bool) -> Result<(), String>;
    fn add_address(&mut self, index: u32, address: Cidr) -> Result<(), String>;
    fn remove_address(&mut self, index: u32, address: Cidr) -> Result<(), String>;
    /// Adds or replaces the route to `dest` (the default route when `None`) via `gateway` on
    /// interface `index`.
    fn replace_route(
        &mut self,
        index: u32,
        dest: Option<Cidr>,
        gateway: IpAddr,
    ) -> Result<(), String>;
    /// Announces `ip` on interface `index` (called `name`) with a gratuitous ARP (IPv4 only).
    fn announce(&mut self, index: u32, name: &str, ip: IpAddr) -> Result<(), String>;
}

/// [`Links`] over a routing netlink socket.
pub struct Netlink {
    socket: NlSocketHandle,
}

fn family(ip: &IpAddr) -> RtAddrFamily {
    match ip {
        IpAddr::V4(_) => RtAddrFamily::Inet,
        IpAddr::V6(_) => RtAddrFamily::Inet6,
    }
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn attr<T: neli::consts::rtnl::RtaType>(
    kind: T,
    value: Vec<u8>,
) -> Result<neli::rtnl::Rtattr<T, Buffer>, String> {
    RtattrBuilder::default()
        .rta_type(kind)
        .rta_payload(Buffer::from(value))
        .build()
        .map_err(|e| e.to_string())
}

/// A name as netlink carries it: NUL-terminated.
fn c_string(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

impl Netlink {
    pub fn open() -> Result<Self, String> {
        let socket = NlSocketHandle::connect(NlFamily::Route, None, Groups::empty())
            .map_err(|e| format!("opening a routing netlink socket: {e}"))?;
        Ok(Self { socket })
    }

    /// Sends one request and waits for its acknowledgement; `ok` lists the errors (positive
    /// errnos) that count as success.
    fn request<P: neli::Size + neli::ToBytes + std::fmt::Debug>(
        &mut self,
        kind: Rtm,
        flags: NlmF,
        payload: P,
        ok: &[i32],
    ) -> Result<(), String> {
        let msg = NlmsghdrBuilder::default()
            .nl_type(kind)
            .nl_flags(NlmF::REQUEST | NlmF::ACK | flags)
            .nl_payload(NlPayload::Payload(payload))
            .build()
            .map_err(|e| e.to_string())?;
        self.socket.send(&msg).map_err(|e| e.to_string())?;
        loop {
            let (replies, _) = self
                .socket
                .recv::<Nlmsg, Buffer>()
                .map_err(|e| e.to_string())?;
            for reply in replies {
                let reply: Nlmsghdr<Nlmsg, Buffer> = reply.map_err(|e| e.to_string())?;
                match reply.nl_payload() {
                    NlPayload::Ack(_) => return Ok(()),
                    NlPayload::Err(e) => {
                        let errno = -*e.error();
                        if errno == 0 || ok.contains(&errno) {
                            return Ok(());
                        }
                        return Err(std::io::Error::from_raw_os_error(errno).to_string());
                    }
                    _ => {}
                }
            }
        }
    }

    fn set_link(
        &mut self,
        index: u32,
        up: Option<bool>,
        attrs: RtBuffer<Ifla, Buffer>,
    ) -> Result<(), String> {
        let mut b = IfinfomsgBuilder::default()
            .ifi_family(RtAddrFamily::Unspecified)
            .ifi_type(Arphrd::Ether)
            .ifi_index(index as i32)
            .rtattrs(attrs);
        b = match up {
            Some(true) => b.up(),
            Some(false) => b.down(),
            None => b,
        };
        let msg = b.build().map_err(|e| e.to_string())?;
        self.request(Rtm::Newlink, NlmF::empty(), msg, &[])
    }

    fn address(&mut self, kind: Rtm, index: u32, a: Cidr, ok: &[i32]) -> Result<(), String> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifa::Local, octets(&a.ip))?);
        attrs.push(attr(Ifa::Address, octets(&a.ip))?);
        if let IpAddr::V4(v4) = a.ip {
            if a.prefix < 31 {
                let host = u32::MAX.checked_shr(u32::from(a.prefix)).unwrap_or(0);
                let broadcast = std::net::Ipv4Addr::from(u32::from(v4) | host);
                attrs.push(attr(Ifa::Broadcast, broadcast.octets().to_vec())?);
            }
        }
        let msg = IfaddrmsgBuilder::default()
            .ifa_family(family(&a.ip))
            .ifa_prefixlen(a.prefix)
            .ifa_scope(RtScope::Universe)
            .ifa_index(index)
            .rtattrs(attrs)
            .build()
            .map_err(|e| e.to_string())?;
        let flags = if kind == Rtm::Newaddr {
            NlmF::CREATE | NlmF::REPLACE
        } else {
            NlmF::empty()
        };
        self.request(kind, flags, msg, ok)
    }
}

impl Links for Netlink {
    fn index(&mut self, name: &str) -> Result<u32, String> {
        nix::net::if_::if_nametoindex(name).map_err(|e| format!("no interface {name}: {e}"))
    }

    fn rename(&mut self, index: u32, name: &str) -> Result<(), String> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifname, c_string(name))?);
        self.set_link(index, None, attrs)
    }

    fn set_alias(&mut self, index: u32, alias: &str) -> Result<(), String> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Ifla::Ifalias, alias.as_bytes().to_vec())?);
        self.set_link(index, None, attrs)
    }

    fn set_up(&mut self, index: u32, up: bool) -> Result<(), String> {
        self.set_link(index, Some(up), RtBuffer::new())
    }

    fn add_address(&mut self, index: u32, address: Cidr) -> Result<(), String> {
        self.address(Rtm::Newaddr, index, address, &[libc::EEXIST])
    }

    fn remove_address(&mut self, index: u32, address: Cidr) -> Result<(), String> {
        self.address(Rtm::Deladdr, index, address, &[libc::EADDRNOTAVAIL])
    }

    fn replace_route(
        &mut self,
        index: u32,
        dest: Option<Cidr>,
        gateway: IpAddr,
    ) -> Result<(), String> {
        let mut attrs = RtBuffer::new();
        attrs.push(attr(Rta::Gateway, octets(&gateway))?);
        attrs.push(attr(Rta::Oif, index.to_ne_bytes().to_vec())?);
        if let Some(d) = dest {
            attrs.push(attr(Rta::Dst, octets(&d.ip))?);
        }
        let msg = RtmsgBuilder::default()
            .rtm_family(family(&gateway))
            .rtm_dst_len(dest.map_or(0, |d| d.prefix))
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Main)
            .rtm_protocol(Rtprot::Boot)
            .rtm_scope(RtScope::Universe)
            .rtm_type(Rtn::Unicast)
            .rtattrs(attrs)
            .build()
            .map_err(|e| e.to_string())?;
        self.request(Rtm::Newroute, NlmF::CREATE | NlmF::REPLACE, msg, &[])
    }

    fn announce(&mut self, index: u32, name: &str, ip: IpAddr) -> Result<(), String> {
        let IpAddr::V4(v4) = ip else {
            return Ok(());
        };
        let mac = super::dhcp::mac_address(name)?;
        super::dhcp::gratuitous_arp(index, &mac, v4)
    }
}
