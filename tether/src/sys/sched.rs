//! A thread's scheduling policy.
#![allow(unsafe_code)]

/// The calling thread's id.
pub fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// Puts thread `tid` in `SCHED_IDLE` (it runs only when nothing else wants the CPU), or back in
/// `SCHED_OTHER`. A raw system call: musl's `sched_setscheduler` always fails with ENOSYS.
pub fn set_idle(tid: i32, idle: bool) -> std::io::Result<()> {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // The kernel's struct sched_param is one int (musl's has more fields, which it ignores).
    let priority: libc::c_int = 0;
    // SAFETY: `priority` is a valid struct sched_param living across the call, which only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            tid,
            policy,
            &priority as *const libc::c_int,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The policy of thread `tid` of this process, from /proc (field 41 of `stat`).
pub fn policy(tid: i32) -> std::io::Result<i32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    after
        .split_whitespace()
        .nth(41 - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no policy in {stat:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_goes_idle_and_back() {
        std::thread::spawn(|| {
            let me = gettid();
            assert_eq!(policy(me).unwrap(), libc::SCHED_OTHER);
            set_idle(me, true).unwrap();
            assert_eq!(policy(me).unwrap(), libc::SCHED_IDLE);
            // Back to normal needs CAP_SYS_NICE (or RLIMIT_NICE), which the tether has as PID 1.
            if nix::unistd::geteuid().is_root() {
                set_idle(me, false).unwrap();
                assert_eq!(policy(me).unwrap(), libc::SCHED_OTHER);
            }
        })
        .join()
        .unwrap();
    }
}
