//! Serial ports: opened without becoming our controlling terminal, raw, 8N1, 115200 baud.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nix::sys::termios::{self, SetArg};

/// Opens `path` for reading and writing; when it is a terminal, makes it raw (no echo, no line
/// discipline, no flow-control translation) at 115200 baud.
pub fn open_raw(path: &Path, write_only: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(!write_only)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    if nix::unistd::isatty(&file).unwrap_or(false) {
        let mut t = termios::tcgetattr(&file)?;
        termios::cfmakeraw(&mut t);
        // The speed lives in the CBAUD bits of c_cflag on Linux. Set there rather than through
        // cfsetspeed, whose versioned glibc symbol a static glibc build cannot link.
        t.control_flags &= !termios::ControlFlags::CBAUD;
        t.control_flags |= termios::ControlFlags::from_bits_retain(libc::B115200);
        // No modem-control hang-ups, and the receiver on.
        t.control_flags |= termios::ControlFlags::CLOCAL | termios::ControlFlags::CREAD;
        t.control_flags &= !termios::ControlFlags::CRTSCTS;
        termios::tcsetattr(&file, SetArg::TCSANOW, &t)?;
    }
    Ok(file)
}

/// Whether the UART behind `/dev/NAME` is there: the 8250 driver registers four ports whether or
/// not the machine has them, and tells a missing one by its type 0 (`PORT_UNKNOWN`).
pub fn uart_present(sys: &Path, name: &str) -> bool {
    std::fs::read_to_string(sys.join("class/tty").join(name).join("type"))
        .is_ok_and(|t| !matches!(t.trim(), "" | "0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uart_is_present_by_its_type() {
        let t = tempfile::tempdir().unwrap();
        for (name, kind) in [("ttyS0", "4\n"), ("ttyS3", "0\n")] {
            let d = t.path().join("class/tty").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), kind).unwrap();
        }
        assert!(uart_present(t.path(), "ttyS0"));
        assert!(!uart_present(t.path(), "ttyS3"), "type 0: no UART there");
        assert!(!uart_present(t.path(), "ttyS9"));
    }
}
