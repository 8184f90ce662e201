//! `vch`: plays the VCH's part for containerVMs under QEMU/KVM and for the tether in process mode.

pub mod attach;
pub mod guestinfo_server;
pub mod logs;
pub mod sys;
