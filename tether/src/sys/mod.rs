//! System calls the tether makes, behind small safe functions. The only `unsafe` is in
//! [`spawn`] (fork/exec), [`ioctl`] (terminal window size, interface flags), [`packet`] (link-layer
//! sockets for DHCP and ARP), [`xattr`] (extended attributes), [`asyncfd`] (runtime registration)
//! and [`sched`] (a thread's scheduling policy).

pub mod asyncfd;
pub mod ioctl;
pub mod packet;
pub mod sched;
pub mod serial;
pub mod spawn;
pub mod uevent;
pub mod xattr;

use std::os::fd::{AsFd, AsRawFd as _, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A pseudo-terminal pair, both ends close-on-exec from the start (no other child inherits them).
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

pub fn open_pty() -> nix::Result<Pty> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(Pty {
        master: master.into(),
        slave,
    })
}

/// Puts a descriptor in non-blocking mode (for the async runtime).
pub fn set_nonblocking(fd: &impl AsFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Sends signal `sig` to process `pid`; a process that is already gone is not an error.
pub fn signal_process(pid: i32, sig: i32) -> nix::Result<()> {
    let sig = Signal::try_from(sig)?;
    match kill(Pid::from_raw(pid), sig) {
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Sends signal `sig` to process group `pgid`; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: i32) -> nix::Result<()> {
    let sig = Signal::try_from(sig)?;
    match killpg(Pid::from_raw(pgid), sig) {
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// A stream socket connected to `port` of vsock context `cid` (2 is the host).
pub fn vsock_connect(cid: u32, port: u32) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, VsockAddr};
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))?;
    Ok(fd)
}

/// Makes this process adopt orphans (what PID 1 does anyway).
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}
