//! Terminal ioctls.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

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

/// A terminal's window size as (columns, rows).
pub fn window_size(fd: &impl AsFd) -> nix::Result<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at a live local.
    unsafe { tiocgwinsz(fd.as_fd().as_raw_fd(), &mut ws) }?;
    Ok((ws.ws_col, ws.ws_row))
}
