//! `vch attach`: wait for the tether on the attach line, handshake, SSH, attach to a session and
//! relay the terminal; exit with the session's exit status.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use ssh::{self, wire, ChannelEvent, ClientConfig, Handle};
use tether_proto::handshake;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::guestinfo_server::ListenAddr;
use crate::output::Fd;

/// How long to wait for the tether to connect and answer the handshake.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

pub struct AttachOptions {
    pub id: Option<String>,
    pub tty: bool,
    /// The key sequence that detaches (bytes), empty for none.
    pub detach_keys: Vec<u8>,
    pub deadline: Duration,
}

/// Parses docker's detach-key syntax: `ctrl-p,ctrl-q`, `ctrl-@`, single characters.
pub fn parse_detach_keys(spec: &str) -> anyhow::Result<Vec<u8>> {
    spec.split(',')
        .filter(|k| !k.is_empty())
        .map(|k| {
            if let Some(c) = k.strip_prefix("ctrl-") {
                let c = c.as_bytes();
                match c {
                    [b @ b'a'..=b'z'] => Ok(b - b'a' + 1),
                    [b'@'] => Ok(0),
                    [b'['] => Ok(27),
                    [b'\\'] => Ok(28),
                    [b']'] => Ok(29),
                    [b'^'] => Ok(30),
                    [b'_'] => Ok(31),
                    _ => bail!("unknown detach key {k:?}"),
                }
            } else if k.len() == 1 {
                Ok(k.as_bytes()[0])
            } else {
                bail!("unknown detach key {k:?}")
            }
        })
        .collect()
}

/// Docker's detach keys watched for in a byte stream: what to pass on, and whether the
/// sequence was completed (nothing after it is passed on). A partial match that fails is passed
/// on, and the byte that broke it may start the sequence again.
pub struct DetachKeys {
    keys: Vec<u8>,
    matched: usize,
}

impl DetachKeys {
    /// `keys` empty: nothing detaches.
    pub fn new(keys: Vec<u8>) -> Self {
        Self { keys, matched: 0 }
    }

    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b != self.keys[self.matched] && self.matched > 0 {
                out.extend_from_slice(&self.keys[..self.matched]);
                self.matched = 0;
            }
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

/// A byte stream to the tether.
pub trait Line: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Line for T {}

/// Where the tether will connect.
pub enum Listening {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Starts listening on `addr` (before the tether is started, so its first connect succeeds).
pub async fn bind(addr: &ListenAddr) -> anyhow::Result<Listening> {
    Ok(match addr {
        ListenAddr::Tcp(a) => Listening::Tcp(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("listening on {a}"))?,
        ),
        ListenAddr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            Listening::Unix(
                tokio::net::UnixListener::bind(p)
                    .with_context(|| format!("listening on {}", p.display()))?,
            )
        }
    })
}

impl Listening {
    /// The TCP port it listens on (`None` for a Unix socket): bind to port 0, then tell the
    /// tether this one.
    pub fn tcp_port(&self) -> Option<u16> {
        match self {
            Listening::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listening::Unix(_) => None,
        }
    }

    /// The tether's connection.
    pub async fn accept(&self) -> anyhow::Result<Box<dyn Line>> {
        Ok(match self {
            Listening::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Box::new(QuickAck(s))
            }
            Listening::Unix(l) => Box::new(l.accept().await?.0),
        })
    }
}

/// A tether's TCP line. QEMU's COM1 sends a byte at a time with Nagle on. The host acks at once
/// (TCP_QUICKACK each time it is about to wait for data; Linux clears it), so a small reply costs
/// well under a millisecond, not the 40 ms of a delayed ack. While data keeps coming, reads do
/// not wait and no system call is added to them.
pub struct QuickAck(pub tokio::net::TcpStream);

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if polled.is_pending() {
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for QuickAck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Handshake and SSH on an accepted line.
pub async fn connect(line: Box<dyn Line>, deadline: Duration) -> anyhow::Result<Handle> {
    connect_with(line, deadline, ClientConfig::new("daemon")).await
}

/// [`connect`] with a given SSH client configuration.
pub async fn connect_with(
    line: Box<dyn Line>,
    deadline: Duration,
    config: ClientConfig,
) -> anyhow::Result<Handle> {
    connect_handler(line, deadline, config, ssh::NoHandler).await
}

/// [`connect_with`], with a handler for what the tether sends (its `container-ids` pushes).
pub async fn connect_handler<H: ssh::Handler>(
    mut line: Box<dyn Line>,
    deadline: Duration,
    config: ClientConfig,
    handler: H,
) -> anyhow::Result<Handle> {
    handshake::connect_retrying(&mut line, Duration::from_secs(1), deadline)
        .await
        .context("the tether did not complete the handshake")?;
    let (handle, _task) = ssh::connect(line, config, handler)
        .await
        .context("SSH to the tether")?;
    Ok(handle)
}

/// The tether's live session and exec IDs.
pub async fn container_ids(h: &Handle) -> anyhow::Result<Vec<String>> {
    let reply = h
        .global_request("container-ids", true, Vec::new())
        .await?
        .context("the tether refused container-ids")?;
    Ok(wire::Reader::new(&reply)
        .name_list()
        .context("a malformed container-ids reply")?
        .into_iter()
        .map(str::to_string)
        .collect())
}

/// Attaches and relays until the session ends or the user detaches. Returns the exit status
/// (`None` after a detach).
pub async fn attach(h: &Handle, opts: &AttachOptions) -> anyhow::Result<Option<i32>> {
    // Every round trip is tens of milliseconds over an emulated UART: the live IDs are asked for
    // only when the session is not named.
    let id = match &opts.id {
        Some(id) => id.clone(),
        None => {
            let ids = container_ids(h).await?;
            match ids.as_slice() {
                [one] => one.clone(),
                [] => bail!("the tether runs no session"),
                _ => bail!(
                    "the tether runs several sessions ({}): name one with --id",
                    ids.join(", ")
                ),
            }
        }
    };
    let mut ch = match h.open("attach", id.clone().into_bytes()).await? {
        Ok(ch) => ch,
        Err(f) => bail!("attaching to {id}: {}", f.description),
    };
    let tty = opts.tty && std::io::stdin().is_terminal();
    let _raw = if tty {
        Some(crate::sys::RawMode::enter()?)
    } else {
        None
    };
    if tty {
        send_window(&ch.handle, ch.id).await;
    }
    // VIC's ping and unblock, sent back to back: one round trip instead of two.
    tokio::try_join!(
        ch.request("ping", true, b"Ping".to_vec()),
        ch.request("unblock", true, b"Unblock".to_vec()),
    )?;
    let detached = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input = {
        let (h, chid, detached) = (ch.handle.clone(), ch.id, detached.clone());
        // Docker's detach keys count on a terminal only.
        let keys = DetachKeys::new(if tty {
            opts.detach_keys.clone()
        } else {
            Vec::new()
        });
        tokio::spawn(async move {
            relay_input(tokio::io::stdin(), &h, chid, keys, true, &detached).await;
        })
    };
    let winch = if tty {
        Some(tokio::spawn(watch_window(ch.handle.clone(), ch.id)))
    } else {
        None
    };
    let output = crate::output::Output::start().context("standard output")?;
    let mut status = None;
    let mut relayed = Ok(());
    while let Some(ev) = ch.recv().await {
        relayed = match ev {
            ChannelEvent::Data(d) => output.write(Fd::Stdout, d).await,
            ChannelEvent::ExtendedData(_, d) => output.write(Fd::Stderr, d).await,
            ChannelEvent::Request { name, data } => {
                status = exit_status(&name, &data).or(status);
                Ok(())
            }
            ChannelEvent::Eof => Ok(()),
            ChannelEvent::Closed => break,
        };
        if relayed.is_err() {
            break;
        }
    }
    // Everything received is written before the status is given (the process exits then).
    let written = tokio::task::spawn_blocking(move || output.finish())
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
    input.abort();
    if let Some(w) = winch {
        w.abort();
    }
    relayed
        .and(written)
        .context("writing the session's output")?;
    if detached.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    Ok(Some(status.unwrap_or(125)))
}

/// `exit-status` gives the code; `exit-signal` 128 + the signal's number.
pub fn exit_status(name: &str, data: &[u8]) -> Option<i32> {
    let mut r = wire::Reader::new(data);
    match name {
        "exit-status" => r.u32().ok().map(|c| c as i32),
        "exit-signal" => {
            let sig = r.utf8().ok()?;
            Some(128 + tether_proto::signal::parse(sig).unwrap_or(0))
        }
        _ => None,
    }
}

async fn send_window(h: &Handle, ch: ssh::ChannelId) {
    if let Some((cols, rows)) = crate::sys::window_size(&std::io::stdin()) {
        let data = wire::Writer::new()
            .u32(cols.into())
            .u32(rows.into())
            .u32(0)
            .u32(0)
            .finish();
        let _ = h.channel_request(ch, "window-change", false, data).await;
    }
}

async fn watch_window(h: Handle, ch: ssh::ChannelId) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    while winch.recv().await.is_some() {
        send_window(&h, ch).await;
    }
}

/// A client's input to an attach channel. Its end becomes `close-stdin` and a channel EOF when
/// `close_stdin` (docker's StdinOnce; always for `vch attach`); the detach keys close the
/// channel and leave the process running (`detached` is set).
pub async fn relay_input<R: AsyncRead + Unpin>(
    mut from: R,
    h: &Handle,
    ch: ssh::ChannelId,
    mut keys: DetachKeys,
    close_stdin: bool,
    detached: &std::sync::atomic::AtomicBool,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if close_stdin {
                    let _ = h.channel_request(ch, "close-stdin", true, Vec::new()).await;
                    let _ = h.eof(ch).await;
                }
                return;
            }
            Ok(n) => n,
        };
        let (out, detach) = keys.feed(&buf[..n]);
        if detach {
            detached.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = h.data(ch, None, out).await;
            let _ = h.close(ch).await;
            return;
        }
        if !out.is_empty() && h.data(ch, None, out).await.is_err() {
            return;
        }
    }
}

/// Sends signal `sig` (a name or number) to session `id`'s process (its process group with
/// `group`) through an attach channel.
pub async fn kill(h: &Handle, id: &str, sig: &str, group: bool) -> anyhow::Result<()> {
    tether_proto::signal::parse(sig)?;
    let ch = match h.open("attach", id.as_bytes().to_vec()).await? {
        Ok(ch) => ch,
        Err(f) => bail!("{id}: {}", f.description),
    };
    let request = if group { "group-signal" } else { "signal" };
    let delivered = ch
        .request(request, true, wire::Writer::new().string(sig).finish())
        .await?;
    let _ = ch.close().await;
    if !delivered {
        bail!("the tether did not deliver {sig} to {id}");
    }
    Ok(())
}

/// After the handshake, copies stdin to the line and the line to stdout (OpenSSH's ProxyCommand).
pub async fn proxy(mut line: Box<dyn Line>, deadline: Duration) -> anyhow::Result<()> {
    handshake::connect_retrying(&mut line, Duration::from_secs(1), deadline)
        .await
        .context("the tether did not complete the handshake")?;
    let (mut from_tether, mut to_tether) = tokio::io::split(line);
    let up = async {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut to_tether).await;
        let _ = to_tether.shutdown().await;
    };
    let down = async {
        let mut out = tokio::io::stdout();
        let _ = tokio::io::copy(&mut from_tether, &mut out).await;
        let _ = out.flush().await;
    };
    // The connection is over when the tether's side ends.
    tokio::select! {
        _ = async { tokio::join!(up, std::future::pending::<()>()) } => {}
        _ = down => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_as_docker_writes_them() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), [16, 17]);
        assert_eq!(parse_detach_keys("ctrl-@,a").unwrap(), [0, b'a']);
        assert!(parse_detach_keys("ctrl-pp").is_err());
        assert!(parse_detach_keys("").unwrap().is_empty());
    }

    #[test]
    fn detach_keys_in_a_stream() {
        let mut k = DetachKeys::new(vec![16, 17]);
        assert_eq!(k.feed(b"ab"), (b"ab".to_vec(), false));
        // Split across reads, and a first key doubled: the first passes on, the pair detaches.
        assert_eq!(k.feed(&[b'x', 16]), (b"x".to_vec(), false));
        assert_eq!(k.feed(&[16, 17, b'y']), (vec![16], true));
        // A partial match broken by another byte is passed on whole.
        let mut k = DetachKeys::new(vec![16, 17]);
        assert_eq!(k.feed(&[16, b'z']), (vec![16, b'z'], false));
        let mut none = DetachKeys::new(Vec::new());
        assert_eq!(none.feed(&[16, 17]), (vec![16, 17], false));
    }

    #[test]
    fn exit_status_and_signal() {
        assert_eq!(exit_status("exit-status", &[0, 0, 0, 7]), Some(7));
        let sig = wire::Writer::new()
            .string("KILL")
            .bool(false)
            .string("")
            .string("")
            .finish();
        assert_eq!(exit_status("exit-signal", &sig), Some(137));
        assert_eq!(exit_status("other", &[]), None);
    }
}
