//! Process creation (a vfork-style clone, then exec), with everything the child needs done between
//! the two: a new session, the controlling terminal, stdio, user and groups, working directory,
//! default signal handling.
//!
//! We start processes ourselves rather than use `std::process::Command` because one reaper owns
//! `waitpid(-1)`: std waits for a child whose exec failed and would find it already reaped. The
//! child reports a failure through a close-on-exec pipe as (stage, errno); success closes the pipe
//! unwritten.
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

/// The child's stack until it execs: it runs only the system calls of [`child`], in a few small
/// frames.
const CHILD_STACK: usize = 64 * 1024;

/// What the child reads, prepared by the parent before the clone.
struct ChildArgs<'a> {
    spec: &'a SpawnSpec,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    groups: &'a [libc::gid_t],
    report: RawFd,
}

/// Starts `spec` in a new process and returns its pid once exec has succeeded.
///
/// The child is a `clone(CLONE_VM | CLONE_VFORK)` of this process, as `posix_spawn` makes one: it
/// runs on a stack of its own in this process's memory, and this thread waits until it has
/// exec'd or exited. A `fork` would copy the page tables and write-protect every page of the
/// tether, and the tether would then fault on every page it writes (each buffer it reads output
/// into) after every launch: with a hundred sessions starting, that was most of the tether's
/// page faults. The price is that the child may only make raw system calls on memory prepared
/// here: no allocation, no lock, and none of libc's wrappers that keep process-wide state (musl's
/// `setuid` and `setgroups` would try to reach the tether's other threads).
///
/// The caller must make sure the child's exit is collected (the reaper does), including after a
/// failure, when the child has already exited.
pub fn spawn(spec: &SpawnSpec) -> Result<Pid, SpawnError> {
    let argv = null_terminated(&spec.argv);
    let envp = null_terminated(&spec.envp);
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Fork)?;
    let groups: Vec<libc::gid_t> = spec.user.as_ref().map(|u| u.2.clone()).unwrap_or_default();
    let args = ChildArgs {
        spec,
        argv: &argv,
        envp: &envp,
        groups: &groups,
        report: write_end.as_raw_fd(),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its end, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let pid = {
        // No handler of the tether's may run in the child, which shares its memory: every signal
        // is blocked in this thread across the clone; the child sets every handler to the
        // default before it unblocks them.
        let _blocked = BlockedSignals::all();
        // SAFETY: `child_main` gets `args`, which outlives the child's use of it (this thread
        // waits until the child has exec'd or exited: CLONE_VFORK), runs on `stack`, which does
        // too, and only makes raw system calls before it execs or exits.
        unsafe {
            libc::clone(
                child_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                std::ptr::from_ref(&args).cast_mut().cast(),
            )
        }
    };
    if pid < 0 {
        return Err(SpawnError::Fork(Errno::last()));
    }
    drop(stack);
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

/// Every signal blocked in this thread while it lives; the mask before is restored after. Raw,
/// as `posix_spawn` does it: libc's `sigfillset` leaves out the signals libc keeps for itself.
struct BlockedSignals(u64);

impl BlockedSignals {
    fn all() -> Self {
        let all: u64 = !0;
        let mut old: u64 = 0;
        // SAFETY: rt_sigprocmask on this thread with two 8-byte masks we own (the kernel's sigset
        // size on Linux).
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                &mut old as *mut u64,
                8usize,
            );
        }
        Self(old)
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: as in `all`; the mask is the one this thread had.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &self.0 as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
}

fn null_terminated(items: &[CString]) -> Vec<*const libc::c_char> {
    items
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The child's entry, on its own stack.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` passed, alive until this child execs or
    // exits; this is the child of `clone(CLONE_VM | CLONE_VFORK)`.
    unsafe {
        let args = &*(arg as *const ChildArgs<'_>);
        child(args)
    }
}

/// A raw system call: its result, or the errno it failed with. (libc's `syscall` sets errno in
/// the thread-local of the thread the child was cloned from, which waits meanwhile.)
///
/// # Safety
/// The arguments must be what system call `n` expects.
unsafe fn sys(n: libc::c_long, a: [usize; 4]) -> Result<libc::c_long, i32> {
    // SAFETY: the caller's.
    let r = unsafe { libc::syscall(n, a[0], a[1], a[2], a[3]) };
    if r < 0 {
        Err(Errno::last_raw())
    } else {
        Ok(r)
    }
}

/// The child side: everything between the clone and the exec, in raw system calls only (see
/// [`spawn`]). Never returns.
///
/// # Safety
/// Must only be called in the child of `clone(CLONE_VM | CLONE_VFORK)` made by [`spawn`], with
/// every signal blocked.
unsafe fn child(args: &ChildArgs<'_>) -> ! {
    let spec = args.spec;
    let fail = |stage: Stage, errno: i32| -> ! {
        let mut msg = [0u8; 5];
        msg[0] = stage as u8;
        msg[1..].copy_from_slice(&errno.to_le_bytes());
        // SAFETY: write and exit_group on our own descriptor and stack.
        unsafe {
            let _ = sys(
                libc::SYS_write,
                [args.report as usize, msg.as_ptr() as usize, msg.len(), 0],
            );
            loop {
                let _ = sys(libc::SYS_exit_group, [127, 0, 0, 0]);
            }
        }
    };
    // SAFETY: plain system calls on descriptors and memory this child may use; it ends in execve
    // or exit_group.
    unsafe {
        // Default handling for every signal (a handler of the tether's must never run here, and
        // an ignored signal would stay ignored across exec: the tether ignores SIGPIPE), then an
        // empty mask, as a process started by a shell has.
        let default = [0usize; 4];
        for sig in 1..=64usize {
            if sig != libc::SIGKILL as usize && sig != libc::SIGSTOP as usize {
                let _ = sys(
                    libc::SYS_rt_sigaction,
                    [sig, default.as_ptr() as usize, 0, 8],
                );
            }
        }
        let empty: u64 = 0;
        let _ = sys(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_SETMASK as usize,
                &empty as *const u64 as usize,
                0,
                8,
            ],
        );
        if let Err(e) = sys(libc::SYS_setsid, [0; 4]) {
            fail(Stage::Setsid, e);
        }
        for (target, &fd) in spec.stdio.iter().enumerate() {
            let r = if fd == target as RawFd {
                // dup3 onto itself is refused; this one only has to lose close-on-exec.
                sys(libc::SYS_fcntl, [fd as usize, libc::F_SETFD as usize, 0, 0])
            } else {
                sys(libc::SYS_dup3, [fd as usize, target, 0, 0])
            };
            if let Err(e) = r {
                fail(Stage::Stdio, e);
            }
        }
        if spec.controlling_tty {
            if let Err(e) = sys(libc::SYS_ioctl, [0, libc::TIOCSCTTY as usize, 0, 0]) {
                fail(Stage::ControllingTty, e);
            }
        }
        if let Some((uid, gid, _)) = spec.user {
            // Raw, for this thread alone: the child has no other.
            if let Err(e) = sys(
                libc::SYS_setgroups,
                [args.groups.len(), args.groups.as_ptr() as usize, 0, 0],
            ) {
                fail(Stage::Groups, e);
            }
            if let Err(e) = sys(libc::SYS_setgid, [gid as usize, 0, 0, 0]) {
                fail(Stage::Gid, e);
            }
            if let Err(e) = sys(libc::SYS_setuid, [uid as usize, 0, 0, 0]) {
                fail(Stage::Uid, e);
            }
        }
        if let Some(dir) = &spec.dir {
            if let Err(e) = sys(libc::SYS_chdir, [dir.as_ptr() as usize, 0, 0, 0]) {
                fail(Stage::Chdir, e);
            }
        }
        let e = sys(
            libc::SYS_execve,
            [
                spec.path.as_ptr() as usize,
                args.argv.as_ptr() as usize,
                args.envp.as_ptr() as usize,
                0,
            ],
        )
        .err()
        .unwrap_or(libc::EINVAL);
        fail(Stage::Exec, e)
    }
}

/// A pipe whose both ends are close-on-exec.
pub fn pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// Runs `argv` as `spawn` starts it, with `user` and `dir`: its stdout, or the spawn's error.
    fn run(
        argv: &[&str],
        user: Option<(u32, u32, Vec<u32>)>,
        dir: &str,
    ) -> Result<String, SpawnError> {
        let (out_r, out_w) = pipe().unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let spec = SpawnSpec {
            path: CString::new(argv[0]).unwrap(),
            argv: argv.iter().map(|a| CString::new(*a).unwrap()).collect(),
            envp: vec![CString::new("PATH=/usr/bin:/bin").unwrap()],
            dir: Some(CString::new(dir).unwrap()),
            user,
            stdio: [devnull.as_raw_fd(), out_w.as_raw_fd(), out_w.as_raw_fd()],
            controlling_tty: false,
        };
        let result = spawn(&spec);
        drop(out_w);
        let mut out = String::new();
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        if let Ok(pid) = result {
            // Another test's reaper may have collected it already.
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        result.map(|_| out)
    }

    fn field<'a>(status: &'a str, name: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .trim()
    }

    fn this_threads_mask() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        u64::from_str_radix(field(&status, "SigBlk:"), 16).unwrap()
    }

    #[test]
    fn the_child_starts_with_default_signals_in_a_session_of_its_own() {
        // This thread blocks a signal (the test harness ignores SIGPIPE already): neither reaches
        // the child, and the thread's own mask is as it was.
        let mut usr1 = nix::sys::signal::SigSet::empty();
        usr1.add(nix::sys::signal::Signal::SIGUSR1);
        usr1.thread_block().unwrap();
        let before = this_threads_mask();
        assert_ne!(before & (1 << (libc::SIGUSR1 - 1)), 0);
        let status = run(&["/bin/cat", "/proc/self/status"], None, "/").unwrap();
        let after = this_threads_mask();
        usr1.thread_unblock().unwrap();
        assert_eq!(after, before, "the spawning thread's mask is restored");
        assert_eq!(field(&status, "SigBlk:"), "0000000000000000");
        assert_eq!(field(&status, "SigIgn:"), "0000000000000000");
        let stat = run(&["/bin/cat", "/proc/self/stat"], None, "/").unwrap();
        // pid (comm) state ppid pgrp session: a session leader's session is its pid.
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let pid = stat.split_whitespace().next().unwrap();
        assert_eq!((f[2], f[3]), (pid, pid), "{stat}");
    }

    #[test]
    fn the_child_runs_in_its_dir_and_failures_name_their_stage() {
        assert_eq!(run(&["/bin/pwd"], None, "/proc").unwrap(), "/proc\n");
        assert_eq!(
            run(&["/bin/pwd"], None, "/no/such/dir"),
            Err(SpawnError::Child {
                stage: Stage::Chdir,
                errno: Errno::ENOENT
            })
        );
        assert_eq!(
            run(&["/no/such/binary"], None, "/"),
            Err(SpawnError::Child {
                stage: Stage::Exec,
                errno: Errno::ENOENT
            })
        );
    }

    /// This thread's minor page faults so far.
    fn faults() -> i64 {
        use nix::sys::resource::{getrusage, UsageWho};
        getrusage(UsageWho::RUSAGE_THREAD)
            .unwrap()
            .minor_page_faults()
    }

    #[test]
    fn a_launch_leaves_the_tethers_memory_writable() {
        // After a fork, every page the tether wrote next faulted (copy-on-write): 1 024 for
        // these 4 MiB. Sharing the memory with a child that only execs costs none.
        let mut buf = vec![1u8; 4 << 20];
        run(&["/bin/true"], None, "/").unwrap();
        let before = faults();
        for page in buf.chunks_mut(4096) {
            page[0] = 2;
        }
        let faulted = faults() - before;
        assert!(
            faulted < 64,
            "{faulted} page faults writing 1 024 pages after a launch"
        );
        assert!(buf.iter().step_by(4096).all(|&b| b == 2));
    }

    #[test]
    fn the_child_takes_the_user_and_groups_and_the_tether_keeps_its_own() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing user needs root");
            return;
        }
        let groups = nix::unistd::getgroups().unwrap();
        let status = run(
            &["/bin/cat", "/proc/self/status"],
            Some((65534, 65534, vec![65534, 100])),
            "/",
        )
        .unwrap();
        assert_eq!(field(&status, "Uid:"), "65534\t65534\t65534\t65534");
        assert_eq!(field(&status, "Gid:"), "65534\t65534\t65534\t65534");
        assert_eq!(field(&status, "Groups:"), "100 65534");
        // The child's credentials were its own thread's: this process's are unchanged.
        assert!(nix::unistd::geteuid().is_root());
        assert_eq!(nix::unistd::getgid().as_raw(), 0);
        assert_eq!(nix::unistd::getgroups().unwrap(), groups);
    }
}
