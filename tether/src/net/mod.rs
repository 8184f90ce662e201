//! Networking (issue 14, not built yet): the hostname, `/etc/hosts` and `resolv.conf`, the NICs
//! found by PCI slot and renamed, addresses (static or DHCP) and routes, from VIC's endpoint keys.
//!
//! Will own: network interfaces, the tether's copies of `/etc/hosts` and `resolv.conf`, the DHCP
//! client. May use: `sys`, `guestinfo` (to write the assigned addresses back). Must not touch
//! sessions: the wiring sets the network up before the primary's launch and tells it the outcome.
