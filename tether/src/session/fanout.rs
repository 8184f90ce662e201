//! A session's output to its attached clients. Each client has a queue bounded in bytes (its share
//! of [`BUDGET`], which all attached clients split between them), so bursts never wait on a
//! client while the tether's memory stays bounded however many attach. A client that falls that
//! far behind throttles the process, as docker's attach does, and nothing is lost to it; a client
//! that makes no progress at all for [`STALL`] is dropped, never the session (VIC #2982, #996).
//! The output log has its own queue and is written whatever the clients do.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tether_proto::iolog::Stream;
use tokio::sync::{mpsc, Notify};

use crate::session::launch::LaunchError;
use crate::session::reaper::Exit;

/// Bytes the queues of all attached clients may hold together: one client may fall this far
/// behind; each of a hundred gets [`CLIENT_MIN`].
pub const BUDGET: usize = 1 << 20;
/// The least a client's queue may hold (a few short reads; a full read of a pipe always fits an
/// empty queue).
pub const CLIENT_MIN: usize = 16 * 1024;
/// What an entry costs beyond its bytes (so that one-byte reads are bounded too).
const ENTRY_COST: usize = 64;
/// How long a full client may make no progress before it is dropped.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// Clients attached to any session now.
static CLIENTS: AtomicUsize = AtomicUsize::new(0);

/// One client's share of [`BUDGET`] with `clients` attached.
fn share_of(clients: usize) -> usize {
    (BUDGET / clients.max(1)).max(CLIENT_MIN)
}

/// Clients attached to any session now.
pub fn attached() -> usize {
    CLIENTS.load(Ordering::Relaxed)
}

/// One client's share of [`BUDGET`] now: what its queue may hold (and what its line may have
/// on its way).
pub fn share() -> usize {
    share_of(attached())
}

#[derive(Clone, Debug)]
pub enum Output {
    Data(Stream, bytes::Bytes),
    /// The process ended (after its output).
    Exit(Exit),
    /// The launch failed.
    Failed(LaunchError),
}

impl Output {
    fn cost(&self) -> usize {
        match self {
            Output::Data(_, d) => d.len() + ENTRY_COST,
            _ => ENTRY_COST,
        }
    }
}

/// The bytes in one client's queue, and a wake-up when the client takes some.
#[derive(Default)]
struct Level {
    bytes: AtomicUsize,
    taken: Notify,
}

/// The sending side of one client's queue (counted in [`CLIENTS`] while it lives).
struct Client {
    id: u64,
    tx: mpsc::UnboundedSender<Output>,
    level: Arc<Level>,
    /// The clients attached everywhere ([`CLIENTS`]; a test's own count in tests).
    everywhere: &'static AtomicUsize,
}

impl Client {
    fn new(
        id: u64,
        tx: mpsc::UnboundedSender<Output>,
        everywhere: &'static AtomicUsize,
    ) -> (Self, Arc<Level>) {
        everywhere.fetch_add(1, Ordering::Relaxed);
        let level = Arc::new(Level::default());
        (
            Self {
                id,
                tx,
                level: level.clone(),
                everywhere,
            },
            level,
        )
    }

    /// Queues `out` once the queue has room for it (an empty queue always has), waiting at most
    /// [`STALL`] for the client to take something. False when the client is gone or stalled.
    async fn deliver(&self, out: Output) -> bool {
        let cost = out.cost();
        let room = || {
            let queued = self.level.bytes.load(Ordering::Acquire);
            queued == 0 || queued + cost <= share_of(self.everywhere.load(Ordering::Relaxed))
        };
        let deadline = tokio::time::Instant::now() + STALL;
        loop {
            // Most chunks find room: the wake-up is registered only to wait, then the room is
            // looked at again (the client may have taken something in between).
            if !room() {
                if self.tx.is_closed() {
                    return false;
                }
                let taken = self.level.taken.notified();
                tokio::pin!(taken);
                taken.as_mut().enable();
                if !room() && tokio::time::timeout_at(deadline, taken).await.is_err() {
                    tracing::warn!(
                        client = self.id,
                        "an attached client made no progress for {STALL:?}; dropping it"
                    );
                    return false;
                }
                continue;
            }
            self.level.bytes.fetch_add(cost, Ordering::AcqRel);
            return self.tx.send(out).is_ok();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.everywhere.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The receiving side of one client's queue.
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Output>,
    level: Arc<Level>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A session waiting for room in this queue learns at once that its client is gone
        // (a detach while output streams), instead of after [`STALL`].
        self.level.taken.notify_waiters();
    }
}

impl Subscription {
    /// The next output, `None` once the session dropped this client.
    pub async fn recv(&mut self) -> Option<Output> {
        let out = self.rx.recv().await?;
        self.level.bytes.fetch_sub(out.cost(), Ordering::AcqRel);
        self.level.taken.notify_waiters();
        Some(out)
    }
}

pub struct Fanout {
    clients: Mutex<Vec<Arc<Client>>>,
    next: AtomicU64,
    emptied: Notify,
    everywhere: &'static AtomicUsize,
}

impl Default for Fanout {
    fn default() -> Self {
        Self::counted_in(&CLIENTS)
    }
}

impl Fanout {
    /// A fanout whose clients are counted in `everywhere` (the tether's count unless a test's).
    fn counted_in(everywhere: &'static AtomicUsize) -> Self {
        Self {
            clients: Mutex::default(),
            next: AtomicU64::new(0),
            emptied: Notify::new(),
            everywhere,
        }
    }

    pub fn subscribe(&self) -> (u64, Subscription) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (client, level) = Client::new(id, tx, self.everywhere);
        self.lock().push(Arc::new(client));
        (id, Subscription { rx, level })
    }

    pub fn unsubscribe(&self, id: u64) {
        let mut clients = self.lock();
        clients.retain(|c| c.id != id);
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `out` to every client, waiting for a full one at most [`STALL`]; drops those that
    /// stalled or are gone.
    pub async fn send(&self, out: Output) {
        let clients: Vec<Arc<Client>> = self.lock().clone();
        let mut gone = Vec::new();
        for c in clients {
            if !c.deliver(out.clone()).await {
                gone.push(c.id);
            }
        }
        if !gone.is_empty() {
            let mut clients = self.lock();
            clients.retain(|c| !gone.contains(&c.id));
            if clients.is_empty() {
                self.emptied.notify_waiters();
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Bytes queued for the clients and not yet taken by them.
    pub fn backlog(&self) -> usize {
        self.lock()
            .iter()
            .map(|c| c.level.bytes.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_that_detaches_while_the_session_waits_for_it_releases_it_at_once() {
        let everywhere: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let f = Arc::new(Fanout::counted_in(everywhere));
        let (_, rx) = f.subscribe();
        let chunk = bytes::Bytes::from(vec![b'x'; 4096]);
        let fits = share_of(1) / (chunk.len() + ENTRY_COST);
        for _ in 0..fits {
            f.send(Output::Data(Stream::Stdout, chunk.clone())).await;
        }
        let t0 = tokio::time::Instant::now();
        let waiting = tokio::spawn({
            let (f, chunk) = (f.clone(), chunk.clone());
            async move { f.send(Output::Data(Stream::Stdout, chunk)).await }
        });
        // The session waits for room; the client goes without taking anything.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(rx);
        waiting.await.unwrap();
        assert!(t0.elapsed() < STALL, "held {:?}", t0.elapsed());
        assert!(f.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_throttles_a_stalled_one_is_dropped() {
        let everywhere: &'static AtomicUsize = Box::leak(Box::new(AtomicUsize::new(0)));
        let f = Fanout::counted_in(everywhere);
        let (_stalled, _stalled_rx) = f.subscribe();
        let (_slow, mut slow_rx) = f.subscribe();
        assert_eq!(everywhere.load(Ordering::Relaxed), 2);
        // Each client's share of the budget is queued without waiting.
        let chunk = bytes::Bytes::from(vec![b'x'; 4096]);
        let fits = share_of(2) / (chunk.len() + ENTRY_COST);
        let t0 = tokio::time::Instant::now();
        for _ in 0..fits {
            f.send(Output::Data(Stream::Stdout, chunk.clone())).await;
        }
        assert_eq!(t0.elapsed(), std::time::Duration::ZERO, "nothing waited");
        assert_eq!(f.backlog(), 2 * fits * (chunk.len() + ENTRY_COST));
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
        assert_eq!(everywhere.load(Ordering::Relaxed), 1);
        f.send(Output::Exit(Exit::Code(0))).await;
        drop(f);
        assert_eq!(
            reader.await.unwrap(),
            fits + 2,
            "every chunk and the exit reached the slow client"
        );
        assert_eq!(everywhere.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_hundred_clients_share_the_budget_one_gets_it_all() {
        assert_eq!(share_of(0), BUDGET);
        assert_eq!(share_of(1), BUDGET);
        assert_eq!(share_of(10), BUDGET / 10);
        assert_eq!(share_of(100), CLIENT_MIN);
    }
}
