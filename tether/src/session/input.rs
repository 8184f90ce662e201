//! A session's input from its attached clients, written by one task to the process's stdin (the
//! pipe, or the pty master). Data that arrives before the launch waits for it. With
//! `close-stdin` (sticky, as VIC's) the process gets EOF once every attached reader is at EOF:
//! the pipe is closed, or a single EOT (0x04) goes to a pty.

use std::collections::HashMap;
use std::os::fd::{AsFd as _, OwnedFd};

use tokio::sync::mpsc;

use crate::sys;

/// Called with how many bytes were written (to give the sender's window back).
pub type Written = Box<dyn FnOnce(usize) + Send>;

pub enum InputMsg {
    /// The process is running: where its input goes, and whether that is a pty.
    Target(OwnedFd, bool),
    Reader(u64),
    Data(u64, Vec<u8>, Written),
    ReaderEof(u64),
    ReaderGone(u64),
    CloseStdin,
    /// The process is gone: stop writing.
    Done,
}

pub fn start() -> mpsc::UnboundedSender<InputMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(rx));
    tx
}

async fn run(mut rx: mpsc::UnboundedReceiver<InputMsg>) {
    let mut target: Option<(tokio::io::unix::AsyncFd<OwnedFd>, bool)> = None;
    let mut waiting: Vec<(Vec<u8>, Written)> = Vec::new();
    let mut readers: HashMap<u64, bool> = HashMap::new();
    let mut close_wanted = false;
    let mut closed = false;
    while let Some(msg) = rx.recv().await {
        match msg {
            InputMsg::Target(fd, tty) => {
                let registered = sys::set_nonblocking(&fd)
                    .map_err(std::io::Error::from)
                    .and_then(|()| sys::asyncfd::register(fd));
                match registered {
                    Ok(a) => target = Some((a, tty)),
                    Err(e) => tracing::warn!("stdin: {e}"),
                }
                for (data, written) in std::mem::take(&mut waiting) {
                    write(&target, &data).await;
                    written(data.len());
                }
            }
            InputMsg::Reader(id) => {
                readers.insert(id, false);
            }
            InputMsg::Data(_, data, written) => {
                if closed {
                    written(data.len());
                } else if target.is_none() {
                    waiting.push((data, written));
                } else {
                    write(&target, &data).await;
                    written(data.len());
                }
            }
            InputMsg::ReaderEof(id) => {
                readers.insert(id, true);
            }
            InputMsg::ReaderGone(id) => {
                readers.remove(&id);
            }
            InputMsg::CloseStdin => close_wanted = true,
            InputMsg::Done => {
                // No process to take input (gone, or started without stdin): drop what waits.
                target = None;
                closed = true;
                for (data, written) in waiting.drain(..) {
                    written(data.len());
                }
            }
        }
        if close_wanted && !closed && target.is_some() && readers.values().all(|eof| *eof) {
            closed = true;
            if let Some((fd, true)) = &target {
                let _ = write_all(fd, &[0x04]).await;
            }
            if target.as_ref().is_some_and(|(_, tty)| !tty) {
                target = None; // closing our end of the pipe is the EOF
            }
        }
    }
}

async fn write(target: &Option<(tokio::io::unix::AsyncFd<OwnedFd>, bool)>, data: &[u8]) {
    if let Some((fd, _)) = target {
        if let Err(e) = write_all(fd, data).await {
            tracing::debug!("stdin: {e}");
        }
    }
}

async fn write_all(fd: &tokio::io::unix::AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref().as_fd(), data).map_err(Into::into))
        {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}
