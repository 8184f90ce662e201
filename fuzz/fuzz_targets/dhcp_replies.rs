//! What a DHCP server (or anyone on the network) sends the tether's client: the IP/UDP framing
//! of the packet socket, the reply matched to our transaction and MAC, and the lease read from
//! it (addresses, mask, router, DNS, times).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::net::dhcp;

const MAC: [u8; 6] = [0x00, 0x50, 0x56, 0x12, 0x34, 0x56];

fuzz_target!(|data: &[u8]| {
    let payload = dhcp::udp_payload(data, 68).unwrap_or(data);
    let xid = 0x1234_5678;
    if let Some(reply) = dhcp::reply_to(payload, xid, &MAC) {
        let _ = reply.server();
        let _ = dhcp::lease_from(&reply);
    }
});
