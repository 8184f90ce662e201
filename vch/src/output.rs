//! A session's output to this process's stdout and stderr, written by a thread of its own.
//!
//! tokio's `stdout()` hands every write to its blocking pool and waits for it: a thread wake-up
//! and a copy per SSH packet, which held `vch attach` into a pipe to a third of what OpenSSH's
//! client moves. Here the async side queues each chunk as it is (no copy) and goes on reading
//! the connection; the thread writes what has queued up with one `writev`, so the connection and
//! the pipe are worked at the same time. The queue is bounded in bytes: a slow reader of the
//! pipe throttles the connection (and, through the SSH window, the session), nothing is dropped.

use std::collections::VecDeque;
use std::io::{IoSlice, Write as _};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::Semaphore;

/// Bytes queued for the thread before a writer waits.
const QUEUE_BYTES: usize = 4 << 20;
/// Chunks in one `writev` at most (the kernel takes 1024).
const BATCH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fd {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Queue {
    chunks: VecDeque<(Fd, Vec<u8>)>,
    /// No more chunks will come.
    closed: bool,
    /// Why the thread stopped writing (a closed pipe, a full disk).
    failed: Option<std::io::ErrorKind>,
    /// The thread waits for work (otherwise it finds the new chunk itself: no wake-up owed).
    waiting: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Tells the thread there is work (or the end).
    work: Condvar,
    /// Room in the queue, in bytes.
    room: Semaphore,
}

/// The writer: `write` from async code, `finish` once at the end.
pub struct Output {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Output {
    /// Starts the writing thread on duplicates of descriptors 1 and 2.
    pub fn start() -> std::io::Result<Self> {
        Self::with(dup(1)?, dup(2)?)
    }

    /// The same on any two files (tests).
    pub fn with(stdout: std::fs::File, stderr: std::fs::File) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            room: Semaphore::new(QUEUE_BYTES),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || write_loop(&s, stdout, stderr))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `data` for `fd`, waiting while the queue is full. Fails once writing has failed
    /// (the reader of a pipe went away).
    pub async fn write(&self, fd: Fd, data: Vec<u8>) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let n = data.len().min(QUEUE_BYTES) as u32;
        match self.shared.room.acquire_many(n).await {
            Ok(permit) => permit.forget(),
            Err(_) => return Err(self.failure()),
        }
        let mut q = lock(&self.shared.queue);
        if let Some(kind) = q.failed {
            return Err(kind.into());
        }
        q.chunks.push_back((fd, data));
        let wake = std::mem::take(&mut q.waiting);
        drop(q);
        if wake {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Waits until everything queued is written (blocking: the thread is joined); the failure
    /// if writing failed.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.close();
        match lock(&self.shared.queue).failed {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }

    fn close(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn failure(&self) -> std::io::Error {
        lock(&self.shared.queue)
            .failed
            .unwrap_or(std::io::ErrorKind::BrokenPipe)
            .into()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn dup(fd: i32) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsFd as _;
    let borrowed = match fd {
        1 => std::io::stdout().as_fd().try_clone_to_owned()?,
        _ => std::io::stderr().as_fd().try_clone_to_owned()?,
    };
    Ok(std::fs::File::from(borrowed))
}

fn write_loop(shared: &Shared, mut stdout: std::fs::File, mut stderr: std::fs::File) {
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    loop {
        // Take every chunk queued for the same descriptor, up to a batch.
        let fd = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(&(fd, _)) = q.chunks.front() {
                    while batch.len() < BATCH && q.chunks.front().is_some_and(|c| c.0 == fd) {
                        batch.extend(q.chunks.pop_front().map(|c| c.1));
                    }
                    break fd;
                }
                if q.closed || q.failed.is_some() {
                    return;
                }
                q.waiting = true;
                q = shared.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let file = match fd {
            Fd::Stdout => &mut stdout,
            Fd::Stderr => &mut stderr,
        };
        let bytes: usize = batch.iter().map(Vec::len).sum();
        let written = write_all_vectored(file, &batch);
        batch.clear();
        shared.room.add_permits(bytes.min(QUEUE_BYTES));
        if let Err(e) = written {
            let mut q = lock(&shared.queue);
            q.failed = Some(e.kind());
            q.chunks.clear();
            drop(q);
            // Writers waiting for room learn of it.
            shared.room.close();
        }
    }
}

/// Writes every byte of `chunks`, in order, with as few `writev`s as the descriptor allows.
fn write_all_vectored(file: &mut std::fs::File, chunks: &[Vec<u8>]) -> std::io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    while i < chunks.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&chunks[i][off..])
            .chain(chunks[i + 1..].iter().map(Vec::as_slice))
            .map(IoSlice::new)
            .collect();
        let mut n = match file.write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while i < chunks.len() && n >= chunks[i].len() - off {
            n -= chunks[i].len() - off;
            i += 1;
            off = 0;
        }
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (std::fs::File::from(r), std::fs::File::from(w))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_byte_in_order_on_its_own_descriptor_through_a_slow_reader() {
        let (mut out_r, out_w) = pipe();
        let (mut err_r, err_w) = pipe();
        let output = Output::with(out_w, err_w).unwrap();
        // More than the queue and the pipe hold: the writer waits for the reader, loses nothing.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1000];
            loop {
                std::thread::sleep(std::time::Duration::from_micros(50));
                match out_r.read(&mut buf).unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        let mut want = Vec::new();
        for i in 0..3000u32 {
            let chunk: Vec<u8> = (0..(i % 7000) + 1).map(|j| (i + j) as u8).collect();
            want.extend_from_slice(&chunk);
            output.write(Fd::Stdout, chunk).await.unwrap();
            if i % 1000 == 0 {
                output
                    .write(Fd::Stderr, format!("e{i}\n").into_bytes())
                    .await
                    .unwrap();
            }
        }
        tokio::task::spawn_blocking(move || output.finish())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reader.join().unwrap(), want);
        let mut err = String::new();
        err_r.read_to_string(&mut err).unwrap();
        assert_eq!(err, "e0\ne1000\ne2000\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_that_goes_away_fails_the_writes_instead_of_hanging() {
        let (out_r, out_w) = pipe();
        let (_err_r, err_w) = pipe();
        drop(out_r);
        let output = Output::with(out_w, err_w).unwrap();
        let mut failed = None;
        for _ in 0..10_000 {
            if let Err(e) = output.write(Fd::Stdout, vec![b'x'; 64 * 1024]).await {
                failed = Some(e.kind());
                break;
            }
        }
        assert_eq!(failed, Some(std::io::ErrorKind::BrokenPipe));
        assert_eq!(
            output.finish().unwrap_err().kind(),
            std::io::ErrorKind::BrokenPipe
        );
    }
}
