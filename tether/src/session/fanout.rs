//! A session's output to its attached clients. Each client has a bounded queue (up to 512 reads,
//! 8 MiB), so bursts never wait on a client. A client that falls that far behind throttles the
//! process, as docker's attach does, and nothing is lost to it; a client that makes no progress at
//! all for [`STALL`] is dropped, never the session (VIC #2982, #996). The output log has its own
//! queue and is written whatever the clients do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tether_proto::iolog::Stream;
use tokio::sync::mpsc;

use crate::session::launch::LaunchError;
use crate::session::reaper::Exit;

/// Chunks a client may fall behind by before the process waits for it (each at most one read,
/// 16 KiB).
pub const CLIENT_QUEUE: usize = 512;
/// How long a full client may make no progress before it is dropped.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub enum Output {
    Data(Stream, Arc<[u8]>),
    /// The process ended (after its output).
    Exit(Exit),
    /// The launch failed.
    Failed(LaunchError),
}

#[derive(Default)]
pub struct Fanout {
    clients: Mutex<Vec<(u64, mpsc::Sender<Output>)>>,
    next: AtomicU64,
    emptied: tokio::sync::Notify,
}

impl Fanout {
    pub fn subscribe(&self) -> (u64, mpsc::Receiver<Output>) {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, tx));
        (id, rx)
    }

    pub fn unsubscribe(&self, id: u64) {
        let mut clients = self.lock();
        clients.retain(|(i, _)| *i != id);
        if clients.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Returns once no client is attached (each has seen the end and closed its channel).
    pub async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, mpsc::Sender<Output>)>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `out` to every client, waiting for a full one at most [`STALL`]; drops those that
    /// stalled or are gone.
    pub async fn send(&self, out: Output) {
        let clients: Vec<(u64, mpsc::Sender<Output>)> = self.lock().clone();
        let mut gone = Vec::new();
        for (id, tx) in clients {
            let delivered = match tx.try_send(out.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                Err(mpsc::error::TrySendError::Full(o)) => {
                    match tokio::time::timeout(STALL, tx.send(o)).await {
                        Ok(sent) => sent.is_ok(),
                        Err(_) => {
                            tracing::warn!(
                                client = id,
                                "an attached client made no progress for {STALL:?}; dropping it"
                            );
                            false
                        }
                    }
                }
            };
            if !delivered {
                gone.push(id);
            }
        }
        if !gone.is_empty() {
            let mut clients = self.lock();
            clients.retain(|(id, _)| !gone.contains(id));
            if clients.is_empty() {
                self.emptied.notify_waiters();
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Outputs queued for the clients and not yet taken by them.
    pub fn backlog(&self) -> usize {
        self.lock()
            .iter()
            .map(|(_, tx)| tx.max_capacity() - tx.capacity())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_throttles_a_stalled_one_is_dropped() {
        let f = Fanout::default();
        let (_stalled, _stalled_rx) = f.subscribe();
        let (_slow, mut slow_rx) = f.subscribe();
        let chunk: Arc<[u8]> = Arc::from(&b"x"[..]);
        // Up to the queue's size nothing waits.
        for _ in 0..CLIENT_QUEUE {
            f.send(Output::Data(Stream::Stdout, chunk.clone())).await;
        }
        assert_eq!(f.lock().len(), 2);
        // The slow client takes one chunk a second: the sender waits for it and loses nothing;
        // the stalled one is dropped after STALL.
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while slow_rx.recv().await.is_some() {
                n += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            n
        });
        let t0 = tokio::time::Instant::now();
        f.send(Output::Data(Stream::Stdout, chunk.clone())).await;
        assert!(
            t0.elapsed() >= STALL,
            "waited for the stalled client up to the bound"
        );
        assert_eq!(
            f.lock().len(),
            1,
            "the stalled client is gone, the slow one stays"
        );
        f.send(Output::Exit(Exit::Code(0))).await;
        drop(f);
        assert_eq!(
            reader.await.unwrap(),
            CLIENT_QUEUE + 2,
            "every chunk and the exit reached the slow client"
        );
    }
}
