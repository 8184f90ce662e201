//! The one owner of `waitpid(-1)`. Children are spawned through [`Reaper::spawn`], which holds
//! the registry lock from fork to registration, so an exit is always matched to its session even
//! when the child dies at once; every other exit is an orphan (or a failed launch) and is counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal { signal: i32, core_dumped: bool },
}

impl Exit {
    /// The exit status docker reports: the code, or 128 + the signal number.
    pub fn status(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal { signal, .. } => 128 + signal,
        }
    }
}

#[derive(Default)]
struct Registry {
    waiting: HashMap<i32, oneshot::Sender<Exit>>,
    orphans: u64,
}

/// Shared by the spawners and the reaping task.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<Registry>>,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the map inconsistent; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `spawn` (which forks and returns the child's pid) with the registry locked, and
    /// registers the child before anyone can look its exit up.
    pub fn spawn<E>(
        &self,
        spawn: impl FnOnce() -> Result<i32, E>,
    ) -> Result<(i32, oneshot::Receiver<Exit>), E> {
        let mut reg = self.lock();
        let pid = spawn()?;
        let (tx, rx) = oneshot::channel();
        reg.waiting.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Collects every child that has exited. Returns how many were collected.
    pub fn reap_all(&self) -> usize {
        let mut n = 0;
        loop {
            let status = match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    return n;
                }
                Ok(s) => s,
            };
            let (pid, exit) = match status {
                WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
                WaitStatus::Signaled(pid, sig, core_dumped) => (
                    pid,
                    Exit::Signal {
                        signal: sig as i32,
                        core_dumped,
                    },
                ),
                // Stops and continues are not exits (and are not asked for).
                _ => continue,
            };
            n += 1;
            let mut reg = self.lock();
            match reg.waiting.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    reg.orphans += 1;
                    tracing::debug!(
                        pid = pid.as_raw(),
                        ?exit,
                        "reaped an orphan (or a failed launch)"
                    );
                }
            }
        }
    }

    /// How many exits did not belong to a registered child.
    pub fn orphans_reaped(&self) -> u64 {
        self.lock().orphans
    }

    /// Starts reaping on every SIGCHLD. Call it, inside the runtime, before the first spawn: the
    /// signal is watched from the moment this returns.
    pub fn start(self) -> tokio::task::JoinHandle<()> {
        let sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child());
        tokio::spawn(async move {
            let mut sigchld = match sigchld {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot watch SIGCHLD ({e}); reaping every 100 ms instead");
                    loop {
                        self.reap_all();
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            };
            // Whatever exited before we were watching (zombies left over from switch_root).
            self.reap_all();
            while sigchld.recv().await.is_some() {
                self.reap_all();
            }
        })
    }
}
