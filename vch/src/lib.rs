//! `vch`: plays the VCH's part for containerVMs under QEMU/KVM and for the tether in process mode.

pub mod attach;
pub mod bridge;
pub mod cli;
pub mod commands;
pub mod config_cmd;
pub mod container;
pub mod docker;
pub mod forward;
pub mod front;
pub mod guestinfo_server;
pub mod image;
pub mod logs;
pub mod manage;
pub mod network;
pub mod output;
pub mod qcow2;
pub mod supervisor;
pub mod sys;
pub mod vm;
pub mod volume;
