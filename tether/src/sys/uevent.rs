//! The kernel's device events (`NETLINK_KOBJECT_UEVENT`, what udev listens to): the bootstrap
//! stage sleeps on them while drivers probe instead of walking sysfs every few milliseconds,
//! which under emulation took the CPU those probes needed.

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

/// One event: `ACTION`, `SUBSYSTEM`, and `DEVNAME` / `MODALIAS` where the kernel gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub subsystem: String,
    pub devpath: String,
    pub devname: Option<String>,
    pub modalias: Option<String>,
}

/// Parses a kernel uevent datagram: `ACTION@DEVPATH` then `KEY=VALUE` fields, each ended by a
/// NUL. `None` for anything else (udev's own `libudev` messages start otherwise).
pub fn parse(msg: &[u8]) -> Option<Uevent> {
    let mut fields = msg.split(|&b| b == 0).filter(|f| !f.is_empty());
    let head = std::str::from_utf8(fields.next()?).ok()?;
    head.split_once('@')?;
    let mut ev = Uevent::default();
    for f in fields {
        let Ok(f) = std::str::from_utf8(f) else {
            continue;
        };
        let Some((k, v)) = f.split_once('=') else {
            continue;
        };
        match k {
            "ACTION" => ev.action = v.to_string(),
            "SUBSYSTEM" => ev.subsystem = v.to_string(),
            "DEVPATH" => ev.devpath = v.to_string(),
            "DEVNAME" => ev.devname = Some(v.to_string()),
            "MODALIAS" => ev.modalias = Some(v.to_string()),
            _ => {}
        }
    }
    (!ev.action.is_empty()).then_some(ev)
}

/// What [`Uevents::wait`] brings back.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<Uevent>,
    /// The socket's buffer overflowed: some events were lost, so look at sysfs whole.
    pub lost: bool,
}

/// A socket on the kernel's uevent multicast group.
pub struct Uevents {
    fd: OwnedFd,
}

impl Uevents {
    /// Opens and binds it; events from then on queue until read.
    pub fn open() -> nix::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        // Room for a burst of probes; the forced size needs CAP_NET_ADMIN (PID 1 has it).
        let room = 1 << 20;
        if setsockopt(&fd, sockopt::RcvBufForce, &room).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &room);
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 1))?;
        Ok(Self { fd })
    }

    /// Waits at most `timeout` for events, then takes every one queued.
    pub fn wait(&self, timeout: Duration) -> nix::Result<Batch> {
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let mut batch = Batch::default();
        let mut buf = vec![0u8; 8192];
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => batch.events.extend(parse(&buf[..n])),
                Err(nix::errno::Errno::EAGAIN) => return Ok(batch),
                Err(nix::errno::Errno::ENOBUFS) => batch.lost = true,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_kernel_event() {
        let msg = b"add@/devices/pci0000:00/0000:00:03.0/host0/target0:0:0/0:0:0:0/block/sda\0\
ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:03.0/host0/target0:0:0/0:0:0:0/block/sda\0\
SUBSYSTEM=block\0MAJOR=8\0MINOR=0\0DEVNAME=sda\0DEVTYPE=disk\0DISKSEQ=1\0SEQNUM=1234\0";
        let ev = parse(msg).unwrap();
        assert_eq!(ev.action, "add");
        assert_eq!(ev.subsystem, "block");
        assert_eq!(ev.devname.as_deref(), Some("sda"));
        assert_eq!(ev.modalias, None);
        assert!(ev.devpath.ends_with("/block/sda"));

        let msg = b"add@/devices/pci0000:00/0000:00:03.0/host0/target0:0:0/0:0:0:0\0ACTION=add\0\
SUBSYSTEM=scsi\0DEVTYPE=scsi_device\0MODALIAS=scsi:t-0x00\0SEQNUM=7\0";
        let ev = parse(msg).unwrap();
        assert_eq!(ev.modalias.as_deref(), Some("scsi:t-0x00"));
    }

    #[test]
    fn refuses_what_is_not_a_kernel_event() {
        // libudev's messages start with "libudev\0" and a binary header.
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
        assert_eq!(parse(b""), None);
        assert_eq!(
            parse(b"add@/devices/x\0SUBSYSTEM=block\0"),
            None,
            "no ACTION"
        );
        // A field that is not KEY=VALUE, or not UTF-8, is skipped, not fatal.
        let ev = parse(b"remove@/x\0junk\0\xff\xfe=1\0ACTION=remove\0").unwrap();
        assert_eq!(ev.action, "remove");
    }

    #[test]
    fn a_process_can_listen_and_the_wait_ends() {
        // The kernel lets anyone receive uevents; with none coming the wait ends empty.
        let u = match Uevents::open() {
            Ok(u) => u,
            // Some sandboxes have no netlink at all: nothing to check there.
            Err(nix::errno::Errno::EAFNOSUPPORT | nix::errno::Errno::EPROTONOSUPPORT) => return,
            Err(e) => panic!("opening the uevent socket: {e}"),
        };
        let t = std::time::Instant::now();
        u.wait(Duration::from_millis(30)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "the wait is bounded");
    }
}
