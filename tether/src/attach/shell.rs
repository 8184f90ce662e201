//! The debug shell: SSH `session` channels (pty-req, env, shell, exec, window-change, signal)
//! running the container's `/bin/sh`, off unless the config turns it on.

use ssh::{wire, ChannelId, Handle};

use std::time::Duration;

use super::forward::report_end;
use super::server::Attach;
use crate::session::input::InputMsg;
use crate::session::reaper::Exit;
use tether_proto::iolog::Stream;
use tokio::sync::mpsc;

/// A debug-shell channel: what `pty-req` and `env` asked for, then the running process.
#[derive(Default)]
pub(super) struct Shell {
    pty: Option<(String, u16, u16)>,
    env: Vec<String>,
    pub(super) input: Option<mpsc::UnboundedSender<InputMsg>>,
    master: Option<std::os::fd::OwnedFd>,
    pub(super) pid: Option<i32>,
}

/// The message for a `session` channel while the debug shell is off.
pub const SHELL_OFF: &str =
    "the debug shell is off: set guestinfo.vice./tether/debugshell = true (or debug level 3)";

impl Attach {
    pub(super) fn shell_request(&mut self, ch: ChannelId, name: &str, data: &[u8]) -> bool {
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
        let input = crate::session::input::start();
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
