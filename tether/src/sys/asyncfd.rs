//! Registering owned descriptors with the async runtime.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

/// Registers `fd` (already non-blocking) for readiness events.
pub fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open and refers to the same description until it is dropped, which
    // happens only when the AsyncFd is dropped or gives it back.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}
