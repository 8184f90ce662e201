//! Terminal ioctls.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// Sets a terminal's window size (columns, rows, and pixel width and height).
pub fn set_window_size(
    fd: &impl AsFd,
    cols: u16,
    rows: u16,
    width: u16,
    height: u16,
) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: width,
        ws_ypixel: height,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points at a live local.
    unsafe { tiocswinsz(fd.as_fd().as_raw_fd(), &ws) }.map(drop)
}
