//! One session (the container's process or an exec): launch with pipes or a pty, pump its output,
//! collect its exit, and publish every step to guestinfo in a safe order.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tether_proto::config::{SessionConfig, SessionKind};
use tether_proto::iolog::Stream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::chunks;
use super::fanout::{Fanout, Output};
use super::input::{self, InputMsg};
use super::launch::{self, LaunchError};
use super::outlog::OutputLog;
use super::reaper::{Exit, Reaper};
use crate::guestinfo::{self as gi, Guestinfo};
use crate::sys::{self, spawn};

/// Tunables, from the command line.
#[derive(Clone)]
pub struct Settings {
    /// How long after a process exits its output may still drain (descendants holding the pipes).
    pub drain_timeout: Duration,
    /// How long a RunBlock session waits for an attach client's `unblock`.
    pub runblock_timeout: Duration,
    /// Between the stop signal and SIGKILL to the process group.
    pub stop_timeout: Duration,
    /// The container's root, for `/etc/passwd` and `/etc/group`.
    pub root: PathBuf,
    /// The attach line (`tcp:HOST:PORT`, `unix:PATH`, `serial:DEVICE`), if any.
    pub attach: Option<String>,
    /// Opens when the container's root is in place: launches wait for it (in the VM the
    /// bootstrap stage is still finding the disk while the config is read and the host attaches).
    pub root_ready: std::sync::Arc<crate::gate::Gate>,
    /// Called after each launch, whatever its outcome (the VM's wiring lets the late kernel
    /// modules give way for the container's first moments only).
    pub on_launch: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(2),
            runblock_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(10),
            root: PathBuf::from("/"),
            attach: None,
            root_ready: std::sync::Arc::new(crate::gate::Gate::opened()),
            on_launch: None,
        }
    }
}

/// What every session shares.
pub struct Ctx {
    pub reaper: Reaper,
    pub gi: Guestinfo,
    pub log: OutputLog,
    pub settings: Settings,
    /// Told the id of every session whose task has finished.
    pub finished: mpsc::UnboundedSender<String>,
}

impl Ctx {
    /// Queues state to write (in order); a failure is reported in the debug log.
    pub fn publish(&self, what: &str, pairs: Vec<(String, String)>) {
        self.gi.write(what, pairs);
    }
}

/// Launches in flight at once (see [`Session::run`]'s spawn).
static LAUNCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Not launched yet (or waiting for `unblock`).
    Waiting,
    Running {
        pid: i32,
    },
    Exited(Exit),
    Failed(LaunchError),
}

pub struct Session {
    pub id: Arc<str>,
    pub kind: SessionKind,
    config: Mutex<SessionConfig>,
    state: Mutex<State>,
    unblock: Notify,
    unblocked: AtomicBool,
    stopping: AtomicBool,
    /// Output to attached clients.
    pub fanout: Arc<Fanout>,
    /// Input from attached clients.
    input: mpsc::UnboundedSender<InputMsg>,
    /// The terminal: the last size asked for and the pty it applies to, under one lock so that
    /// a change lands whatever its order with the launch.
    tty: Mutex<Tty>,
    /// The process group of the last launch (its leader's pid), kept after the exit.
    pgid: Mutex<Option<i32>>,
}

/// A session's terminal: the window size last asked for (cols, rows, width, height) and the pty
/// master while the process has it.
#[derive(Default)]
struct Tty {
    size: Option<(u16, u16, u16, u16)>,
    master: Option<OwnedFd>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Session {
    pub fn new(id: &str, kind: SessionKind, config: SessionConfig) -> Arc<Self> {
        Arc::new(Self {
            id: id.into(),
            kind,
            config: Mutex::new(config),
            state: Mutex::new(State::Waiting),
            unblock: Notify::new(),
            unblocked: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            fanout: Arc::new(Fanout::default()),
            input: input::start(),
            tty: Mutex::new(Tty::default()),
            pgid: Mutex::new(None),
        })
    }

    pub fn config(&self) -> SessionConfig {
        lock(&self.config).clone()
    }

    /// Takes a newly decoded config (the tether only reads the host's keys from it).
    pub fn update_config(&self, config: SessionConfig) {
        *lock(&self.config) = config;
    }

    pub fn state(&self) -> State {
        lock(&self.state).clone()
    }

    fn set_state(&self, s: State) {
        *lock(&self.state) = s;
    }

    pub fn pid(&self) -> Option<i32> {
        match self.state() {
            State::Running { pid } => Some(pid),
            _ => None,
        }
    }

    /// Releases a RunBlock wait.
    pub fn unblock(&self) {
        self.unblocked.store(true, Ordering::SeqCst);
        self.unblock.notify_waiters();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sends `sig` to the process (not its group). A session not running is not an error.
    pub fn signal(&self, sig: i32) -> nix::Result<()> {
        match self.pid() {
            Some(pid) => sys::signal_process(pid, sig),
            None => Ok(()),
        }
    }

    /// Sends `sig` to the process group (the process is its group's leader).
    pub fn signal_group(&self, sig: i32) -> nix::Result<()> {
        match self.pid() {
            Some(pid) => sys::signal_group(pid, sig),
            None => Ok(()),
        }
    }

    /// Kills whatever is left in the process group of the last launch (descendants that outlived
    /// the process). A group that is gone is not an error.
    pub fn kill_leftovers(&self) {
        if let Some(pgid) = *lock(&self.pgid) {
            if let Err(e) = sys::signal_group(pgid, libc::SIGKILL) {
                tracing::warn!(session = %self.id, "SIGKILL to group {pgid}: {e}");
            }
        }
    }

    /// The stop signal of the config (TERM when unset or unparsable).
    pub fn stop_signal(&self) -> i32 {
        let spec = lock(&self.config).stop_signal.clone();
        if spec.is_empty() {
            return libc::SIGTERM;
        }
        tether_proto::signal::parse(&spec).unwrap_or_else(|e| {
            tracing::warn!(session = %self.id, "{e}; stopping with TERM");
            libc::SIGTERM
        })
    }

    /// Asks the session to stop: no (re)launch from now on, and the stop signal to the process.
    pub fn request_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.unblock.notify_waiters();
        let sig = self.stop_signal();
        if let Err(e) = self.signal(sig) {
            tracing::warn!(session = %self.id, "stop signal {sig}: {e}");
        }
    }

    /// Where attached clients' input goes.
    pub fn input(&self) -> mpsc::UnboundedSender<InputMsg> {
        self.input.clone()
    }

    /// Sets the pty's window size, or keeps it for the pty to come (docker resizes before the
    /// launch, VIC's VCH right after `unblock`, while the launch may be in flight); false when
    /// the session has no pty or has ended.
    pub fn set_window(&self, cols: u16, rows: u16, width: u16, height: u16) -> bool {
        if !lock(&self.config).tty {
            return false;
        }
        let mut tty = lock(&self.tty);
        tty.size = Some((cols, rows, width, height));
        match &tty.master {
            Some(fd) => sys::ioctl::set_window_size(fd, cols, rows, width, height).is_ok(),
            None => !matches!(self.state(), State::Exited(_) | State::Failed(_)),
        }
    }

    /// Takes a new pty (before its process is started): the last size asked for is applied to
    /// it, and every later change goes straight to it.
    fn attach_pty(&self, master: &OwnedFd) -> std::io::Result<()> {
        let mut tty = lock(&self.tty);
        if let Some((c, r, w, h)) = tty.size {
            sys::ioctl::set_window_size(master, c, r, w, h)?;
        }
        tty.master = Some(master.try_clone()?);
        Ok(())
    }

    /// Still of interest to a host: active and neither exited nor failed (VIC's rule for
    /// `container-ids`).
    pub fn live(&self) -> bool {
        lock(&self.config).active && matches!(self.state(), State::Waiting | State::Running { .. })
    }

    /// Runs the session to its end, relaunching a restartable one with docker's backoff.
    pub async fn run(self: Arc<Self>, ctx: Arc<Ctx>, primary: bool) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let cfg = self.config();
            if cfg.run_block && !self.unblocked.load(Ordering::SeqCst) {
                self.wait_for_unblock(&ctx).await;
            }
            if self.stopping() {
                break;
            }
            let started = tokio::time::Instant::now();
            let ok = self.launch_once(&ctx, &cfg).await;
            let again = ok && cfg.restart && !primary && !self.stopping();
            if !again {
                break;
            }
            if started.elapsed() >= Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            let mut cfg = self.config();
            cfg.diagnostics.resurrection_count += 1;
            let count = cfg.diagnostics.resurrection_count;
            self.update_config(cfg);
            tracing::info!(session = %self.id, "restarting in {backoff:?} (resurrection {count})");
            let mut state = gi::initial_state(self.kind, &self.id, false);
            state.insert(
                0,
                (
                    gi::state_key(self.kind, &self.id, &["diagnostics", "resurrections"]),
                    count.to_string(),
                ),
            );
            ctx.publish("resurrections", state);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
        let _ = ctx.finished.send(self.id.to_string());
    }

    async fn wait_for_unblock(&self, ctx: &Ctx) {
        let deadline = ctx.settings.runblock_timeout;
        tracing::info!(session = %self.id, "waiting for an attach client to unblock the launch (at most {deadline:?})");
        let notified = self.unblock.notified();
        if self.unblocked.load(Ordering::SeqCst) || self.stopping() {
            return;
        }
        if tokio::time::timeout(deadline, notified).await.is_err() {
            tracing::warn!(session = %self.id, "RunBlock: no unblock within {deadline:?}; launching anyway");
        }
    }

    /// One launch and, when it succeeds, the wait for its exit. Returns false for a failed launch.
    async fn launch_once(&self, ctx: &Ctx, cfg: &SessionConfig) -> bool {
        let launched = match ctx.settings.root_ready.wait().await {
            // Stopped while the root was being prepared: nothing to launch.
            Ok(()) if self.stopping() => return false,
            Ok(()) => match launch::prepare(&ctx.settings.root, &cfg.cmd, &cfg.user, &cfg.group) {
                Ok(p) => {
                    tracing::debug!(session = %self.id, "prepared");
                    self.spawn(ctx, cfg, &p).await
                }
                Err(e) => Err(e),
            },
            Err(why) => Err(LaunchError::new(launch::EXIT_SETUP, why)),
        };
        if let Some(launched) = &ctx.settings.on_launch {
            launched();
        }
        let (pid, exit_rx, pumps) = match launched {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(session = %self.id, "launch failed: {e} (exit status {})", e.exit_code);
                ctx.publish(
                    "a failed launch",
                    gi::failed_state(self.kind, &self.id, e.exit_code, &e.message),
                );
                ctx.gi.sync().await;
                self.fanout.send(Output::Failed(e.clone())).await;
                self.set_state(State::Failed(e));
                return false;
            }
        };
        tracing::info!(session = %self.id, pid, "launched {}", cfg.cmd.path);
        *lock(&self.pgid) = Some(pid);
        self.set_state(State::Running { pid });
        ctx.publish(
            "a launch",
            gi::launched_state(self.kind, &self.id, gi::now_secs()),
        );

        // The reaper always answers: the child is registered.
        let exit = exit_rx.await.unwrap_or(Exit::Code(launch::EXIT_SETUP));
        let mut pumps = pumps;
        let drained = tokio::time::timeout(ctx.settings.drain_timeout, async {
            for p in pumps.iter_mut() {
                let _ = p.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                session = %self.id,
                "output still held open {:?} after the exit (a descendant keeps it); reporting the exit now",
                ctx.settings.drain_timeout
            );
            for p in &pumps {
                p.abort();
            }
        }
        let _ = self.input.send(InputMsg::Done);
        lock(&self.tty).master = None;
        ctx.log.flush(Some(&self.id)).await;
        let status = exit.status();
        tracing::info!(session = %self.id, pid, ?exit, status, "exited");
        self.set_state(State::Exited(exit));
        ctx.publish(
            "an exit",
            gi::exited_state(self.kind, &self.id, status, gi::now_secs()),
        );
        // A client that sees the exit finds it in guestinfo too.
        ctx.gi.sync().await;
        self.fanout.send(Output::Exit(exit)).await;
        true
    }

    #[allow(clippy::type_complexity)]
    async fn spawn(
        &self,
        ctx: &Ctx,
        cfg: &SessionConfig,
        p: &launch::Prepared,
    ) -> Result<
        (
            i32,
            tokio::sync::oneshot::Receiver<Exit>,
            Vec<JoinHandle<()>>,
        ),
        LaunchError,
    > {
        let setup = |what: &str, e: &dyn std::fmt::Display| LaunchError {
            message: format!("{what}: {e}"),
            exit_code: launch::EXIT_SETUP,
        };
        let exec = self.kind == SessionKind::Exec;
        let Plumbing {
            child: child_fds,
            outputs,
            stdin,
        } = plumbing(cfg.tty, cfg.open_stdin).map_err(|e| setup("stdio", &e))?;
        if let (true, Some(master)) = (cfg.tty, stdin.as_ref()) {
            self.attach_pty(master)
                .map_err(|e| setup("the terminal", &e))?;
        }
        let stdio = child_stdio(&child_fds);
        let spec = spawn::SpawnSpec {
            path: p.path.clone(),
            argv: p.argv.clone(),
            envp: p.envp.clone(),
            dir: Some(p.dir.clone()),
            user: p.user.clone(),
            stdio,
            controlling_tty: cfg.tty,
        };
        // The fork and the wait for the exec (which may read the binary from a slow disk) on a
        // thread of their own: the runtime goes on serving attach, other sessions and guestinfo.
        // The child's descriptors go along and close once it has its copies, whatever becomes
        // of this future.
        let reaper = ctx.reaper.clone();
        // Forks are one at a time anyway (the reaper's lock); a few threads waiting for them are
        // enough. A thread for each of thousands of sessions starting at once made every fork
        // copy the mappings of hundreds of thread stacks: quadratic (10 000 sessions, minutes).
        let _turn = LAUNCHES
            .acquire()
            .await
            .map_err(|e| setup("the launch queue", &e))?;
        if self.stopping() {
            // The container stopped while this one waited for its turn.
            return Err(LaunchError::new(
                launch::EXIT_SETUP,
                "stopped before it was launched",
            ));
        }
        let spawned = tokio::task::spawn_blocking(move || {
            let r = reaper.spawn(|| spawn::spawn(&spec).map(|pid| pid.as_raw()));
            drop(child_fds);
            r
        })
        .await
        .map_err(|e| setup("the spawning thread", &e))?;
        let (pid, exit_rx) = spawned
            .inspect_err(|_| lock(&self.tty).master = None)
            .map_err(|e| launch::spawn_error(&e, p))?;
        let _ = self.input.send(match stdin {
            Some(fd) => InputMsg::Target(fd, cfg.tty),
            None => InputMsg::Done,
        });
        let mut pumps = Vec::new();
        for (fd, stream) in outputs {
            match pump(
                fd,
                self.id.clone(),
                exec,
                stream,
                ctx.log.clone(),
                self.fanout.clone(),
            ) {
                Ok(h) => pumps.push(h),
                Err(e) => {
                    tracing::error!(session = %self.id, "cannot read the output of {pid}: {e}")
                }
            }
        }
        Ok((pid, exit_rx, pumps))
    }
}

/// A process's stdio: the child's descriptors (closed here once it has them), the outputs to read
/// (stdout and stderr, or the pty master), and where its input goes (the pty master, or the stdin
/// pipe when `open_stdin`; `/dev/null` otherwise).
pub struct Plumbing {
    pub child: Vec<OwnedFd>,
    pub outputs: Vec<(OwnedFd, Stream)>,
    pub stdin: Option<OwnedFd>,
}

pub fn plumbing(tty: bool, open_stdin: bool) -> std::io::Result<Plumbing> {
    if tty {
        let pty = sys::open_pty()?;
        let input = pty.master.try_clone()?;
        return Ok(Plumbing {
            child: vec![pty.slave],
            outputs: vec![(pty.master, Stream::Stdout)],
            stdin: Some(input),
        });
    }
    let (out_r, out_w) = spawn::pipe()?;
    let (err_r, err_w) = spawn::pipe()?;
    let (stdin_child, stdin) = if open_stdin {
        let (r, w) = spawn::pipe()?;
        (r, Some(w))
    } else {
        (OwnedFd::from(std::fs::File::open("/dev/null")?), None)
    };
    Ok(Plumbing {
        child: vec![stdin_child, out_w, err_w],
        outputs: vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
        stdin,
    })
}

/// The child's 0, 1 and 2 from its descriptors (one pty for all three, or three pipes).
pub fn child_stdio(fds: &[OwnedFd]) -> [i32; 3] {
    match fds {
        [pty] => [pty.as_raw_fd(); 3],
        [i, o, e] => [i.as_raw_fd(), o.as_raw_fd(), e.as_raw_fd()],
        _ => unreachable!("one pty or three pipes"),
    }
}

/// Copies a process's output to its attached clients and the log until end of file (EIO on a pty
/// whose slave is closed).
fn pump(
    fd: OwnedFd,
    id: Arc<str>,
    exec: bool,
    stream: Stream,
    log: OutputLog,
    fanout: Arc<Fanout>,
) -> std::io::Result<JoinHandle<()>> {
    sys::set_nonblocking(&fd)?;
    let afd = sys::asyncfd::register(fd)?;
    Ok(tokio::spawn(async move {
        let mut turn = chunks::Turn::default();
        loop {
            let mut guard = match afd.readable().await {
                Ok(g) => g,
                Err(_) => return,
            };
            // A buffer only once there is output: an idle session holds none.
            let lease = turn.lease().await;
            match guard.try_io(|inner| chunks::read(inner.get_ref(), lease)) {
                Ok(Ok(None)) => return,
                Ok(Ok(Some(data))) => {
                    turn.took(data.len());
                    fanout.send(Output::Data(stream, data.clone())).await;
                    log.write(&id, exec, stream, data).await
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    tracing::warn!(session = %id, "reading output: {e}");
                    return;
                }
                Err(_would_block) => {}
            }
        }
    }))
}
