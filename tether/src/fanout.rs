//! A session's output to its attached clients. Each client has a bounded queue; the output pump
//! never waits on one. A client whose queue is full (it stalled past the bound) is dropped, never
//! the session, and never the output log (VIC #2982, #996).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tether_proto::iolog::Stream;
use tokio::sync::mpsc;

use crate::launch::LaunchError;
use crate::reaper::Exit;

/// Chunks a client may fall behind by before it is dropped (each at most one read, 16 KiB).
pub const CLIENT_QUEUE: usize = 256;

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

    /// Hands `out` to every client; drops those that are full or gone.
    pub fn send(&self, out: Output) {
        let mut clients = self.lock();
        clients.retain(|(id, tx)| match tx.try_send(out.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    client = id,
                    "an attached client fell {CLIENT_QUEUE} chunks behind; dropping it"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if clients.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_client_is_dropped_and_the_others_keep_going() {
        let f = Fanout::default();
        let (_slow, _slow_rx) = f.subscribe();
        let (_fast, mut fast_rx) = f.subscribe();
        let chunk: Arc<[u8]> = Arc::from(&b"x"[..]);
        for _ in 0..CLIENT_QUEUE + 10 {
            f.send(Output::Data(Stream::Stdout, chunk.clone()));
            while fast_rx.try_recv().is_ok() {}
        }
        assert_eq!(
            f.lock().len(),
            1,
            "the slow client is gone, the fast one stays"
        );
        f.send(Output::Exit(Exit::Code(0)));
        assert!(matches!(
            fast_rx.try_recv(),
            Ok(Output::Exit(Exit::Code(0)))
        ));
    }
}
