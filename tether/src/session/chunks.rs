//! The buffers sessions' output is read into: a few large ones for all sessions together, lent
//! out one read at a time and handed on without a copy (the clients' queues, the connection and
//! the output log share one), so that the tether's memory is bounded by the pool however many
//! sessions stream, while each read takes a whole pipe's worth.
//!
//! Why large: each read costs the tether a wake-up, a task turn and a packet's work, and frees
//! room in a full pipe, which wakes the process writing it. With a hundred sessions streaming,
//! reads of 16 KiB cost the sessions' own processes twice the CPU per byte they cost alone.
//! Why a pool: a 64 KiB buffer allocated and freed for every read went back to the system and
//! was faulted in again each time (musl's allocator), which cost more than the reads saved.
//! Why bounded for all sessions: a hundred streaming sessions each holding a buffer of its own
//! would hold 6 MiB; when the pool is out, a streaming session waits its turn for a buffer (its
//! process waits on its pipe meanwhile, at no cost) rather than reading small, unless the pool
//! stays held ([`Turn`]).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The size of the pool's buffers: the most one read takes (a Linux pipe holds 64 KiB).
pub(crate) const READ_SIZE: usize = 64 * 1024;
/// Buffers lent out at once, all sessions together (1 MiB: a core's second-level cache here; 32
/// buffers, spread over more memory, gave 100 streaming sessions about 4 % less throughput).
const BUFFERS: usize = 16;
/// A read shorter than this is copied out and its buffer given back at once: a prompt, a line or
/// a terminal's read (a pty gives at most a few KiB at a time) does not hold 64 KiB while it
/// waits for a client.
const COPY_BELOW: usize = 16 * 1024;
/// How long a streaming session's read waits for a buffer before it takes [`SMALL_READ`] bytes
/// into a copy of its own. Buffers come back at the line's pace (1 MiB in a few milliseconds);
/// this bounds the wait when they do not: clients that stopped reading hold theirs until they are
/// dropped ([`super::fanout::STALL`]), and a session must read to find out that its client is
/// gone. A session whose last read was short (a prompt, an echo) does not wait at all.
const WAIT: Duration = Duration::from_millis(100);
/// What a read takes without a buffer of the pool.
const SMALL_READ: usize = 16 * 1024;
/// How long the pool's idle buffers are kept after the last lease.
const KEEP_IDLE: Duration = Duration::from_secs(1);

pub struct Pool {
    size: usize,
    free: Mutex<Vec<Box<[u8]>>>,
    permits: Arc<Semaphore>,
    /// Leases made so far (the trimmer's sign of use).
    leases: AtomicU64,
    /// A trimmer task runs.
    trimming: AtomicBool,
    /// The runtime of the first lease: the trimmer runs there when a buffer comes back on a thread
    /// outside any runtime (the output log's).
    runtime: OnceLock<tokio::runtime::Handle>,
}

/// One buffer of the pool, lent out until it is dropped (with every [`Bytes`] made of it).
pub struct Lease {
    buf: Option<Box<[u8]>>,
    len: usize,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(buffers: usize, size: usize) -> Arc<Self> {
        Arc::new(Self {
            size,
            free: Mutex::default(),
            permits: Arc::new(Semaphore::new(buffers)),
            leases: AtomicU64::new(0),
            trimming: AtomicBool::new(false),
            runtime: OnceLock::new(),
        })
    }

    /// A buffer once one is free, or `None` after `wait`. Waiters are served in turn. Call
    /// inside the runtime.
    pub async fn lease(self: &Arc<Self>, wait: Duration) -> Option<Lease> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) if wait.is_zero() => return None,
            Err(_) => tokio::time::timeout(wait, self.permits.clone().acquire_owned())
                .await
                .ok()?
                .ok()?,
        };
        self.leases.fetch_add(1, Ordering::Relaxed);
        if self.runtime.get().is_none() {
            let _ = self.runtime.set(tokio::runtime::Handle::current());
        }
        let buf = self
            .lock()
            .pop()
            .unwrap_or_else(|| vec![0; self.size].into_boxed_slice());
        Some(Lease {
            buf: Some(buf),
            len: 0,
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// Buffers kept for the next leases.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.lock().len()
    }

    /// Keeps `buf` for the next lease, and makes sure a trimmer will free it once the pool is
    /// idle: a tether that streamed once does not keep 1 MiB for good.
    fn give_back(self: &Arc<Self>, buf: Box<[u8]>) {
        self.lock().push(buf);
        if self.trimming.load(Ordering::Acquire) || self.trimming.swap(true, Ordering::AcqRel) {
            return;
        }
        // The runtime this buffer comes back on, else (the output log's thread) the one of the
        // first lease: the tether has one; a test process has one per test.
        let Some(rt) = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.get().cloned())
        else {
            self.trimming.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::downgrade(self);
        rt.spawn(async move {
            let mut seen = u64::MAX;
            loop {
                tokio::time::sleep(KEEP_IDLE).await;
                let Some(pool) = pool.upgrade() else { return };
                let now = pool.leases.load(Ordering::Relaxed);
                if now == seen {
                    // The flag falls first: a buffer given back from here on starts a trimmer
                    // of its own.
                    pool.trimming.store(false, Ordering::Release);
                    pool.lock().clear();
                    return;
                }
                seen = now;
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<[u8]>>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Lease {
    /// Reads once from `fd` into the buffer: `None` at end of file; a short read is copied out
    /// and the buffer given back.
    fn read(mut self, fd: &OwnedFd) -> std::io::Result<Option<Bytes>> {
        let buf = self
            .buf
            .as_mut()
            .expect("a lease holds its buffer until dropped");
        let n = nix::unistd::read(fd.as_fd(), buf)?;
        Ok(match n {
            0 => None,
            n if n < COPY_BELOW => Some(Bytes::copy_from_slice(&buf[..n])),
            n => {
                self.len = n;
                Some(Bytes::from_owner(self))
            }
        })
    }
}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[..self.len])
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

/// The sessions' pool.
static POOL: LazyLock<Arc<Pool>> = LazyLock::new(|| Pool::new(BUFFERS, READ_SIZE));

thread_local! {
    /// The buffer of a read that found no buffer of the pool (one per runtime thread).
    static SMALL_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; SMALL_READ]);
}

/// How one output stream asks the pool for buffers. A session that streams waits its turn for
/// one (its process waits on its full pipe meanwhile, at no cost), while an interactive one's
/// few bytes never wait behind the buffers other sessions' bulk output holds (a full output log
/// queue, a slow client). A wait that came to nothing means the pool is held, most likely by
/// clients that stopped reading (until [`super::fanout::STALL`] lets them go): the stream then
/// stops waiting and reads into copies of its own, at full speed as without a pool, until a
/// buffer is free again.
#[derive(Default)]
pub struct Turn {
    last: usize,
    starved: bool,
}

impl Turn {
    /// A buffer of the sessions' pool for the next read, if one is free now or, while this
    /// stream streams and has not been starved, within [`WAIT`].
    pub async fn lease(&mut self) -> Option<Lease> {
        self.lease_from(&POOL).await
    }

    async fn lease_from(&mut self, pool: &Arc<Pool>) -> Option<Lease> {
        let wait = if self.starved || self.last < COPY_BELOW {
            Duration::ZERO
        } else {
            WAIT
        };
        let lease = pool.lease(wait).await;
        self.starved = lease.is_none() && (self.starved || !wait.is_zero());
        lease
    }

    /// The last read took `n` bytes.
    pub fn took(&mut self, n: usize) {
        self.last = n;
    }
}

/// One read of `fd`: into `lease` when there is one, else at most [`SMALL_READ`] bytes copied
/// out. `None` at end of file.
pub fn read(fd: &OwnedFd, lease: Option<Lease>) -> std::io::Result<Option<Bytes>> {
    match lease {
        Some(l) => l.read(fd),
        None => SMALL_BUF.with_borrow_mut(|buf| {
            let n = nix::unistd::read(fd.as_fd(), buf)?;
            Ok((n > 0).then(|| Bytes::copy_from_slice(&buf[..n])))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (r, std::fs::File::from(w))
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_lends_its_buffers_only_and_the_next_waiter_gets_one_given_back() {
        let pool = Pool::new(2, 64);
        let a = pool.lease(WAIT).await.expect("a first buffer");
        let b = pool.lease(WAIT).await.expect("a second buffer");
        assert!(
            pool.lease(WAIT).await.is_none(),
            "a third waits, then goes without"
        );
        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.lease(Duration::from_secs(60)).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(a);
        assert!(
            waiter.await.unwrap(),
            "the buffer given back goes to the waiter"
        );
        drop(b);
        assert_eq!(pool.idle(), 2, "both buffers are kept for the next leases");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_read_is_copied_and_its_buffer_comes_back_at_once() {
        let pool = Pool::new(1, READ_SIZE);
        let (r, mut w) = pipe();
        w.write_all(b"$ ").unwrap();
        let lease = pool.lease(WAIT).await.unwrap();
        let got = lease.read(&r).unwrap().expect("two bytes");
        assert_eq!(&got[..], b"$ ");
        assert_eq!(pool.idle(), 1, "the buffer is back while the bytes live on");
        assert!(pool.lease(WAIT).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_read_holds_its_buffer_until_its_last_holder_drops_it() {
        let pool = Pool::new(1, READ_SIZE);
        let (r, mut w) = pipe();
        let data: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        w.write_all(&data).unwrap();
        let lease = pool.lease(WAIT).await.unwrap();
        let got = lease.read(&r).unwrap().expect("the bytes written");
        assert_eq!(&got[..], &data[..], "read whole, not copied");
        let client = got.slice(100..);
        drop(got);
        assert!(pool.lease(WAIT).await.is_none(), "a slice still holds it");
        drop(client);
        assert!(pool.lease(WAIT).await.is_some());
        drop(w);
        let lease = pool.lease(WAIT).await.unwrap();
        assert!(lease.read(&r).unwrap().is_none(), "end of file");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_buffers_are_freed_once_the_pool_goes_unused() {
        let pool = Pool::new(4, 64);
        let leases = [
            pool.lease(WAIT).await.unwrap(),
            pool.lease(WAIT).await.unwrap(),
        ];
        drop(leases);
        assert_eq!(pool.idle(), 2);
        // Used now and then: kept (unused, they would be gone after two KEEP_IDLE).
        for _ in 0..2 {
            tokio::time::sleep(KEEP_IDLE / 2).await;
            drop(pool.lease(WAIT).await.unwrap());
            tokio::time::sleep(KEEP_IDLE / 2).await;
        }
        tokio::time::sleep(KEEP_IDLE / 2).await;
        assert_eq!(pool.idle(), 2, "in use a moment ago");
        tokio::time::sleep(KEEP_IDLE * 2).await;
        assert_eq!(pool.idle(), 0, "freed once unused for a while");
        // And the pool grows and is trimmed again.
        drop(pool.lease(WAIT).await.unwrap());
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(KEEP_IDLE * 3).await;
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_streaming_session_waits_for_a_buffer_and_not_once_starved() {
        let pool = Pool::new(1, 64);
        let held = pool.lease(WAIT).await.unwrap();
        let mut turn = Turn::default();
        turn.took(12);
        let t = tokio::time::Instant::now();
        assert!(turn.lease_from(&pool).await.is_none());
        assert_eq!(t.elapsed(), Duration::ZERO, "after a short read: no wait");
        turn.took(READ_SIZE);
        let t = tokio::time::Instant::now();
        assert!(turn.lease_from(&pool).await.is_none());
        assert_eq!(t.elapsed(), WAIT, "after a full read: waits its turn");
        // Starved: the next reads do not wait while the pool stays held.
        turn.took(SMALL_READ);
        let t = tokio::time::Instant::now();
        assert!(turn.lease_from(&pool).await.is_none());
        assert_eq!(t.elapsed(), Duration::ZERO, "starved: no wait");
        drop(held);
        assert!(
            turn.lease_from(&pool).await.is_some(),
            "a free one is taken"
        );
        // Fed again: it waits its turn again.
        let _held = pool.lease(WAIT).await.unwrap();
        let t = tokio::time::Instant::now();
        assert!(turn.lease_from(&pool).await.is_none());
        assert_eq!(t.elapsed(), WAIT, "fed again: waits its turn again");
    }

    #[test]
    fn without_a_buffer_a_read_takes_a_small_copy() {
        let (r, mut w) = pipe();
        w.write_all(&vec![7u8; SMALL_READ + 100]).unwrap();
        let got = read(&r, None).unwrap().unwrap();
        assert_eq!(got.len(), SMALL_READ);
        assert_eq!(read(&r, None).unwrap().unwrap().len(), 100);
    }
}
