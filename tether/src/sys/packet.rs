//! Link-layer sockets on one interface (`AF_PACKET`, `SOCK_DGRAM`: the kernel adds and strips the
//! Ethernet header). The DHCP client talks through one before its interface has an address (a
//! server may answer at the link layer to the address it offers, which no UDP socket would take),
//! and the gratuitous ARP after an address is assigned goes out through one.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd as _, OwnedFd};
use std::time::Duration;

/// IPv4's ethertype.
pub const ETH_P_IP: u16 = 0x0800;
/// ARP's ethertype.
pub const ETH_P_ARP: u16 = 0x0806;

/// A packet socket bound to one interface and one ethertype.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    protocol: u16,
}

fn link_address(ifindex: i32, protocol: u16, to: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data (integers and a byte array); all zeros is valid.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = protocol.to_be();
    sa.sll_ifindex = ifindex;
    if let Some(mac) = to {
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&mac);
    }
    sa
}

impl PacketSocket {
    /// Opens a socket that sends and receives `protocol` frames on interface `ifindex`.
    pub fn open(ifindex: u32, protocol: u16) -> io::Result<Self> {
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        // SAFETY: socket(2) takes no pointers; the result is checked before it is owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(protocol.to_be()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor socket(2) has just returned, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sa = link_address(ifindex, protocol, None);
        // SAFETY: bind(2) reads `size_of::<sockaddr_ll>()` bytes from a live local of that type.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            ifindex,
            protocol,
        })
    }

    /// Sends `payload` (a whole IP packet or ARP message) to every station on the link.
    pub fn send_broadcast(&self, payload: &[u8]) -> io::Result<()> {
        let sa = link_address(self.ifindex, self.protocol, Some([0xff; 6]));
        // SAFETY: sendto(2) reads `payload.len()` bytes from a live slice and the address from a
        // live local of the size given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame's payload into `buf`, waiting at most `timeout`; `None` when none came.
    pub fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        recv_timeout(self.fd.as_fd(), buf, timeout)
    }
}

/// One datagram from `fd` into `buf`, waiting at most `timeout`; `None` when none came.
pub fn recv_timeout(fd: impl AsFd, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = PollTimeout::try_from(timeout.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, ms) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    match nix::sys::socket::recv(
        fd.as_fd().as_raw_fd(),
        buf,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
