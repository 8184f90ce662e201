//! fork + exec, with everything the child needs done between the two: a new session, the
//! controlling terminal, stdio, user and groups, working directory, default signal handling.
//!
//! We fork ourselves rather than use `std::process::Command` because one reaper owns `waitpid(-1)`:
//! std waits for a child whose exec failed and would find it already reaped. The child reports a
//! failure through a close-on-exec pipe as (stage, errno); success closes the pipe unwritten.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// What to run and how.
pub struct SpawnSpec {
    /// The resolved executable.
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub dir: Option<CString>,
    /// uid, gid and supplementary groups; `None` keeps the tether's.
    pub user: Option<(u32, u32, Vec<u32>)>,
    /// The descriptors that become the child's 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// Make fd 0 (a pty slave) the controlling terminal of the new session.
    pub controlling_tty: bool,
}

/// Where in the child a launch failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Setsid,
    Stdio,
    ControllingTty,
    Groups,
    Gid,
    Uid,
    Chdir,
    Exec,
}

impl Stage {
    fn from_u8(b: u8) -> Self {
        match b {
            0 => Stage::Setsid,
            1 => Stage::Stdio,
            2 => Stage::ControllingTty,
            3 => Stage::Groups,
            4 => Stage::Gid,
            5 => Stage::Uid,
            6 => Stage::Chdir,
            _ => Stage::Exec,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpawnError {
    #[error("fork: {0}")]
    Fork(Errno),
    #[error("{stage:?}: {errno}")]
    Child { stage: Stage, errno: Errno },
}

/// Forks and execs `spec`. Returns the child's pid once exec has succeeded.
///
/// The caller must make sure the child's exit is collected (the reaper does), including after a
/// failure, when the child has already exited or is about to.
pub fn spawn(spec: &SpawnSpec) -> Result<Pid, SpawnError> {
    // Everything the child touches is prepared here: after fork only async-signal-safe calls.
    let argv = null_terminated(&spec.argv);
    let envp = null_terminated(&spec.envp);
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Fork)?;
    let groups: Vec<libc::gid_t> = spec.user.as_ref().map(|u| u.2.clone()).unwrap_or_default();

    // SAFETY: the child only makes async-signal-safe system calls on memory prepared above, and
    // leaves through execve or _exit; it never returns into Rust code of this process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Fork(Errno::last()));
    }
    if pid == 0 {
        // SAFETY: we are the child of fork(); see child().
        unsafe { child(spec, &argv, &envp, &groups, write_end.as_raw_fd()) }
    }
    drop(write_end);
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        match nix::unistd::read(&read_end, &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if got == report.len() {
        let errno = i32::from_le_bytes([report[1], report[2], report[3], report[4]]);
        return Err(SpawnError::Child {
            stage: Stage::from_u8(report[0]),
            errno: Errno::from_raw(errno),
        });
    }
    Ok(Pid::from_raw(pid))
}

fn null_terminated(items: &[CString]) -> Vec<*const libc::c_char> {
    items
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The child side. Never returns.
///
/// # Safety
/// Must only be called in the child of `fork()`, with pointers that stay valid (they were built
/// before the fork and this process image is not otherwise touched).
unsafe fn child(
    spec: &SpawnSpec,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    groups: &[libc::gid_t],
    report: RawFd,
) -> ! {
    let fail = |stage: Stage| -> ! {
        let errno = Errno::last_raw();
        let mut msg = [0u8; 5];
        msg[0] = stage as u8;
        msg[1..].copy_from_slice(&errno.to_le_bytes());
        // SAFETY: write and _exit are async-signal-safe; `msg` is on our stack.
        unsafe {
            libc::write(report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    // SAFETY: plain system calls on descriptors and memory owned by this child, which ends in
    // execve or _exit.
    unsafe {
        // Default signal handling and an empty mask: the tether ignores SIGPIPE and blocks others.
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        if libc::setsid() < 0 {
            fail(Stage::Setsid);
        }
        for (target, &fd) in spec.stdio.iter().enumerate() {
            let target = target as RawFd;
            if fd == target {
                // dup2 onto itself is a no-op that would leave close-on-exec set.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    fail(Stage::Stdio);
                }
            } else if libc::dup2(fd, target) < 0 {
                fail(Stage::Stdio);
            }
        }
        if spec.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail(Stage::ControllingTty);
        }
        if let Some((uid, gid, _)) = spec.user {
            if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                fail(Stage::Groups);
            }
            if libc::setgid(gid) < 0 {
                fail(Stage::Gid);
            }
            if libc::setuid(uid) < 0 {
                fail(Stage::Uid);
            }
        }
        if let Some(dir) = &spec.dir {
            if libc::chdir(dir.as_ptr()) < 0 {
                fail(Stage::Chdir);
            }
        }
        libc::execve(spec.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(Stage::Exec)
    }
}

/// A pipe whose both ends are close-on-exec.
pub fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}
