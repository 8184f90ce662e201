//! The DHCPv4 client, with VIC's behaviour: a client identifier per RFC 4361, the hostname
//! option, a parameter request list that asks only for what the config lacks, 10 s to get a
//! lease, renewal at T1 by unicast and rebinding at T2 by broadcast, release at shutdown. The
//! messages are encoded and parsed by `dhcproto`; before the interface has an address they go
//! through a link-layer socket (a server may answer at the link layer to the address it offers),
//! after it through a UDP socket bound to the interface.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use dhcproto::v4::{self, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Encodable, Encoder};
use sha2::Digest as _;

use crate::sys::packet::{PacketSocket, ETH_P_ARP, ETH_P_IP};

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
/// VMware's IANA private enterprise number, in the DUID-EN of the client identifier (as VIC).
const VMWARE_PEN: u32 = 6876;
/// How long one exchange waits for an answer before it sends again.
const RETRANSMIT: Duration = Duration::from_secs(2);

/// Who the client is and what it asks for.
#[derive(Debug, Clone)]
pub struct Client {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// Option 61's value (see [`client_id`]).
    pub client_id: Vec<u8>,
    /// Option 12, for dynamic DNS (VIC sends it on non-internal networks when a hostname is set).
    pub hostname: Option<String>,
    /// Ask for routers (the config has no gateway) and for name servers (it has none).
    pub want_router: bool,
    pub want_dns: bool,
    /// How long getting (or renewing) a lease may take.
    pub timeout: Duration,
}

/// What a server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub server: Ipv4Addr,
    pub duration: Duration,
    /// T1 and T2: when to renew (unicast) and rebind (broadcast), from the grant.
    pub renew: Duration,
    pub rebind: Duration,
}

/// RFC 4361's client identifier: type 255, a 32-bit IAID from the MAC, then a DUID-EN (type 2)
/// with VMware's enterprise number and an identifier from the machine's SMBIOS serial or UUID.
/// VIC folds SipHash values; SHA-256 prefixes serve the same end (stable, not revealing).
pub fn client_id(mac: &[u8; 6], machine: &str) -> Vec<u8> {
    let iaid = sha2::Sha256::digest(mac);
    let id = sha2::Sha256::digest(machine.as_bytes());
    let mut v = vec![255];
    v.extend_from_slice(&iaid[..4]);
    v.extend_from_slice(&2u16.to_be_bytes());
    v.extend_from_slice(&VMWARE_PEN.to_be_bytes());
    v.extend_from_slice(&id[..8]);
    v
}

/// The machine's identity for [`client_id`]: its SMBIOS serial (VIC's choice), else its UUID.
pub fn machine_identity() -> String {
    ["product_serial", "product_uuid"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/sys/class/dmi/id/{f}")).ok())
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_default()
}

fn xid() -> u32 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        // Without the kernel's randomness, the clock still tells exchanges apart.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ t.as_secs() as u32;
    }
    u32::from_ne_bytes(b)
}

impl Client {
    /// A request of `kind` with this client's options; `ciaddr` is set when the client has an
    /// address (renewing, rebinding, releasing).
    pub fn message(&self, xid: u32, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, ciaddr, z, z, z, &self.mac);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ClientIdentifier(self.client_id.clone()));
        if kind != MessageType::Release {
            let mut wanted = vec![OptionCode::SubnetMask];
            if self.want_router {
                wanted.push(OptionCode::Router);
            }
            if self.want_dns {
                wanted.push(OptionCode::DomainNameServer);
            }
            opts.insert(DhcpOption::ParameterRequestList(wanted));
            opts.insert(DhcpOption::MaxMessageSize(1500));
            if let Some(h) = &self.hostname {
                opts.insert(DhcpOption::Hostname(h.clone()));
            }
        }
        m
    }

    /// DHCPREQUEST for an offered address (the SELECTING state: server id and requested address).
    pub fn select(&self, xid: u32, offered: Ipv4Addr, server: Ipv4Addr) -> Message {
        let mut m = self.message(xid, MessageType::Request, Ipv4Addr::UNSPECIFIED);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(offered));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        m
    }

    /// Gets a lease from scratch: DISCOVER, OFFER, REQUEST, ACK, within [`Client::timeout`].
    pub fn obtain(&self) -> Result<Lease, String> {
        let sock = PacketSocket::open(self.ifindex, ETH_P_IP)
            .map_err(|e| format!("DHCP: opening a packet socket: {e}"))?;
        let deadline = Instant::now() + self.timeout;
        let send = |m: &Message| -> Result<(), String> {
            let packet = udp_packet(
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                CLIENT_PORT,
                SERVER_PORT,
                &encode(m)?,
            );
            sock.send_broadcast(&packet)
                .map_err(|e| format!("DHCP: sending: {e}"))
        };
        let recv = |buf: &mut [u8], wait: Duration| -> Result<Option<Vec<u8>>, String> {
            match sock.recv_timeout(buf, wait) {
                Ok(Some(n)) => Ok(udp_payload(&buf[..n], CLIENT_PORT).map(<[u8]>::to_vec)),
                Ok(None) => Ok(None),
                Err(e) => Err(format!("DHCP: receiving: {e}")),
            }
        };
        loop {
            let id = xid();
            let offer = self.exchange(
                &self.message(id, MessageType::Discover, Ipv4Addr::UNSPECIFIED),
                &[MessageType::Offer],
                deadline,
                &send,
                &recv,
            )?;
            let server = offer.server();
            let answer = self.exchange(
                &self.select(id, offer.yiaddr, server),
                &[MessageType::Ack, MessageType::Nak],
                deadline,
                &send,
                &recv,
            )?;
            if answer.kind == Some(MessageType::Ack) {
                return lease_from(&answer);
            }
            tracing::warn!(
                "DHCP: the server declined its own offer of {}",
                offer.yiaddr
            );
        }
    }

    /// Sends `m` and waits for an answer of one of `kinds` to it, sending again every
    /// [`RETRANSMIT`], until `deadline`.
    fn exchange(
        &self,
        m: &Message,
        kinds: &[MessageType],
        deadline: Instant,
        send: &dyn Fn(&Message) -> Result<(), String>,
        recv: &Recv,
    ) -> Result<Reply, String> {
        let mut buf = vec![0u8; 2048];
        let kind = m.opts().msg_type().unwrap_or(MessageType::Discover);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "DHCP: no answer to {kind:?} within {:?}",
                    self.timeout
                ));
            }
            send(m)?;
            let resend = (now + RETRANSMIT).min(deadline);
            loop {
                let left = resend.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let Some(bytes) = recv(&mut buf, left)? else {
                    continue;
                };
                if let Some(reply) = reply_to(&bytes, m.xid(), &self.mac) {
                    if reply.kind.is_some_and(|k| kinds.contains(&k)) {
                        return Ok(reply);
                    }
                }
            }
        }
    }

    /// Extends `lease`: unicast to its server (renewing), or broadcast to any (rebinding).
    pub fn extend(&self, lease: &Lease, broadcast: bool) -> Result<Lease, String> {
        let sock = udp_socket(self.ifindex, broadcast)?;
        let to = if broadcast {
            Ipv4Addr::BROADCAST
        } else {
            lease.server
        };
        let m = self.message(xid(), MessageType::Request, lease.address);
        let deadline = Instant::now() + self.timeout;
        let send = |m: &Message| -> Result<(), String> {
            sock.send_to(&encode(m)?, SocketAddrV4::new(to, SERVER_PORT))
                .map(drop)
                .map_err(|e| format!("DHCP: sending to {to}: {e}"))
        };
        let recv = |buf: &mut [u8], wait: Duration| -> Result<Option<Vec<u8>>, String> {
            let _ = sock.set_read_timeout(Some(wait.max(Duration::from_millis(1))));
            match sock.recv(buf) {
                Ok(n) => Ok(Some(buf[..n].to_vec())),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(format!("DHCP: receiving: {e}")),
            }
        };
        let answer = self.exchange(
            &m,
            &[MessageType::Ack, MessageType::Nak],
            deadline,
            &send,
            &recv,
        )?;
        if answer.kind == Some(MessageType::Nak) {
            return Err(format!("DHCP: {to} refused to extend {}", lease.address));
        }
        lease_from(&answer)
    }

    /// Gives `lease` back to its server (one unicast message; nothing is answered).
    pub fn release(&self, lease: &Lease) -> Result<(), String> {
        let sock = udp_socket(self.ifindex, false)?;
        let mut m = self.message(xid(), MessageType::Release, lease.address);
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        sock.send_to(&encode(&m)?, SocketAddrV4::new(lease.server, SERVER_PORT))
            .map(drop)
            .map_err(|e| format!("DHCP: releasing {}: {e}", lease.address))
    }
}

/// Receives one datagram's DHCP payload into the buffer, waiting at most the duration.
type Recv<'a> = dyn Fn(&mut [u8], Duration) -> Result<Option<Vec<u8>>, String> + 'a;

fn encode(m: &Message) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(576);
    m.encode(&mut Encoder::new(&mut buf))
        .map_err(|e| format!("DHCP: encoding: {e}"))?;
    Ok(buf)
}

/// A server's reply, its options kept as bytes: only the few the client reads are looked at
/// (decoding every option would link a DNS library for the domain-search option, 50 KB of the
/// tether's resident memory).
#[derive(Debug, Clone)]
pub struct Reply {
    pub kind: Option<MessageType>,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    options: Vec<(u8, Vec<u8>)>,
}

impl Reply {
    fn option(&self, code: OptionCode) -> Option<&[u8]> {
        let code = u8::from(code);
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.as_slice())
    }

    fn address(&self, code: OptionCode) -> Option<Ipv4Addr> {
        let d: [u8; 4] = self.option(code)?.get(..4)?.try_into().ok()?;
        Some(Ipv4Addr::from(d))
    }

    fn addresses(&self, code: OptionCode) -> Vec<Ipv4Addr> {
        self.option(code)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            .collect()
    }

    fn seconds(&self, code: OptionCode) -> Option<u32> {
        let d: [u8; 4] = self.option(code)?.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(d))
    }

    /// The server's identifier, else the address it wrote in `siaddr`.
    pub fn server(&self) -> Ipv4Addr {
        self.address(OptionCode::ServerIdentifier)
            .unwrap_or(self.siaddr)
    }
}

/// A server's reply to transaction `xid` of the client with `mac`, if `bytes` is one.
pub fn reply_to(bytes: &[u8], xid: u32, mac: &[u8; 6]) -> Option<Reply> {
    // dhcproto slices `chaddr` by the sender's `hlen` (up to 255) without a bound: a reply
    // claiming more than the field's 16 bytes panicked the client (found by the dhcp_replies
    // fuzz target). It is refused here, and our MAC compared in place.
    if bytes.get(2).is_none_or(|&hlen| hlen > 16) || bytes.get(28..34) != Some(&mac[..]) {
        return None;
    }
    let m = v4::borrowed::Message::new(bytes).ok()?;
    if m.opcode() != v4::Opcode::BootReply || m.xid() != xid {
        return None;
    }
    let options: Vec<(u8, Vec<u8>)> = m
        .opts()
        .map(|o| (u8::from(o.code()), o.data().to_vec()))
        .collect();
    let kind = options
        .iter()
        .find(|(c, _)| *c == u8::from(OptionCode::MessageType))
        .and_then(|(_, d)| d.first())
        .map(|k| MessageType::from(*k));
    Some(Reply {
        kind,
        yiaddr: m.yiaddr(),
        siaddr: m.siaddr(),
        options,
    })
}

/// The lease an ACK grants; it must carry the address, the mask and the lease time.
pub fn lease_from(ack: &Reply) -> Result<Lease, String> {
    let address = ack.yiaddr;
    if address.is_unspecified() {
        return Err("DHCP: the ACK carries no address".into());
    }
    let Some(mask) = ack.address(OptionCode::SubnetMask) else {
        return Err(format!(
            "DHCP: the ACK for {address} carries no subnet mask"
        ));
    };
    let Some(secs) = ack.seconds(OptionCode::AddressLeaseTime) else {
        return Err(format!("DHCP: the ACK for {address} carries no lease time"));
    };
    let duration = Duration::from_secs(u64::from(secs));
    let seconds = |code, default: Duration| match ack.seconds(code) {
        Some(s) => Duration::from_secs(u64::from(s)).min(duration),
        None => default,
    };
    let renew = seconds(OptionCode::Renewal, duration / 2);
    let rebind = seconds(OptionCode::Rebinding, duration * 7 / 8).max(renew);
    Ok(Lease {
        address,
        prefix: u32::from(mask).leading_ones() as u8,
        routers: ack.addresses(OptionCode::Router),
        dns: ack.addresses(OptionCode::DomainNameServer),
        server: ack.server(),
        duration,
        renew,
        rebind,
    })
}

/// A UDP socket on port 68 of interface `ifindex` (others may share the port: one per NIC).
fn udp_socket(ifindex: u32, broadcast: bool) -> Result<UdpSocket, String> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fail = |what: &str, e: nix::Error| format!("DHCP: {what}: {e}");
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail("opening a UDP socket", e))?;
    let name =
        nix::net::if_::if_indextoname(ifindex).map_err(|e| fail("naming the interface", e))?;
    let name = name.to_string_lossy().into_owned();
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| fail("SO_REUSEADDR", e))?;
    setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(&name))
        .map_err(|e| fail("SO_BINDTODEVICE", e))?;
    if broadcast {
        setsockopt(&fd, sockopt::Broadcast, &true).map_err(|e| fail("SO_BROADCAST", e))?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)),
    )
    .map_err(|e| fail("binding port 68", e))?;
    Ok(UdpSocket::from(fd))
}

/// The Internet checksum of `data`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying one UDP datagram.
pub fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    // The pseudo-header: addresses, protocol, length.
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let pre = pseudo
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let mut udp_sum = checksum(&p[20..], pre);
    if udp_sum == 0 {
        udp_sum = 0xffff;
    }
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// The payload of `packet` if it is an unfragmented IPv4 UDP datagram to port `dport`.
pub fn udp_payload(packet: &[u8], dport: u16) -> Option<&[u8]> {
    let first = *packet.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 || packet[9] != 17 {
        return None;
    }
    // A fragment (more fragments, or an offset) is not a whole datagram.
    if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    // The IP header's total length is the sender's word: it may leave no room for UDP's.
    let udp = packet.get(ihl..total).filter(|u| u.len() >= 8)?;
    if u16::from_be_bytes([udp[2], udp[3]]) != dport {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp.get(8..len.max(8))
}

/// The ARP request announcing `ip` at `mac` (sender and target both `ip`).
pub fn gratuitous_arp_message(mac: &[u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut m = Vec::with_capacity(28);
    m.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    m.extend_from_slice(mac);
    m.extend_from_slice(&ip.octets());
    m.extend_from_slice(&[0; 6]);
    m.extend_from_slice(&ip.octets());
    m
}

/// Announces `ip` on the link, so that neighbours forget an earlier holder's MAC.
pub fn gratuitous_arp(ifindex: u32, mac: &[u8; 6], ip: Ipv4Addr) -> Result<(), String> {
    let sock = PacketSocket::open(ifindex, ETH_P_ARP).map_err(|e| format!("ARP socket: {e}"))?;
    sock.send_broadcast(&gratuitous_arp_message(mac, ip))
        .map_err(|e| format!("gratuitous ARP for {ip}: {e}"))
}

/// The MAC address of interface `name`, from sysfs.
pub fn mac_address(name: &str) -> Result<[u8; 6], String> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect();
    bytes
        .try_into()
        .map_err(|_| format!("{path}: not a MAC address: {:?}", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder};

    fn client() -> Client {
        Client {
            ifindex: 2,
            mac: [0x02, 0, 0, 0, 0, 0x42],
            client_id: client_id(&[0x02, 0, 0, 0, 0, 0x42], "VMware-42 1a"),
            hostname: Some("web.example.com".into()),
            want_router: true,
            want_dns: false,
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn the_client_identifier_follows_rfc_4361() {
        let id = client_id(&[1, 2, 3, 4, 5, 6], "serial");
        assert_eq!(id.len(), 1 + 4 + 2 + 4 + 8);
        assert_eq!(id[0], 255);
        assert_eq!(&id[5..7], &[0, 2], "DUID-EN");
        assert_eq!(&id[7..11], &6876u32.to_be_bytes());
        // Stable, and different for another NIC or machine.
        assert_eq!(id, client_id(&[1, 2, 3, 4, 5, 6], "serial"));
        assert_ne!(id[1..5], client_id(&[1, 2, 3, 4, 5, 7], "serial")[1..5]);
        assert_ne!(id[11..], client_id(&[1, 2, 3, 4, 5, 6], "other")[11..]);
    }

    #[test]
    fn a_discover_asks_for_what_the_config_lacks() {
        let m = client().message(7, MessageType::Discover, Ipv4Addr::UNSPECIFIED);
        let back = Message::decode(&mut Decoder::new(&encode(&m).unwrap())).unwrap();
        assert_eq!(back.xid(), 7);
        assert_eq!(back.chaddr(), &[0x02, 0, 0, 0, 0, 0x42]);
        assert_eq!(
            back.opts().get(OptionCode::ParameterRequestList),
            Some(&DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
                OptionCode::Router
            ]))
        );
        assert_eq!(
            back.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("web.example.com".into()))
        );
        assert!(matches!(
            back.opts().get(OptionCode::ClientIdentifier),
            Some(DhcpOption::ClientIdentifier(id)) if id[0] == 255
        ));
        let sel = client().select(8, "10.0.0.5".parse().unwrap(), "10.0.0.1".parse().unwrap());
        assert_eq!(
            sel.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress("10.0.0.5".parse().unwrap()))
        );
    }

    fn ack(opts: &[DhcpOption]) -> Message {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(9, z, "10.0.0.5".parse().unwrap(), z, z, &client().mac);
        m.set_opcode(v4::Opcode::BootReply);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for o in opts {
            m.opts_mut().insert(o.clone());
        }
        m
    }

    #[test]
    fn an_ack_gives_the_lease_and_its_times() {
        let m = ack(&[
            DhcpOption::SubnetMask("255.255.255.0".parse().unwrap()),
            DhcpOption::AddressLeaseTime(120),
            DhcpOption::Renewal(4),
            DhcpOption::Router(vec!["10.0.0.1".parse().unwrap()]),
            DhcpOption::DomainNameServer(vec!["10.0.0.53".parse().unwrap()]),
            DhcpOption::ServerIdentifier("10.0.0.2".parse().unwrap()),
        ]);
        let bytes = encode(&m).unwrap();
        let reply = reply_to(&bytes, 9, &client().mac).unwrap();
        assert!(reply_to(&bytes, 10, &client().mac).is_none(), "another xid");
        assert!(reply_to(&bytes, 9, &[9; 6]).is_none(), "another MAC");
        // A reply claiming a hardware address longer than the field (found by the fuzzer: it
        // panicked inside dhcproto) is refused, whole or cut short.
        let mut long = bytes.clone();
        long[2] = 200;
        assert!(reply_to(&long, 9, &client().mac).is_none());
        assert!(reply_to(&long[..241], 9, &client().mac).is_none());
        let lease = lease_from(&reply).unwrap();
        assert_eq!(lease.address, "10.0.0.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.server, "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(lease.routers, vec!["10.0.0.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(lease.dns, vec!["10.0.0.53".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(lease.renew, Duration::from_secs(4));
        assert_eq!(lease.rebind, Duration::from_secs(105), "7/8 of the lease");
    }

    #[test]
    fn an_ack_without_mask_or_lease_time_is_refused() {
        let read = |m: Message| reply_to(&encode(&m).unwrap(), 9, &client().mac).unwrap();
        let no_mask = read(ack(&[DhcpOption::AddressLeaseTime(120)]));
        assert!(lease_from(&no_mask).unwrap_err().contains("subnet mask"));
        let no_time = read(ack(&[DhcpOption::SubnetMask(
            "255.255.0.0".parse().unwrap(),
        )]));
        assert!(lease_from(&no_time).unwrap_err().contains("lease time"));
    }

    #[test]
    fn udp_packets_round_trip_with_valid_checksums() {
        let p = udp_packet(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 68, 67, b"hello");
        assert_eq!(p.len(), 20 + 8 + 5);
        assert_eq!(checksum(&p[..20], 0), 0, "the IP header sums to zero");
        assert_eq!(udp_payload(&p, 67), Some(&b"hello"[..]));
        assert_eq!(udp_payload(&p, 68), None, "another port");
        assert_eq!(udp_payload(&p[..10], 67), None, "cut short");
        // An IP total length that leaves no room for the UDP header (found by the dhcp_replies
        // fuzz target: it panicked PID 1 on a packet from the network).
        let mut short = p.clone();
        short[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(udp_payload(&short, 67), None);
        let crash = [
            0x46, 0x16, 0x00, 0x18, 0x00, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x11, 0x11, 0x11, 0x11, 0x11, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x11, 0x11, 0x11, 0x11, 0xa9,
        ];
        assert_eq!(udp_payload(&crash, 68), None);
        // A fragment is not a datagram.
        let mut frag = p.clone();
        frag[6] |= 0x20;
        assert_eq!(udp_payload(&frag, 67), None);
        // The UDP checksum with its pseudo-header also sums to zero.
        let mut pseudo = vec![0, 0, 0, 0, 255, 255, 255, 255, 0, 17, 0, 13];
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(checksum(&pseudo, 0), 0);
    }

    #[test]
    fn a_gratuitous_arp_names_the_address_twice() {
        let m = gratuitous_arp_message(&[1, 2, 3, 4, 5, 6], "10.0.0.5".parse().unwrap());
        assert_eq!(m.len(), 28);
        assert_eq!(&m[6..8], &[0, 1], "a request");
        assert_eq!(&m[14..18], &[10, 0, 0, 5]);
        assert_eq!(&m[24..28], &[10, 0, 0, 5]);
    }
}
