//! What goes out on an attach channel: a session's output (packed by the connection, at most
//! [`IN_FLIGHT`] handed on at a time), then its end (`exit-status` or `exit-signal`, EOF, CLOSE).

use crate::session::fanout::{self, Output, Subscription};
use crate::session::reaper::Exit;
use ssh::{wire, ChannelId, Handle};
use tether_proto::iolog::Stream;

/// `exit-status` or `exit-signal`, then EOF and CLOSE.
pub(super) async fn report_end(h: &Handle, ch: ChannelId, exit: Exit) {
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
/// be on its way: one full read of a pipe, or a few short ones (a terminal's, a line's) queued
/// there to go out packed in full packets, as a packet, its MAC and the client's write cost
/// about the same for 4 KiB as for 32. Less when many clients are attached: no more than a
/// client's share of the fanout's budget ([`fanout::share`]), which bounds the tether's memory
/// per session.
const IN_FLIGHT: usize = 64 * 1024;

/// Forgets what is on its way of `in_flight`; past [`IN_FLIGHT`] bytes (or the client's share)
/// handed on, waits for the oldest: the line's pace then holds this client's queue (and, at its
/// end, the session).
async fn settle(
    in_flight: &mut std::collections::VecDeque<(usize, ssh::Queued)>,
    handed: &mut usize,
) -> Result<(), ssh::SshError> {
    let limit = IN_FLIGHT.min(fanout::share());
    while let Some((n, q)) = in_flight.front_mut() {
        let n = *n;
        if !q.is_sent()? {
            if *handed <= limit {
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
pub(super) async fn forward(h: Handle, ch: ChannelId, tty: bool, mut outputs: Subscription) {
    let mut in_flight: std::collections::VecDeque<(usize, ssh::Queued)> = Default::default();
    let mut handed = 0usize;
    while let Some(out) = outputs.recv().await {
        if !matches!(out, Output::Data(..)) {
            // The end goes out after every byte before it: the connection sends a request at
            // once, while data may still wait there for the client's window.
            for (_, q) in in_flight.drain(..) {
                let _ = q.sent().await;
            }
        }
        let sent = match out {
            Output::Data(stream, bytes) => {
                let ext = (stream == Stream::Stderr && !tty).then_some(1);
                match h.queue_data(ch, ext, bytes.clone()).await {
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
