//! The terminal of the user running `vch attach`: raw mode and window size.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};

use nix::sys::termios::{self, SetArg, Termios};

nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);

/// (columns, rows) of the terminal on `fd`.
pub fn window_size(fd: &impl AsFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which points at a live local.
    unsafe { tiocgwinsz(fd.as_fd().as_raw_fd(), &mut ws) }.ok()?;
    Some((ws.ws_col, ws.ws_row))
}

/// Raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> nix::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}
