//! Networking (issue 14, under way): the hostname, `/etc/hosts` and `resolv.conf` ([`etc`]), the
//! NICs found by PCI slot ([`slot`]) and renamed, addresses (static or DHCP) and routes, from VIC's
//! endpoint keys. Built so far: the container's identity ([`identity`]: hostname, hosts and
//! resolv.conf, applied in the VM before the launch) and the slot's interface (not yet used).
//!
//! Will own: network interfaces, the tether's copies of `/etc/hosts` and `resolv.conf`, the DHCP
//! client. May use: `sys`, `guestinfo` (to write the assigned addresses back). Must not touch
//! sessions: the wiring sets the network up before the primary's launch and tells it the outcome.

pub mod etc;
pub mod identity;
pub mod slot;
