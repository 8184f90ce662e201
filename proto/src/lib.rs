//! What the tether (in the containerVM) and the host side speak: VIC's guestinfo key format and
//! config model, and the transports that carry guestinfo.

pub mod addr;
pub mod config;
pub mod extraconfig;
pub mod guestinfo;
pub mod handshake;
pub mod iolog;
pub mod modindex;
pub mod rpc;
pub mod signal;
pub mod ssh;
pub mod vm;
