//! A hijacked API connection relayed to a session's attach channel: docker's stream format
//! (8-byte frames `[stream, 0, 0, 0, size (big-endian u32)]` without a tty, raw bytes with
//! one), stdin with docker's detach keys (on a tty, as the daemon reads them), stdin's end
//! closing the process's stdin when the container asked for it (`StdinOnce`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::bail;
use hyper::{Request, Response, StatusCode};
use ssh::{wire, ChannelEvent, Handle};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::{full, Api, ApiResult, Body};

/// Stream numbers in a frame's first byte.
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

/// One frame of docker's multiplexed stream.
pub fn frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&[stream, 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// What one attach relays.
#[derive(Clone, Debug)]
pub struct Relay {
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The key sequence that detaches (tty only), empty for none.
    pub detach_keys: Vec<u8>,
    /// The client's end of stdin closes the process's stdin.
    pub close_stdin: bool,
}

/// Answers a request for a hijacked connection (`101 Switching Protocols` when the client asked
/// to upgrade, as the docker CLI does) and runs `then` on the connection once hyper hands it
/// over.
pub fn hijack<B, F, Fut>(req: Request<B>, tty: bool, then: F) -> ApiResult
where
    B: Send + 'static,
    F: FnOnce(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upgrading = req
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tcp"));
    if !upgrading {
        return Err(super::ApiError::bad_request(
            "attach and exec start need a hijacked connection (Connection: Upgrade, Upgrade: tcp)",
        ));
    }
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => then(hyper_util::rt::TokioIo::new(up)).await,
            Err(e) => tracing::warn!("upgrading the connection: {e}"),
        }
    });
    let kind = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Content-Type", kind)
        .header("Connection", "Upgrade")
        .header("Upgrade", "tcp")
        .body::<Body>(full(Vec::new()))
        .expect("a valid response"))
}

/// Attaches to session `id` over `h` and relays `io` until the session ends (its exit status)
/// or the client detaches or goes (`None`). While it runs, the channel is listed under `key`
/// for resizes, and the last size asked for is sent at once.
pub async fn relay<IO>(
    api: &Arc<Api>,
    key: &str,
    io: IO,
    h: &Handle,
    id: &str,
    r: Relay,
) -> anyhow::Result<Option<i32>>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut ch = match h.open("attach", id.as_bytes().to_vec()).await? {
        Ok(ch) => ch,
        Err(f) => bail!("attaching to {id}: {}", f.description),
    };
    // VIC's ping and unblock: the process starts (or goes on) once a client is there.
    tokio::try_join!(
        ch.request("ping", true, b"Ping".to_vec()),
        ch.request("unblock", true, b"Unblock".to_vec()),
    )?;
    api.channels
        .lock()
        .expect("channels")
        .entry(key.to_string())
        .or_default()
        .push((h.clone(), ch.id));
    let size = api.sizes.lock().expect("sizes").get(key).copied();
    if let (true, Some((w, hgt))) = (r.tty, size) {
        send_window(h, ch.id, w, hgt).await;
    }
    let (from_client, mut to_client) = tokio::io::split(io);
    let detached = Arc::new(AtomicBool::new(false));
    let input = r.stdin.then(|| {
        let (h, chid, r, detached) = (h.clone(), ch.id, r.clone(), detached.clone());
        tokio::spawn(async move {
            // The daemon watches for the detach keys on a terminal only, as docker's does.
            let keys =
                crate::attach::DetachKeys::new(if r.tty { r.detach_keys } else { Vec::new() });
            crate::attach::relay_input(from_client, &h, chid, keys, r.close_stdin, &detached).await;
        })
    });
    let mut status = None;
    let mut gone = false;
    while let Some(ev) = ch.recv().await {
        let out = match ev {
            ChannelEvent::Data(d) if r.stdout => {
                if r.tty {
                    d.to_vec()
                } else {
                    frame(STDOUT, &d)
                }
            }
            ChannelEvent::ExtendedData(_, d) if r.stderr => {
                if r.tty {
                    d.to_vec()
                } else {
                    frame(STDERR, &d)
                }
            }
            ChannelEvent::Request { name, data } => {
                status = crate::attach::exit_status(&name, &data).or(status);
                continue;
            }
            ChannelEvent::Closed => break,
            _ => continue,
        };
        if to_client.write_all(&out).await.is_err() {
            // The client went: a detach as far as the process is concerned.
            gone = true;
            let _ = ch.close().await;
            break;
        }
    }
    if let Some(task) = input {
        task.abort();
    }
    if let Some(list) = api.channels.lock().expect("channels").get_mut(key) {
        list.retain(|(_, c)| *c != ch.id);
    }
    let _ = to_client.flush().await;
    let _ = to_client.shutdown().await;
    if gone || detached.load(Ordering::SeqCst) {
        return Ok(None);
    }
    Ok(status)
}

pub async fn send_window(h: &Handle, ch: ssh::ChannelId, cols: u32, rows: u32) {
    let data = wire::Writer::new()
        .u32(cols)
        .u32(rows)
        .u32(0)
        .u32(0)
        .finish();
    let _ = h.channel_request(ch, "window-change", false, data).await;
}

/// `resize?h=&w=` for a container or exec: kept for the next attach, and sent on every live
/// attach channel of it.
pub async fn resize(api: &Api, key: &str, cols: u32, rows: u32) {
    api.sizes
        .lock()
        .expect("sizes")
        .insert(key.to_string(), (cols, rows));
    let live = api
        .channels
        .lock()
        .expect("channels")
        .get(key)
        .cloned()
        .unwrap_or_default();
    for (h, ch) in live {
        send_window(&h, ch, cols, rows).await;
    }
}

/// Docker's detach keys from a query (`ctrl-p,ctrl-q` when absent).
pub fn detach_keys(spec: Option<&str>) -> Result<Vec<u8>, super::ApiError> {
    crate::attach::parse_detach_keys(spec.filter(|s| !s.is_empty()).unwrap_or("ctrl-p,ctrl-q"))
        .map_err(|e| super::ApiError::bad_request(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_stream_and_a_big_endian_size() {
        assert_eq!(frame(STDERR, b"hi"), [2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(frame(STDOUT, &[0; 300])[4..8], [0, 0, 1, 44]);
    }
}
