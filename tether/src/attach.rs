//! The attach server: on the attach line (the serial port COM1 in the VM, TCP or a Unix socket in
//! process mode) the tether waits for the host's handshake, then serves SSH with VIC's attach
//! protocol. After any loss of the line it opens it again and waits for a new handshake, forever;
//! sessions are not touched by it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_proto::handshake;
use tether_proto::iolog::Stream;
use tether_proto::ssh::{
    self, msg, wire, ChannelId, Handle, Handler, OpenFailure, PrivateKey, PublicKey, ServerConfig,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::agent::Event;
use crate::fanout::Output;
use crate::input::InputMsg;
use crate::reaper::Exit;
use crate::session::{Session, State};

/// The feature version VIC's tether reports (`MaxPluginVersion - 1`).
pub const VERSION: u32 = 10;

/// Every session and exec by ID, shared with the agent.
pub type Registry = Arc<Mutex<HashMap<String, Arc<Session>>>>;

pub struct Shared {
    pub registry: Registry,
    pub events: mpsc::UnboundedSender<Event>,
    pub server: Arc<ServerConfig>,
    /// When set, only this client key is accepted (and `none` is refused).
    pub authorized: Option<PublicKey>,
    /// The connections to hosts, for pushing `container-ids`.
    pub connections: Mutex<Vec<Handle>>,
    /// Serve SSH `session` channels: a shell in the container.
    pub debug_shell: bool,
    /// Bytes written to the attach line so far: the clients' progress, which the fanout's
    /// queues alone do not show (a chunk taken from them may spend seconds in the SSH
    /// connection's window on a slow line).
    pub written: std::sync::atomic::AtomicU64,
    /// The container's root (a debug shell runs the container's `/bin/sh`).
    pub root_ready: std::sync::Arc<crate::gate::Gate>,
    /// Debug shells are processes: their exits come from the one reaper.
    pub reaper: crate::reaper::Reaper,
}

impl Shared {
    /// Tells every connected host the live exec IDs (after a reload started new execs), as VIC's
    /// tether does, so the host can attach to them.
    pub fn push_exec_ids(&self) {
        let mut ids: Vec<String> = lock(&self.registry)
            .iter()
            .filter(|(_, s)| s.kind == tether_proto::config::SessionKind::Exec && s.live())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let payload = wire::Writer::new().name_list(&refs).finish();
        let mut connections = lock(&self.connections);
        connections.retain(|h| !h.is_closed());
        for h in connections.iter() {
            let (h, payload) = (h.clone(), payload.clone());
            tokio::spawn(async move {
                let _ = h.global_request("container-ids", true, payload).await;
            });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The host key: the config's PEM when it has one, else a fresh Ed25519 key.
pub fn host_key(pem: &[u8]) -> PrivateKey {
    if pem.is_empty() {
        return PrivateKey::generate_ed25519();
    }
    match PrivateKey::from_pem(&String::from_utf8_lossy(pem)) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!("the config's host key is unusable ({e}); using a generated one");
            PrivateKey::generate_ed25519()
        }
    }
}

/// A descriptor read and written with read(2) and write(2) (a serial port, a vsock socket) as an
/// async stream.
fn byte_stream(fd: std::os::fd::OwnedFd) -> std::io::Result<Box<dyn Line>> {
    // The runtime needs it non-blocking (the "unchecked" constructors do not set it).
    crate::sys::set_nonblocking(&fd)?;
    let write = fd.try_clone()?;
    let r = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)?;
    let w = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(write)?;
    Ok(Box::new(tokio::io::join(r, w)))
}

trait Line: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Line for T {}

/// A line that counts what is written to it into [`Shared::written`].
struct Counted {
    line: Box<dyn Line>,
    shared: Arc<Shared>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.line).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.line).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.shared
                .written
                .fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.line).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.line).poll_shutdown(cx)
    }
}

/// Opens the attach line: `tcp:HOST:PORT` (or a bare `HOST:PORT`), `unix:PATH` and
/// `vsock:CID:PORT` connect to the host,
/// `serial:DEVICE` opens a serial port raw.
async fn open(spec: &str) -> std::io::Result<Box<dyn Line>> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("unknown attach line {spec:?}"),
        )
    };
    match tether_proto::addr::split(spec).ok_or_else(bad)? {
        ("tcp", addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
        ("unix", path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        ("serial", dev) => {
            let file = crate::sys::serial::open_raw(std::path::Path::new(dev), false)?;
            byte_stream(file.into())
        }
        ("vsock", addr) => {
            let (cid, port) = addr.split_once(':').ok_or_else(bad)?;
            let (cid, port) = match (cid.parse::<u32>(), port.parse::<u32>()) {
                (Ok(c), Ok(p)) => (c, p),
                _ => return Err(bad()),
            };
            let fd = tokio::task::spawn_blocking(move || crate::sys::vsock_connect(cid, port))
                .await
                .map_err(std::io::Error::other)??;
            byte_stream(fd)
        }
        _ => Err(bad()),
    }
}

/// Serves the attach line forever.
pub async fn run(spec: String, shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut line = match open(&spec).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("attach line {spec}: {e}; again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        // Handshakes on this line until one succeeds or the line goes.
        let ok = loop {
            match handshake::serve(&mut line).await {
                Ok(()) => break true,
                Err(e) if e.retryable() => {
                    tracing::debug!("attach: {e}; waiting for the next attempt")
                }
                Err(e) => {
                    tracing::debug!("attach: {e}");
                    break false;
                }
            }
        };
        if !ok {
            continue;
        }
        tracing::info!("attach: the host connected");
        let handler = Attach::new(shared.clone());
        let line = Counted {
            line,
            shared: shared.clone(),
        };
        match ssh::serve(line, shared.server.clone(), handler).await {
            Ok(()) => tracing::info!("attach: the host disconnected"),
            Err(e) => tracing::info!("attach: connection ended: {e}"),
        }
    }
}

static READERS: AtomicU64 = AtomicU64::new(1);

struct Attached {
    session: Arc<Session>,
    subscription: u64,
    reader: u64,
}

/// VIC's attach protocol on one SSH connection.
pub struct Attach {
    shared: Arc<Shared>,
    handle: Option<Handle>,
    channels: HashMap<ChannelId, Attached>,
    shells: HashMap<ChannelId, Shell>,
}

/// A debug-shell channel: what `pty-req` and `env` asked for, then the running process.
#[derive(Default)]
struct Shell {
    pty: Option<(String, u16, u16)>,
    env: Vec<String>,
    input: Option<mpsc::UnboundedSender<InputMsg>>,
    master: Option<std::os::fd::OwnedFd>,
    pid: Option<i32>,
}

/// The message for a `session` channel while the debug shell is off.
pub const SHELL_OFF: &str =
    "the debug shell is off: set guestinfo.vice./tether/debugshell = true (or debug level 3)";

impl Attach {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            handle: None,
            channels: HashMap::new(),
            shells: HashMap::new(),
        }
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.shared.registry).get(id).cloned()
    }
}

fn prohibited(text: String) -> OpenFailure {
    OpenFailure::new(msg::OPEN_ADMINISTRATIVELY_PROHIBITED, text)
}

impl Handler for Attach {
    fn connected(&mut self, handle: Handle) {
        lock(&self.shared.connections).push(handle.clone());
        self.handle = Some(handle);
    }

    fn auth_none(&mut self, user: &str) -> bool {
        self.shared.authorized.is_none() && user == "daemon"
    }

    fn auth_publickey(&mut self, _user: &str, key: &PublicKey) -> bool {
        self.shared.authorized.as_ref() == Some(key)
    }

    fn global_request(&mut self, name: &str, _data: &[u8]) -> Option<Vec<u8>> {
        match name {
            "container-ids" => {
                let mut ids: Vec<String> = lock(&self.shared.registry)
                    .iter()
                    .filter(|(_, s)| s.live())
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.sort();
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                Some(wire::Writer::new().name_list(&refs).finish())
            }
            "version" => Some(VERSION.to_be_bytes().to_vec()),
            // Our extension: re-read the config (what SIGHUP does), for hosts without guest ops.
            "reload" => self
                .shared
                .events
                .send(Event::Reload)
                .ok()
                .map(|()| Vec::new()),
            _ => None,
        }
    }

    fn channel_open(&mut self, ch: ChannelId, typ: &str, extra: &[u8]) -> Result<(), OpenFailure> {
        if typ == "session" {
            if !self.shared.debug_shell {
                return Err(prohibited(SHELL_OFF.into()));
            }
            self.shells.insert(ch, Shell::default());
            return Ok(());
        }
        // VIC's checks, in VIC's order.
        if typ != "attach" {
            return Err(OpenFailure::unknown_type(typ));
        }
        if extra.is_empty() {
            return Err(prohibited("attach channel requires ID in ExtraData".into()));
        }
        let id = String::from_utf8_lossy(extra).into_owned();
        let session = self
            .session(&id)
            .ok_or_else(|| prohibited(format!("session {id} is invalid")))?;
        let (subscription, outputs) = session.fanout.subscribe();
        match session.state() {
            State::Failed(e) => {
                session.fanout.unsubscribe(subscription);
                return Err(prohibited(format!("launch failed with: {}", e.message)));
            }
            State::Exited(e) => {
                session.fanout.unsubscribe(subscription);
                return Err(prohibited(format!(
                    "process finished with exit code: {}",
                    e.status()
                )));
            }
            _ => {}
        }
        let reader = READERS.fetch_add(1, Ordering::Relaxed);
        let _ = session.input().send(InputMsg::Reader(reader));
        let handle = self.handle.clone().expect("authenticated");
        tokio::spawn(forward(handle, ch, session.config().tty, outputs));
        tracing::info!(session = %id, channel = ch.0, "attached");
        self.channels.insert(
            ch,
            Attached {
                session,
                subscription,
                reader,
            },
        );
        Ok(())
    }

    fn channel_request(&mut self, ch: ChannelId, name: &str, data: &[u8]) -> bool {
        if self.shells.contains_key(&ch) {
            return self.shell_request(ch, name, data);
        }
        let Some(a) = self.channels.get(&ch) else {
            return false;
        };
        match name {
            "ping" => data == b"Ping",
            "unblock" => {
                if let State::Failed(_) = a.session.state() {
                    // VIC: refuse and close the channel when the launch failed.
                    if let Some(h) = self.handle.clone() {
                        tokio::spawn(async move {
                            let _ = h.close(ch).await;
                        });
                    }
                    return false;
                }
                a.session.unblock();
                true
            }
            "window-change" => {
                let mut r = wire::Reader::new(data);
                match (r.u32(), r.u32(), r.u32(), r.u32()) {
                    (Ok(c), Ok(rows), Ok(w), Ok(h)) => {
                        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                        a.session
                            .set_window(clamp(c), clamp(rows), clamp(w), clamp(h))
                    }
                    _ => false,
                }
            }
            "close-stdin" => a.session.input().send(InputMsg::CloseStdin).is_ok(),
            // `signal` goes to the process, as `docker kill`; `group-signal` (ours) to its process
            // group, as VIC's `group-kill`. Delivered only to a running process.
            "signal" | "group-signal" => {
                let spec = wire::Reader::new(data).utf8().unwrap_or("");
                match tether_proto::signal::parse(spec) {
                    Ok(_) if a.session.pid().is_none() => false,
                    Ok(sig) if name == "group-signal" => a.session.signal_group(sig).is_ok(),
                    Ok(sig) => a.session.signal(sig).is_ok(),
                    Err(e) => {
                        tracing::warn!("attach: {e}");
                        false
                    }
                }
            }
            _ => false,
        }
    }

    fn data(&mut self, ch: ChannelId, data: &[u8]) -> bool {
        if let Some(input) = self.shells.get(&ch).and_then(|s| s.input.clone()) {
            let given_back = self.give_back(ch);
            return input
                .send(InputMsg::Data(0, data.to_vec(), given_back))
                .is_err();
        }
        let Some(a) = self.channels.get(&ch) else {
            return true;
        };
        let handle = self.handle.clone();
        let given_back = Box::new(move |n: usize| {
            if let Some(h) = handle {
                tokio::spawn(async move {
                    let _ = h.adjust_window(ch, n as u32).await;
                });
            }
        });
        // The window is given back once the process has the bytes: a process that does not read
        // its input holds the client back, never our memory.
        a.session
            .input()
            .send(InputMsg::Data(a.reader, data.to_vec(), given_back))
            .is_err()
    }

    fn eof(&mut self, ch: ChannelId) {
        if let Some(input) = self.shells.get(&ch).and_then(|s| s.input.clone()) {
            // As sshd: the client's EOF is the end of the shell's input.
            let _ = input.send(InputMsg::ReaderEof(0));
            let _ = input.send(InputMsg::CloseStdin);
        }
        if let Some(a) = self.channels.get(&ch) {
            let _ = a.session.input().send(InputMsg::ReaderEof(a.reader));
        }
    }

    fn closed(&mut self, ch: ChannelId) {
        if let Some(shell) = self.shells.remove(&ch) {
            if let Some(pid) = shell.pid {
                let _ = crate::sys::signal_group(pid, libc::SIGHUP);
            }
        }
        if let Some(a) = self.channels.remove(&ch) {
            // Detach: the process is left alone.
            a.session.fanout.unsubscribe(a.subscription);
            let _ = a.session.input().send(InputMsg::ReaderGone(a.reader));
            tracing::info!(session = %a.session.id, channel = ch.0, "detached");
        }
    }
}

impl Attach {
    fn give_back(&self, ch: ChannelId) -> crate::input::Written {
        let handle = self.handle.clone();
        Box::new(move |n: usize| {
            if let Some(h) = handle {
                tokio::spawn(async move {
                    let _ = h.adjust_window(ch, n as u32).await;
                });
            }
        })
    }

    fn shell_request(&mut self, ch: ChannelId, name: &str, data: &[u8]) -> bool {
        let mut r = wire::Reader::new(data);
        let Some(shell) = self.shells.get_mut(&ch) else {
            return false;
        };
        match name {
            "pty-req" => match (r.utf8(), r.u32(), r.u32()) {
                (Ok(term), Ok(cols), Ok(rows)) => {
                    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                    shell.pty = Some((term.to_string(), clamp(cols), clamp(rows)));
                    true
                }
                _ => false,
            },
            "env" => match (r.utf8(), r.utf8()) {
                (Ok(k), Ok(v)) if !k.contains('=') => {
                    shell.env.push(format!("{k}={v}"));
                    true
                }
                _ => false,
            },
            "window-change" => match (&shell.master, r.u32(), r.u32()) {
                (Some(fd), Ok(c), Ok(rows)) => {
                    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                    crate::sys::ioctl::set_window_size(fd, clamp(c), clamp(rows), 0, 0).is_ok()
                }
                _ => false,
            },
            "signal" => match (shell.pid, r.utf8().ok().map(tether_proto::signal::parse)) {
                (Some(pid), Some(Ok(sig))) => crate::sys::signal_process(pid, sig).is_ok(),
                _ => false,
            },
            "shell" | "exec" if shell.pid.is_none() => {
                if self.shared.root_ready.outcome() != Some(Ok(())) {
                    tracing::warn!("debug shell: the container's root is not in place");
                    return false;
                }
                let cmd = if name == "exec" {
                    match r.utf8() {
                        Ok(c) => Some(c.to_string()),
                        Err(_) => return false,
                    }
                } else {
                    None
                };
                match self.start_shell(ch, cmd) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("debug shell: {e}");
                        false
                    }
                }
            }
            _ => false,
        }
    }

    /// Starts `/bin/sh` (or `sh -c cmd`) for a debug-shell channel.
    fn start_shell(&mut self, ch: ChannelId, cmd: Option<String>) -> std::io::Result<()> {
        use crate::session::{child_stdio, plumbing};
        use crate::sys::spawn::{spawn, SpawnSpec};
        let handle = self.handle.clone().expect("authenticated");
        let shell = self.shells.get_mut(&ch).expect("a shell channel");
        let tty = shell.pty.is_some();
        let p = plumbing(tty, true)?;
        let c = |s: &str| {
            std::ffi::CString::new(s)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
        };
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "HOME=/root".into(),
        ];
        if let Some((term, _, _)) = &shell.pty {
            env.push(format!("TERM={term}"));
        }
        env.extend(shell.env.iter().cloned());
        let argv: Vec<&str> = match &cmd {
            Some(cmd) => vec!["sh", "-c", cmd],
            None => vec!["sh"],
        };
        let spec = SpawnSpec {
            path: c("/bin/sh")?,
            argv: argv.iter().map(|a| c(a)).collect::<Result<_, _>>()?,
            envp: env.iter().map(|e| c(e)).collect::<Result<_, _>>()?,
            dir: Some(c("/")?),
            user: None,
            stdio: child_stdio(&p.child),
            controlling_tty: tty,
        };
        let (pid, exit) = self
            .shared
            .reaper
            .spawn(|| spawn(&spec).map(|pid| pid.as_raw()))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        drop(p.child);
        let input = crate::input::start();
        if let (Some((_, cols, rows)), Some(fd)) = (&shell.pty, p.stdin.as_ref()) {
            let _ = crate::sys::ioctl::set_window_size(fd, *cols, *rows, 0, 0);
            shell.master = fd.try_clone().ok();
        }
        let _ = input.send(InputMsg::Reader(0));
        if let Some(fd) = p.stdin {
            let _ = input.send(InputMsg::Target(fd, tty));
        }
        shell.input = Some(input);
        shell.pid = Some(pid);
        tracing::info!(
            pid,
            "debug shell started: {}",
            cmd.as_deref().unwrap_or("sh")
        );
        let mut copies = Vec::new();
        for (fd, stream) in p.outputs {
            let ext = (stream == Stream::Stderr).then_some(1);
            copies.push(tokio::spawn(copy_to_channel(fd, handle.clone(), ch, ext)));
        }
        tokio::spawn(async move {
            let exit = exit.await.unwrap_or(Exit::Code(255));
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                for c in copies.iter_mut() {
                    let _ = c.await;
                }
            })
            .await;
            report_end(&handle, ch, exit).await;
        });
        Ok(())
    }
}

/// Copies a debug shell's output to its channel until end of file.
async fn copy_to_channel(fd: std::os::fd::OwnedFd, h: Handle, ch: ChannelId, ext: Option<u32>) {
    use std::os::fd::AsFd as _;
    let Ok(afd) = crate::sys::set_nonblocking(&fd)
        .map_err(std::io::Error::from)
        .and_then(|()| crate::sys::asyncfd::register(fd))
    else {
        return;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(mut guard) = afd.readable().await else {
            return;
        };
        match guard.try_io(|inner| {
            nix::unistd::read(inner.get_ref().as_fd(), &mut buf).map_err(Into::into)
        }) {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => {
                if h.data(ch, ext, buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
            Err(_would_block) => {}
        }
    }
}

/// `exit-status` or `exit-signal`, then EOF and CLOSE.
async fn report_end(h: &Handle, ch: ChannelId, exit: Exit) {
    let _ = match exit {
        Exit::Code(c) => {
            h.channel_request(ch, "exit-status", false, (c as u32).to_be_bytes().to_vec())
                .await
        }
        Exit::Signal {
            signal,
            core_dumped,
        } => {
            let name = tether_proto::signal::name(signal).unwrap_or_else(|| signal.to_string());
            let payload = wire::Writer::new()
                .string(name)
                .bool(core_dumped)
                .string("")
                .string("")
                .finish();
            h.channel_request(ch, "exit-signal", false, payload).await
        }
    };
    let _ = h.eof(ch).await;
    let _ = h.close(ch).await;
}

/// Bytes of a client's output handed to the connection before waiting for the first of them to
/// be on its way: a few chunks (one read of the session's pipe each, often a page) queued there
/// go out packed in full packets, and a packet, its MAC and the client's write cost about the
/// same for 4 KiB as for 32.
const IN_FLIGHT: usize = 64 * 1024;

/// Forgets what is on its way of `in_flight`; past [`IN_FLIGHT`] bytes handed on, waits for the
/// oldest: the line's pace then holds this client's queue (and, at its end, the session).
async fn settle(
    in_flight: &mut std::collections::VecDeque<(usize, tether_proto::ssh::Queued)>,
    handed: &mut usize,
) -> Result<(), tether_proto::ssh::SshError> {
    while let Some((n, q)) = in_flight.front_mut() {
        let n = *n;
        if !q.is_sent()? {
            if *handed <= IN_FLIGHT {
                break;
            }
            if let Some((_, q)) = in_flight.pop_front() {
                q.sent().await?;
            }
        } else {
            in_flight.pop_front();
        }
        *handed -= n;
    }
    Ok(())
}

/// Sends a session's output to one channel; at the end `exit-status` (or `exit-signal`), EOF and
/// CLOSE. Without a pty, stderr goes as extended data 1.
async fn forward(h: Handle, ch: ChannelId, tty: bool, mut outputs: mpsc::Receiver<Output>) {
    let mut in_flight = std::collections::VecDeque::new();
    let mut handed = 0usize;
    while let Some(out) = outputs.recv().await {
        let sent = match out {
            Output::Data(stream, bytes) => {
                let ext = (stream == Stream::Stderr && !tty).then_some(1);
                match h.queue_data(ch, ext, bytes.to_vec()).await {
                    Ok(q) => {
                        in_flight.push_back((bytes.len(), q));
                        handed += bytes.len();
                        settle(&mut in_flight, &mut handed).await
                    }
                    Err(e) => Err(e),
                }
            }
            Output::Exit(exit) => {
                report_end(&h, ch, exit).await;
                return;
            }
            Output::Failed(e) => {
                // The reason on stderr and docker's code (125/126/127) as the exit status.
                let _ = h
                    .data(
                        ch,
                        (!tty).then_some(1),
                        format!("{}\n", e.message).into_bytes(),
                    )
                    .await;
                let _ = h
                    .channel_request(
                        ch,
                        "exit-status",
                        false,
                        (e.exit_code as u32).to_be_bytes().to_vec(),
                    )
                    .await;
                let _ = h.eof(ch).await;
                let _ = h.close(ch).await;
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_malformed_line_is_refused_by_name() {
        for spec in [
            "vsock:2",
            "vsock:host:2377",
            "vsock:2:port",
            "udp:1.2.3.4:5",
            "serial",
        ] {
            let err = open(spec).await.err().expect(spec);
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{spec}");
            assert!(err.to_string().contains(spec), "{err}");
        }
    }
}
