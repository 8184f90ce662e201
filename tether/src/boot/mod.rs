//! Boot: what makes a root for the container and keeps PID 1's house. The bootstrap stage (the
//! tether as `/init` of the initramfs) finds the container's disk, loads the kernel modules the
//! devices present need, mounts the disk and moves the process's root into it ([`stage`],
//! [`disk`], [`modules`]); PID 1's own mounts, limits, `lo` and power-off are in [`pid1`].
//!
//! Owns: kernel modules, the disk search, the switch of root, PID 1's mounts and limits.
//! Uses: `sys` (system calls, device events), `gate` (it opens the launch gate). Must not touch
//! sessions, guestinfo or the attach line: what the rest of the tether needs from here (the gate's
//! outcome, the late modules' priority) it gets through [`crate::gate::Gate`] and functions the
//! caller wires in.

pub mod disk;
pub mod modules;
pub mod pid1;
pub mod stage;

/// A step of the bootstrap stage, on the debug port.
fn say(line: &str) {
    tracing::info!("bootstrap: {line}");
}

pub use modules::{hurry_late, late_loading, start_late, LATE_IDLE_AFTER_LAUNCH};
pub use stage::{early_mounts, switch_root_then, Settings};
