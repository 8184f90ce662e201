//! The guest's NICs as the tools report them to the VMX (vSphere shows them as the VM's IP
//! addresses): `SetGuestInfo  9 ` and the XDR of open-vm-tools' `GuestNicInfo` version 3
//! (`nicinfo.x`): each NIC's MAC and addresses with their prefix lengths, no routes, DNS, WINS
//! or DHCP details.

use std::net::IpAddr;

/// One NIC: its MAC (`aa:bb:...`) and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub mac: String,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// At most this many NICs go in a report (`NICINFO_MAX_NICS`).
pub const MAX_NICS: usize = 16;
/// `INFO_IPADDRESS_V3`.
const INFO_IPADDRESS_V3: u32 = 9;

/// XDR, big-endian and padded to four bytes.
#[derive(Default)]
struct Xdr(Vec<u8>);

impl Xdr {
    fn u32(&mut self, n: u32) {
        self.0.extend_from_slice(&n.to_be_bytes());
    }
    fn opaque(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        let pad = (4 - b.len() % 4) % 4;
        self.0.extend(std::iter::repeat_n(0, pad));
    }
    /// An optional value that is absent.
    fn none(&mut self) {
        self.u32(0);
    }
}

/// The RPCI request reporting `nics`.
pub fn request(nics: &[Nic]) -> Vec<u8> {
    let nics = &nics[..nics.len().min(MAX_NICS)];
    let mut x = Xdr::default();
    x.u32(3); // version
    x.u32(1); // the v3 record is present
    x.u32(nics.len() as u32);
    for nic in nics {
        x.opaque(nic.mac.as_bytes());
        x.u32(nic.addresses.len() as u32);
        for (ip, prefix) in &nic.addresses {
            let (kind, bytes) = match ip {
                IpAddr::V4(a) => (1, a.octets().to_vec()),
                IpAddr::V6(a) => (2, a.octets().to_vec()),
            };
            x.u32(kind);
            x.opaque(&bytes);
            x.u32(u32::from(*prefix));
            x.none(); // origin
            x.u32(1); // status present:
            x.u32(1); // IAS_PREFERRED
        }
        for _ in 0..4 {
            x.none(); // DNS, WINS, DHCPv4, DHCPv6
        }
    }
    x.u32(0); // routes
    for _ in 0..4 {
        x.none(); // DNS, WINS, DHCPv4, DHCPv6
    }
    [
        format!("SetGuestInfo  {INFO_IPADDRESS_V3} ").into_bytes(),
        x.0,
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_nic_with_one_address_in_xdr() {
        let r = request(&[Nic {
            mac: "02:54:aa:bb:cc:00".into(),
            addresses: vec![("10.0.2.15".parse().unwrap(), 24)],
        }]);
        let head = b"SetGuestInfo  9 ";
        assert!(r.starts_with(head));
        let words: Vec<u32> = r[head.len()..]
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        let mac = u32::from_be_bytes(*b"02:5");
        assert_eq!(
            &words[..5],
            &[3, 1, 1, 17, mac],
            "version, v3, one NIC, the MAC's length"
        );
        // The MAC's 17 bytes take 5 words (padded); then one address.
        let after = &words[4 + 5..];
        assert_eq!(
            after,
            &[
                1, // one address
                1,
                4,
                0x0a00_020f, // IPv4, 4 bytes, 10.0.2.15
                24,
                0,
                1,
                1, // prefix, no origin, status IAS_PREFERRED
                0,
                0,
                0,
                0, // the NIC's optional records
                0, // no routes
                0,
                0,
                0,
                0, // the optional records
            ]
        );
        // No more than 16 NICs.
        let many: Vec<Nic> = (0..20)
            .map(|i| Nic {
                mac: format!("02:00:00:00:00:{i:02x}"),
                addresses: vec![],
            })
            .collect();
        let r = request(&many);
        assert_eq!(&r[head.len() + 8..head.len() + 12], &16u32.to_be_bytes());
    }
}
