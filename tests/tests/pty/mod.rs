//! A program run on a pseudo-terminal of its own (its controlling terminal), as a user's shell
//! runs `vch run -it`: the test types, reads the screen and resizes the window.
#![allow(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};

pub struct Terminal {
    master: std::fs::File,
    child: Child,
    screen: Arc<Mutex<Vec<u8>>>,
}

fn winsize((rows, cols): (u16, u16)) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Terminal {
    pub fn spawn(mut cmd: Command, size: (u16, u16)) -> Self {
        let pty = openpty(Some(&winsize(size)), None).unwrap();
        let slave: OwnedFd = pty.slave;
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: the closure runs in the child between fork and exec and calls only setsid(2)
        // and ioctl(2), both async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let mut answer = master.try_clone().unwrap();
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                // A terminal answers a cursor-position query (busybox's line editor asks).
                if buf[..n].windows(4).any(|w| w == b"\x1b[6n") {
                    let _ = answer.write_all(b"\x1b[1;1R");
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self {
            master,
            child,
            screen,
        }
    }

    pub fn write(&mut self, b: &[u8]) {
        self.master.write_all(b).unwrap();
    }

    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    /// Waits for `what` on the screen (and forgets the screen up to it).
    pub fn wait_for(&self, what: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            {
                let mut s = self.screen.lock().unwrap();
                let text = String::from_utf8_lossy(&s).into_owned();
                if let Some(at) = text.find(what) {
                    let end = at + what.len();
                    let end = end.min(s.len());
                    s.drain(..end);
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn expect(&self, what: &str, limit: Duration, context: &dyn Fn() -> String) {
        assert!(
            self.wait_for(what, limit),
            "{what:?} never appeared; screen: {:?}\n{}",
            self.seen(),
            context()
        );
    }

    /// Types `input` again and again (each 2 s) until `what` appears; fails after `limit`.
    pub fn type_until(&mut self, input: &[u8], what: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            self.write(input);
            if self.wait_for(what, Duration::from_secs(2)) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "{what:?} never appeared: {}",
                self.seen()
            );
        }
    }

    /// Changes the window size: the kernel sends SIGWINCH to the program.
    pub fn resize(&self, size: (u16, u16)) {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which is valid for the
        // call; the descriptor is our open master.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ");
    }

    /// The program's exit status, within `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}
