//! What the host and the containerVM agree on about the VM itself.

/// The kernel command line, in bootstrap.iso and on the `-kernel` path: VIC's (kernel messages
/// to the debug port, COM2), with `panic=-1` so that a kernel panic ends the VM instead of
/// leaving it hung.
pub const CMDLINE: &str = "loglevel=3 console=ttyS1,115200n8 console=tty0 quiet panic=-1";

/// The label of the container's disk (VIC's `ScratchDiskLabel`).
pub const CONTAINERFS_LABEL: &str = "containerfs";

/// Where a QEMU host serves guestinfo (the framed RPC over a byte stream): COM4. The kernel's
/// built-in 8250 driver has it at once, as the backdoor is there at once on VMware, so the
/// tether reads its config before any module is loaded.
pub const GUESTINFO_SERIAL: &str = "/dev/ttyS3";

/// The virtio-serial port a QEMU host takes `output.log` on. On VMware the output log is COM3;
/// under QEMU every byte through an emulated UART costs the guest CPU, and the same output
/// going out twice (COM1 to attached clients, COM3 to the log) halved the throughput.
pub const OUTPUT_PORT: &str = "org.tether.output";
