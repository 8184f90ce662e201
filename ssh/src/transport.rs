//! The byte stream under SSH: the version exchange, and two tasks that own the stream's halves,
//! each with its own direction's keys and sequence number. Keys change exactly at NEWKEYS: the
//! reader waits for the new opening keys right after it has passed NEWKEYS on, and the writer
//! takes the new sealing keys from its queue right after the NEWKEYS packet.

use bytes::Bytes;
use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadHalf, WriteHalf,
};
use tokio::sync::mpsc;

use super::cipher::Direction;
use super::{msg, SshError};

/// The longest line (with CRLF) before the version, and how many such lines we skip.
const MAX_LINE: usize = 255;
const MAX_LINES: usize = 64;

/// Sends our version line and reads the peer's (skipping other lines before it, as RFC 4253
/// §4.2 allows). Returns the peer's line without CRLF.
pub async fn exchange_versions<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ours: &str,
) -> Result<String, SshError> {
    stream.write_all(format!("{ours}\r\n").as_bytes()).await?;
    stream.flush().await?;
    for _ in 0..MAX_LINES {
        let mut line = Vec::with_capacity(64);
        loop {
            let b = stream.read_u8().await.map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => SshError::Closed,
                _ => SshError::Io(e),
            })?;
            if b == b'\n' {
                break;
            }
            if line.len() >= MAX_LINE {
                return Err(SshError::Protocol(
                    "the peer's version line is too long".into(),
                ));
            }
            line.push(b);
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.starts_with(b"SSH-") {
            let text = String::from_utf8(line)
                .map_err(|_| SshError::Protocol("version line is not UTF-8".into()))?;
            if !(text.starts_with("SSH-2.0-") || text.starts_with("SSH-1.99-")) {
                return Err(SshError::Protocol(format!(
                    "unsupported protocol version {text:?}"
                )));
            }
            return Ok(text);
        }
    }
    Err(SshError::Protocol(
        "no SSH version line from the peer".into(),
    ))
}

/// New keys for the reader, applied after the NEWKEYS it has just passed on.
pub struct KeysIn {
    pub dir: Direction,
    /// Strict KEX: sequence numbers start again at 0.
    pub reset_seq: bool,
}

/// A packet's payload, in parts: a channel data packet is its header and the slices of the
/// senders' buffers it carries, sealed from them into the writer's batch (a copy of its own was
/// an allocation and a copy for every 32 KiB, faulted in afresh each time by musl's allocator).
pub struct Packet(Vec<Bytes>);

impl Packet {
    pub fn parts(parts: Vec<Bytes>) -> Self {
        Self(parts)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    /// The message number.
    pub fn kind(&self) -> Option<u8> {
        self.0.iter().find_map(|p| p.first().copied())
    }
}

impl From<Vec<u8>> for Packet {
    fn from(payload: Vec<u8>) -> Self {
        Self(vec![Bytes::from(payload)])
    }
}

/// What the writer is asked to do.
pub enum Out {
    Packet(Packet),
    NewKeys { dir: Direction, reset_seq: bool },
    Close,
}

/// One received packet's payload and its sequence number.
pub type Incoming = Result<(u32, Vec<u8>), SshError>;

/// How much the reader takes from the stream at once: a bulk transfer's packets (up to 32 KiB
/// and their headers) in a few system calls instead of two a packet.
const READ_BUFFER: usize = 64 * 1024;

pub async fn reader<S: AsyncRead + Send + 'static>(
    r: ReadHalf<S>,
    tx: mpsc::Sender<Incoming>,
    mut keys: mpsc::UnboundedReceiver<KeysIn>,
) {
    let mut r = tokio::io::BufReader::with_capacity(READ_BUFFER, r);
    let mut dir = Direction::none();
    let mut seq: u32 = 0;
    loop {
        let result = read_packet(&mut r, &mut dir, seq).await;
        let newkeys = matches!(&result, Ok(p) if p.first() == Some(&msg::NEWKEYS));
        let failed = result.is_err();
        if tx.send(result.map(|p| (seq, p))).await.is_err() || failed {
            return;
        }
        seq = seq.wrapping_add(1);
        if newkeys {
            match keys.recv().await {
                Some(k) => {
                    dir = k.dir;
                    if k.reset_seq {
                        seq = 0;
                    }
                }
                None => return,
            }
        }
    }
}

async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    dir: &mut Direction,
    seq: u32,
) -> Result<Vec<u8>, SshError> {
    let first = dir.first_len();
    let mut head = [0u8; 16];
    if let Err(e) = r.read_exact(&mut head[..first]).await {
        return Err(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SshError::Closed,
            _ => SshError::Io(e),
        });
    }
    let more = dir.packet_length(seq, &mut head[..first])?;
    let mut buf = Vec::with_capacity(first + more);
    buf.extend_from_slice(&head[..first]);
    buf.resize(first + more, 0);
    r.read_exact(&mut buf[first..])
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SshError::Closed,
            _ => SshError::Io(e),
        })?;
    let range = dir.open(seq, &mut buf)?;
    buf.truncate(range.end);
    buf.drain(..range.start);
    tracing::trace!(
        kind = buf.first().copied().unwrap_or(0),
        len = buf.len(),
        "ssh: received"
    );
    Ok(buf)
}

pub async fn writer<S: AsyncWrite + Send + 'static>(
    mut w: WriteHalf<S>,
    mut rx: mpsc::Receiver<Out>,
) -> Result<(), SshError> {
    let mut dir = Direction::none();
    let mut seq: u32 = 0;
    let mut batch = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut close = false;
        let mut yielded = false;
        // Seal everything queued, then write it in one go.
        while let Some(out) = next.take() {
            match out {
                Out::Packet(p) => {
                    tracing::trace!(kind = p.kind().unwrap_or(0), len = p.len(), "ssh: sending");
                    dir.seal_into(seq, &p.0, &mut batch);
                    seq = seq.wrapping_add(1);
                }
                Out::NewKeys { dir: d, reset_seq } => {
                    dir = d;
                    if reset_seq {
                        seq = 0;
                    }
                }
                Out::Close => close = true,
            }
            if close || batch.len() >= 256 * 1024 {
                break;
            }
            next = rx.try_recv().ok();
            if next.is_none() && !yielded && batch.len() < 64 * 1024 {
                // Once, let the tasks that are ready run first: with many channels busy, their
                // packets come one task at a time, and a write each would cost a wake-up and a
                // system call on both ends for every packet.
                yielded = true;
                tokio::task::yield_now().await;
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            w.write_all(&batch).await?;
            w.flush().await?;
            batch.clear();
        }
        if close {
            let _ = w.shutdown().await;
            return Ok(());
        }
    }
    let _ = w.shutdown().await;
    Ok(())
}
