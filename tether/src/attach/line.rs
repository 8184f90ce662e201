//! The attach line: opened from its spec (`tcp:`/HOST:PORT, `unix:`, `serial:`, `vsock:`), the
//! handshake awaited, SSH served on it; opened again after every loss, forever.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::handshake;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Attach, Shared};

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

pub(super) static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

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
