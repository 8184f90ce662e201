//! What the host and the containerVM agree on about the VM itself.

/// The kernel command line, in bootstrap.iso and on the `-kernel` path: VIC's (kernel messages
/// to the debug port, COM2), with `panic=-1` so that a kernel panic ends the VM instead of
/// leaving it hung.
pub const CMDLINE: &str = "loglevel=3 console=ttyS1,115200n8 console=tty0 quiet panic=-1";

/// The label of the container's disk (VIC's `ScratchDiskLabel`).
pub const CONTAINERFS_LABEL: &str = "containerfs";

/// The virtio-serial port a QEMU host serves guestinfo on.
pub const GUESTINFO_PORT: &str = "org.tether.guestinfo";
