//! What the tether (in the containerVM) and the host side of this system agree on: VIC's guestinfo
//! key format and config model, the transports that carry guestinfo, the serial handshake, the
//! output log's framing, signal names, addresses, and what the boot media and the guest share.
//! SSH-2 itself is the `tether-ssh` crate (`ssh/`), which knows nothing of VIC.

pub mod addr;
pub mod config;
pub mod extraconfig;
pub mod guestinfo;
pub mod handshake;
pub mod iolog;
pub mod modindex;
pub mod rpc;
pub mod signal;
pub mod vix;
pub mod vm;
