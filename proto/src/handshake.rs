//! The handshake before SSH on the attach line (VIC `pkg/serial/handshake.go`): the host is the
//! client, the tether the server.
//!
//! ```text
//! host                          tether
//! SYN a            ───────────▶ (keep the last 2 bytes of a read)  SYN? else NAK
//!                  ◀─────────── ACK a+1 b
//! (keep last 3)  ACK? a+1?
//! ACK b+1          ───────────▶ (keep the last 2)  ACK b+1? else NAK
//!                  ◀─────────── ACK
//! (read exactly 1: ACK)         ... SSH starts on the same bytes
//! ```
//!
//! "Keep the last N bytes" of whatever one read returned is how line noise and SYNs left over
//! from earlier attempts are skipped. Tokens are random in [0, 254]; arithmetic is mod 256.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

pub const SYN: u8 = 0x16;
pub const ACK: u8 = 0x06;
pub const NAK: u8 = 0x15;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake: expected {expected} but read {got:02x?}")]
    Unexpected {
        expected: &'static str,
        got: Vec<u8>,
    },
    #[error("handshake: the peer refused (NAK)")]
    Refused,
    #[error("handshake: no answer within {0:?}")]
    Timeout(Duration),
    #[error("handshake: the line closed")]
    Closed,
    #[error("handshake: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// Worth another attempt on the same line (as opposed to a line that is gone).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            HandshakeError::Unexpected { .. }
                | HandshakeError::Refused
                | HandshakeError::Timeout(_)
        )
    }
}

fn token() -> u8 {
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).expect("the operating system's random source failed");
    b[0] % 255
}

/// Reads until at least `n` bytes have come in, and returns the last `n` of them (of what the
/// reads returned, which holds at most one buffer's worth).
async fn read_tail<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Result<Vec<u8>, HandshakeError> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut got: Vec<u8> = Vec::new();
    while got.len() < n {
        let k = s.read(&mut buf).await?;
        if k == 0 {
            return Err(HandshakeError::Closed);
        }
        got.extend_from_slice(&buf[..k]);
    }
    Ok(got[got.len() - n..].to_vec())
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> Result<(), HandshakeError> {
    s.write_all(bytes).await?;
    s.flush().await?;
    Ok(())
}

/// One attempt as the tether. A bad first or third message is answered with NAK.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<(), HandshakeError> {
    let syn = read_tail(s, 2).await?;
    if syn[0] != SYN {
        send(s, &[NAK]).await?;
        return Err(HandshakeError::Unexpected {
            expected: "SYN",
            got: syn,
        });
    }
    let b = token();
    send(s, &[ACK, syn[1].wrapping_add(1), b]).await?;
    let ack = read_tail(s, 2).await?;
    if ack[0] != ACK || ack[1] != b.wrapping_add(1) {
        send(s, &[NAK]).await?;
        return Err(HandshakeError::Unexpected {
            expected: "ACK b+1",
            got: ack,
        });
    }
    send(s, &[ACK]).await
}

/// One attempt as the host, each read bounded by `deadline`.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    deadline: Duration,
) -> Result<(), HandshakeError> {
    let a = token();
    send(s, &[SYN, a]).await?;
    let reply = tokio::time::timeout(deadline, read_tail(s, 3))
        .await
        .map_err(|_| HandshakeError::Timeout(deadline))??;
    if reply[0] == NAK {
        return Err(HandshakeError::Refused);
    }
    if reply[0] != ACK || reply[1] != a.wrapping_add(1) {
        return Err(HandshakeError::Unexpected {
            expected: "ACK a+1 b",
            got: reply,
        });
    }
    send(s, &[ACK, reply[2].wrapping_add(1)]).await?;
    // Exactly one byte: whatever follows is SSH.
    let mut last = [0u8; 1];
    let n = tokio::time::timeout(deadline, s.read(&mut last))
        .await
        .map_err(|_| HandshakeError::Timeout(deadline))??;
    match (n, last[0]) {
        (0, _) => Err(HandshakeError::Closed),
        (_, ACK) => Ok(()),
        (_, NAK) => Err(HandshakeError::Refused),
        (_, b) => Err(HandshakeError::Unexpected {
            expected: "ACK",
            got: vec![b],
        }),
    }
}

/// Attempts as the host until one succeeds, the line closes, or `total` runs out.
pub async fn connect_retrying<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    attempt: Duration,
    total: Duration,
) -> Result<(), HandshakeError> {
    let end = tokio::time::Instant::now() + total;
    loop {
        match connect(s, attempt).await {
            Ok(()) => return Ok(()),
            Err(e) if e.retryable() && tokio::time::Instant::now() < end => continue,
            Err(HandshakeError::Timeout(_)) => return Err(HandshakeError::Timeout(total)),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    /// A scripted host: writes `first`, then answers like VIC's client would.
    async fn read_n(s: &mut (impl AsyncRead + Unpin), n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).await.unwrap();
        b
    }

    /// Plays VIC's host against our server: sends `first` (ending in `SYN token`), checks the
    /// reply `ACK token+1 b` with b in [0, 254], answers `ACK b+1`, and expects the final ACK.
    async fn host_dialogue(first: &[u8], token: u8, buffer: usize) {
        let (mut host, mut tether) = duplex(buffer);
        let server = tokio::spawn(async move { serve(&mut tether).await });
        host.write_all(first).await.unwrap();
        let reply = read_n(&mut host, 3).await;
        assert_eq!(&reply[..2], &[ACK, token.wrapping_add(1)]);
        assert!(reply[2] <= 254);
        host.write_all(&[ACK, reply[2].wrapping_add(1)])
            .await
            .unwrap();
        assert_eq!(read_n(&mut host, 1).await, [ACK]);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn normal_exchange_byte_for_byte() {
        host_dialogue(&[SYN, 0x41], 0x41, 1024).await;
    }

    #[tokio::test]
    async fn token_255_wraps_to_0() {
        host_dialogue(&[SYN, 0xff], 0xff, 1024).await;
    }

    #[tokio::test]
    async fn garbage_in_the_same_read_is_skipped() {
        let mut first = b"Linux version 6.1 ... boot noise ".repeat(30);
        assert!(first.len() > 800);
        first.extend_from_slice(&[SYN, 7]);
        host_dialogue(&first, 7, 64 * 1024).await;
    }

    #[tokio::test]
    async fn comport_junk_then_repeated_syns() {
        let mut first: Vec<u8> = (0x01..=0x16).collect();
        first.extend_from_slice(&[SYN, 9, SYN, 9, SYN, 9]);
        host_dialogue(&first, 9, 1024).await;
    }

    #[tokio::test]
    async fn wrong_flag_and_wrong_token_get_nak() {
        let (mut host, mut tether) = duplex(1024);
        let server = tokio::spawn(async move { serve(&mut tether).await });
        host.write_all(&[ACK, 1]).await.unwrap();
        assert_eq!(read_n(&mut host, 1).await, [NAK]);
        assert!(server.await.unwrap().unwrap_err().retryable());

        let (mut host, mut tether) = duplex(1024);
        let server = tokio::spawn(async move { serve(&mut tether).await });
        host.write_all(&[SYN, 1]).await.unwrap();
        let reply = read_n(&mut host, 3).await;
        host.write_all(&[ACK, reply[2].wrapping_add(2)])
            .await
            .unwrap();
        assert_eq!(read_n(&mut host, 1).await, [NAK]);
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn client_sees_nak_wrong_position_and_wrong_flag() {
        for (answer, refused) in [
            (vec![NAK, 0, 0], true),
            (vec![ACK, 0x99, 3], false),
            (vec![SYN, 0, 0], false),
        ] {
            let (mut host, mut tether) = duplex(1024);
            let client =
                tokio::spawn(async move { connect(&mut host, Duration::from_secs(1)).await });
            let syn = read_n(&mut tether, 2).await;
            assert_eq!(syn[0], SYN);
            let mut answer = answer;
            if answer[1] == 0x99 {
                answer[1] = syn[1].wrapping_add(2);
            }
            tether.write_all(&answer).await.unwrap();
            let e = client.await.unwrap().unwrap_err();
            assert_eq!(matches!(e, HandshakeError::Refused), refused, "{e}");
        }
    }

    #[tokio::test]
    async fn client_and_server_then_bytes_flow_untouched() {
        let (mut host, mut tether) = duplex(1024);
        let server = tokio::spawn(async move {
            serve(&mut tether).await.unwrap();
            let mut b = [0u8; 8];
            tether.read_exact(&mut b).await.unwrap();
            b
        });
        connect(&mut host, Duration::from_secs(1)).await.unwrap();
        host.write_all(b"SSH-2.0-").await.unwrap();
        assert_eq!(&server.await.unwrap(), b"SSH-2.0-");
    }

    #[tokio::test(start_paused = true)]
    async fn host_retries_each_attempt_after_its_one_second_deadline() {
        let (mut host, mut tether) = duplex(1024);
        // The tether is silent for the first attempt, then answers.
        let tether_side = tokio::spawn(async move {
            let first = read_n(&mut tether, 2).await;
            assert_eq!(first[0], SYN);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            serve(&mut tether).await
        });
        let t0 = tokio::time::Instant::now();
        connect_retrying(&mut host, Duration::from_secs(1), Duration::from_secs(10))
            .await
            .unwrap();
        assert!(t0.elapsed() >= Duration::from_secs(1));
        tether_side.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tether_ends_in_a_timeout() {
        let (mut host, _tether) = duplex(1024);
        let e = connect_retrying(&mut host, Duration::from_secs(1), Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(e, HandshakeError::Timeout(_)), "{e}");
    }
}
