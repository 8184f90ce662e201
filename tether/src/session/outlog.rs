//! The output log (COM3, `/dev/ttyS2`, or a file in process mode): every session's output, framed
//! as VIC's `output.log`, written on a thread of its own so that a slow device never stalls the
//! runtime. The queue is bounded: when the device cannot keep up the output pumps wait, which
//! throttles the process through its pipe, but nothing is dropped.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether_proto::iolog::{encode_entry, LineFramer, Stream};
use tokio::sync::{mpsc, oneshot};

/// Opens the output log's device, on the output log's thread: until it returns, the log holds
/// what the sessions write. `None`: no output log.
pub type LogOpener = Box<dyn FnOnce() -> Option<Box<dyn Write + Send>> + Send>;

/// How long a line without its newline waits before it is written as an entry of its own.
pub const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(500);
/// Chunks queued for the log thread (each one read, shared with the clients' queues; a large one
/// is a buffer of the sessions' pool, which bounds them all together).
const QUEUE: usize = 64;
/// What the log thread gathers from the queue before it writes.
const GATHER_BYTES: usize = 128 * 1024;

enum Msg {
    Data {
        session: Arc<str>,
        exec: bool,
        stream: Stream,
        time_nanos: u64,
        data: bytes::Bytes,
    },
    /// Write what is pending for `session` (all sessions when `None`) and flush the device.
    Flush {
        session: Option<Arc<str>>,
        done: oneshot::Sender<()>,
    },
    Tick,
}

#[derive(Clone)]
pub struct OutputLog {
    tx: Option<mpsc::Sender<Msg>>,
}

struct Pending {
    framer: LineFramer,
    exec: bool,
    since: Instant,
}

pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl OutputLog {
    /// No output log.
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Writes to the device `open` gives, from a new thread that opens it first (meanwhile the
    /// queue holds what comes, up to its bound). Call inside the runtime (a ticker task is
    /// started).
    pub fn start(open: LogOpener) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        std::thread::Builder::new()
            .name("output-log".into())
            .spawn(move || {
                let mut sink = open().unwrap_or_else(|| Box::new(std::io::sink()));
                let mut pending = Pendings::new();
                let mut buf = Vec::with_capacity(GATHER_BYTES + super::chunks::READ_SIZE);
                while let Some(msg) = rx.blocking_recv() {
                    handle(msg, &mut pending, &mut buf, &mut sink);
                    // What else is queued is gathered into one write; while output keeps
                    // coming this thread yields its core before it looks again, rather than
                    // parking at once: a pump's send then rarely has to wake it (with a hundred
                    // sessions streaming, a wake-up per read was a context switch per read on
                    // both sides, and 0.66x of one session's throughput became 0.76x without).
                    loop {
                        let mut got = 0;
                        while buf.len() < GATHER_BYTES {
                            match rx.try_recv() {
                                Ok(msg) => {
                                    handle(msg, &mut pending, &mut buf, &mut sink);
                                    got += 1;
                                }
                                Err(_) => break,
                            }
                        }
                        write_out(&mut sink, &mut buf);
                        if got == 0 {
                            break;
                        }
                        if got < QUEUE / 2 {
                            std::thread::yield_now();
                        }
                    }
                }
                let _ = sink.flush();
            })
            .expect("spawning the output-log thread");
        let ticker = tx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PARTIAL_LINE_DELAY / 2);
            loop {
                every.tick().await;
                if ticker.send(Msg::Tick).await.is_err() {
                    return;
                }
            }
        });
        Self { tx: Some(tx) }
    }

    /// Queues output of `session`; waits while the queue is full.
    pub async fn write(&self, session: &Arc<str>, exec: bool, stream: Stream, data: bytes::Bytes) {
        if let Some(tx) = &self.tx {
            let msg = Msg::Data {
                session: session.clone(),
                exec,
                stream,
                time_nanos: now_nanos(),
                data,
            };
            let _ = tx.send(msg).await;
        }
    }

    /// Returns once everything queued so far for `session` (or for all) is on the device.
    pub async fn flush(&self, session: Option<&Arc<str>>) {
        if let Some(tx) = &self.tx {
            let (done, wait) = oneshot::channel();
            let msg = Msg::Flush {
                session: session.cloned(),
                done,
            };
            if tx.send(msg).await.is_ok() {
                let _ = wait.await;
            }
        }
    }
}

type Pendings = HashMap<(Arc<str>, Stream), Pending>;

/// Frames `msg` into `buf` (a flush writes `buf` out and flushes the device at once).
fn handle(msg: Msg, pending: &mut Pendings, buf: &mut Vec<u8>, sink: &mut Box<dyn Write + Send>) {
    match msg {
        Msg::Data {
            session,
            exec,
            stream,
            time_nanos,
            data,
        } => {
            let p = pending.entry((session, stream)).or_insert_with(|| Pending {
                framer: LineFramer::default(),
                exec,
                since: Instant::now(),
            });
            if !p.framer.has_pending() {
                p.since = Instant::now();
            }
            p.framer.push_each(&data, |entry| {
                encode_entry(buf, time_nanos, stream, exec, entry)
            });
        }
        Msg::Flush { session, done } => {
            for ((s, stream), p) in pending.iter_mut() {
                if session.as_ref().is_none_or(|want| want == s) {
                    if let Some(entry) = p.framer.flush() {
                        encode_entry(buf, now_nanos(), *stream, p.exec, &entry);
                    }
                }
            }
            if let Some(want) = &session {
                pending.retain(|(s, _), _| s != want);
            }
            write_out(sink, buf);
            let _ = sink.flush();
            let _ = done.send(());
        }
        Msg::Tick => {
            for ((_, stream), p) in pending.iter_mut() {
                if p.framer.has_pending() && p.since.elapsed() >= PARTIAL_LINE_DELAY {
                    if let Some(entry) = p.framer.flush() {
                        encode_entry(buf, now_nanos(), *stream, p.exec, &entry);
                    }
                }
            }
        }
    }
}

fn write_out(sink: &mut Box<dyn Write + Send>, buf: &mut Vec<u8>) {
    if !buf.is_empty() {
        if let Err(e) = sink.write_all(buf) {
            tracing::warn!("output log: {e}");
        }
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A device that keeps each write apart.
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn what_is_queued_goes_out_in_one_write_in_order() {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let (open_now, opened) = std::sync::mpsc::channel::<()>();
        let device = writes.clone();
        // The device opens once ten reads are queued.
        let log = OutputLog::start(Box::new(move || {
            let _ = opened.recv();
            Some(Box::new(Writes(device)) as Box<dyn Write + Send>)
        }));
        let id: Arc<str> = "s".into();
        for i in 0..10 {
            let line = format!("line {i}\n");
            log.write(
                &id,
                false,
                Stream::Stdout,
                bytes::Bytes::copy_from_slice(line.as_bytes()),
            )
            .await;
        }
        open_now.send(()).unwrap();
        log.flush(None).await;
        let writes = writes.lock().unwrap().clone();
        assert_eq!(writes.len(), 1, "ten queued reads go out in one write");
        let lines: Vec<String> = tether_proto::iolog::decode(&writes[0])
            .into_iter()
            .map(|e| String::from_utf8(e.data).unwrap())
            .collect();
        let want: Vec<String> = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(lines, want);
    }
}
