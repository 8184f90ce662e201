//! One process per running containerVM (`vch run` starts it in the background): it serves the
//! container's guestinfo, starts QEMU, takes the tether's connection on COM1 (handshake, SSH),
//! and relays clients on the control socket to it; when QEMU exits it cleans up and ends.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::container::{state_root, Container};
use crate::vm::{self, VmSpec};

/// Serves guestinfo from `file` to each connection on `listener` (QEMU's, and its reconnects).
pub fn serve_guestinfo(file: std::path::PathBuf, listener: UnixListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            crate::guestinfo_server::serve_connection(file.clone(), Box::new(stream));
        }
    });
}

/// COM1 as QEMU gives it: a byte at a time with Nagle on. The host acks at once (TCP_QUICKACK
/// before every read; Linux clears it), so a small reply costs well under a millisecond, not the
/// 40 ms of a delayed ack.
pub struct QuickAck(pub TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Takes the tether's connections on COM1 (again after each loss of the line) and serves the
/// control socket while one is up.
async fn attach_lines(
    com1: &tokio::net::TcpListener,
    c: &Container,
) -> anyhow::Result<std::convert::Infallible> {
    loop {
        let (stream, _) = com1.accept().await?;
        stream.set_nodelay(true)?;
        match crate::attach::connect(Box::new(QuickAck(stream)), Duration::from_secs(600)).await {
            Ok(h) => {
                tracing::info!("the tether is connected");
                let _ = std::fs::remove_file(c.ctl_socket());
                let ctl = tokio::net::UnixListener::bind(c.ctl_socket())?;
                crate::front::serve(ctl, h).await;
                let _ = std::fs::remove_file(c.ctl_socket());
                tracing::info!("the tether's connection ended");
            }
            Err(e) => tracing::warn!("attach line: {e:#}"),
        }
    }
}

/// Runs the containerVM in `dir` to its end.
pub fn supervise(dir: &Path) -> anyhow::Result<()> {
    let c = Container::open(dir)?;
    std::fs::write(c.pid_file(), std::process::id().to_string())?;
    let result = run_vm(&c);
    let _ = std::fs::remove_file(c.ctl_socket());
    let _ = std::fs::remove_file(c.gi_socket());
    let _ = std::fs::remove_file(c.pid_file());
    result
}

fn run_vm(c: &Container) -> anyhow::Result<()> {
    let assets = vm::assets_dir();
    vm::check_assets(&assets, c.meta.boot)?;
    let accel = vm::accel(&assets, &state_root().join("accel"));
    let _ = std::fs::remove_file(c.gi_socket());
    let gi = UnixListener::bind(c.gi_socket())
        .with_context(|| format!("binding {}", c.gi_socket().display()))?;
    serve_guestinfo(c.config_file(), gi);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let com1 = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let disk = c.disk();
        let (debug, output, gi_sock) = (c.debug_log(), c.output_log(), c.gi_socket());
        let spec = VmSpec {
            assets: &assets,
            boot: c.meta.boot,
            accel,
            memory_mib: c.meta.memory_mib,
            attach_port: com1.local_addr()?.port(),
            debug_log: &debug,
            output_log: &output,
            disk: Some(&disk),
            guestinfo: Some(&gi_sock),
            cmdline_extra: &c.meta.cmdline,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(c.dir.join("qemu.log"))?;
        let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
            .args(vm::qemu_args(&spec))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        tracing::info!(
            "QEMU started ({}, {:?} boot), attach line on {}",
            accel.name(),
            c.meta.boot,
            com1.local_addr()?
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            status = qemu.wait() => tracing::info!("QEMU exited: {}", status?),
            r = attach_lines(&com1, c) => match r? {},
            _ = term.recv() => {
                tracing::info!("stopping QEMU (SIGTERM)");
                let _ = qemu.start_kill();
                let _ = qemu.wait().await;
            }
        }
        Ok(())
    })
}
