//! The guestinfo transport on a thread of its own (its calls block: port I/O, a serial line, a
//! file), reached from async code; and the read-write state keys the tether owns, written in an
//! order that a VCH reading half-written state interprets correctly.
//!
//! Owns: the guestinfo transport (the VMware backdoor in [`backdoor`], the others chosen in
//! [`open`]), the config read from it, the state keys written back and their order. Uses: `sys`.
//! Must not touch sessions or the attach line: they publish through [`Guestinfo`].

pub mod backdoor;
pub mod open;

pub use open::{open_guestinfo, virtio_port};
use std::sync::mpsc;

use tether_proto::config::{ExecutorConfig, SessionKind};
use tether_proto::extraconfig::{self, Path};
use tether_proto::guestinfo::{AsSource, GuestInfo};
use tokio::sync::oneshot;

type Decoded = Result<(ExecutorConfig, Vec<String>), String>;

enum Request {
    Decode(Box<ExecutorConfig>, oneshot::Sender<Decoded>),
    /// Only the container's ID (`common/id`), for a config that cannot be read whole.
    DecodeId(oneshot::Sender<Option<String>>),
    /// Keys to write, and what they are (for the debug log when writing fails).
    Write(Vec<(String, String)>, String),
    /// Answered once everything queued before it is done.
    Sync(oneshot::Sender<()>),
    /// A TCLO poll (the previous reply out, the next request back) for the toolbox.
    Tclo(Vec<u8>, mpsc::Sender<Raw>),
    /// One of the toolbox's RPCI requests.
    Rpci(Vec<u8>, mpsc::Sender<Raw>),
}

/// A raw exchange's outcome: `None` when the transport has no such channel.
pub type Raw = Result<Option<Vec<u8>>, String>;

/// A handle on the guestinfo thread.
#[derive(Clone)]
pub struct Guestinfo {
    tx: mpsc::Sender<Request>,
}

impl Guestinfo {
    /// Moves `gi` to a new thread that serves requests until every handle is dropped.
    pub fn start(mut gi: Box<dyn GuestInfo>) -> Self {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("guestinfo".into())
            .spawn(move || {
                let mut next = None;
                loop {
                    let req = match next.take() {
                        Some(r) => r,
                        None => match rx.recv() {
                            Ok(r) => r,
                            Err(_) => break,
                        },
                    };
                    // Writes queued back to back go as one (in their order): a transport that
                    // rewrites a whole file per write (the .vmx file) would otherwise take
                    // quadratic time when thousands of sessions start at once.
                    // A sync among them is answered once the merged write is done (everything
                    // queued before it is, and more).
                    let mut syncs = Vec::new();
                    let req = match req {
                        Request::Write(mut pairs, mut what) => {
                            while let Ok(more) = rx.try_recv() {
                                match more {
                                    Request::Write(p, w) => {
                                        pairs.extend(p);
                                        if !what.contains(&w) {
                                            what.push_str(", ");
                                            what.push_str(&w);
                                        }
                                    }
                                    Request::Sync(done) => syncs.push(done),
                                    other => {
                                        next = Some(other);
                                        break;
                                    }
                                }
                            }
                            Request::Write(pairs, what)
                        }
                        other => other,
                    };
                    match req {
                        Request::Decode(mut cfg, reply) => {
                            let result = gi
                                .refresh()
                                .map_err(|e| e.to_string())
                                .and_then(|()| {
                                    let mut source = AsSource(gi.as_mut());
                                    cfg.decode_from(&mut source)
                                        .and_then(|warnings| {
                                            cfg.forget_unlisted_execs(&mut source)?;
                                            Ok(warnings)
                                        })
                                        .map_err(|e| e.to_string())
                                })
                                .map(|warnings| (*cfg, warnings));
                            let _ = reply.send(result);
                        }
                        Request::DecodeId(reply) => {
                            let mut common = tether_proto::config::Common::default();
                            let at = Path::root().field("common");
                            let id =
                                extraconfig::decode(&mut common, &at, &mut AsSource(gi.as_mut()))
                                    .ok()
                                    .map(|_| common.id)
                                    .filter(|id| !id.is_empty());
                            let _ = reply.send(id);
                        }
                        Request::Sync(done) => {
                            let _ = done.send(());
                        }
                        Request::Tclo(reply, answer) => {
                            let _ = answer.send(gi.tclo(&reply).map_err(|e| e.to_string()));
                        }
                        Request::Rpci(request, answer) => {
                            let _ = answer.send(gi.rpci(&request).map_err(|e| e.to_string()));
                        }
                        Request::Write(pairs, what) => {
                            // As VIC's guest sink: host-only keys dropped, empty values as <nil>.
                            let pairs: Vec<(String, String)> = pairs
                                .into_iter()
                                .filter(|(k, _)| !extraconfig::is_read_only_key(k))
                                .map(|(k, v)| {
                                    if v.is_empty() {
                                        (k, extraconfig::NIL.to_string())
                                    } else {
                                        (k, v)
                                    }
                                })
                                .collect();
                            if let Err(e) = gi.set_many(&pairs) {
                                tracing::error!("guestinfo: writing {what}: {e}");
                            }
                        }
                    }
                    for done in syncs {
                        let _ = done.send(());
                    }
                }
            })
            .expect("spawning the guestinfo thread");
        Self { tx }
    }

    /// Decodes the config from guestinfo, merging into `cfg`.
    pub async fn decode(&self, cfg: ExecutorConfig) -> Decoded {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Decode(Box::new(cfg), tx))
            .map_err(|_| "the guestinfo thread is gone".to_string())?;
        rx.await
            .map_err(|_| "the guestinfo thread is gone".to_string())?
    }

    /// The container's ID alone (its session is the primary), when the whole config cannot be
    /// read.
    pub async fn container_id(&self) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::DecodeId(tx)).ok()?;
        rx.await.ok().flatten()
    }

    /// Queues `pairs` to be written in order after everything queued before (keys the host owns
    /// are dropped, empty values go as `<nil>`). A failure is reported in the debug log; a session
    /// never waits on guestinfo to go on.
    pub fn write(&self, what: &str, pairs: Vec<(String, String)>) {
        if self
            .tx
            .send(Request::Write(pairs, what.to_string()))
            .is_err()
        {
            tracing::error!("guestinfo: writing {what}: the guestinfo thread is gone");
        }
    }

    /// A TCLO poll through the transport, from a thread that may block (the toolbox's).
    pub fn tclo_blocking(&self, reply: Vec<u8>) -> Raw {
        self.raw(|tx| Request::Tclo(reply, tx))
    }

    /// One of the toolbox's RPCI requests, from a thread that may block.
    pub fn rpci_blocking(&self, request: Vec<u8>) -> Raw {
        self.raw(|tx| Request::Rpci(request, tx))
    }

    fn raw(&self, make: impl FnOnce(mpsc::Sender<Raw>) -> Request) -> Raw {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| "the guestinfo thread is gone".to_string())?;
        rx.recv()
            .map_err(|_| "the guestinfo thread is gone".to_string())?
    }

    /// Returns once everything queued so far has been written (or has failed).
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Sync(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The key of a read-write state field of a session, e.g. `["detail", "starttime"]`.
pub fn state_key(kind: SessionKind, id: &str, field: &[&'static str]) -> String {
    let mut path: Path = kind.path(id).rw();
    for f in field {
        path = path.field(f);
    }
    path.key()
}

/// Seconds since the epoch, as VIC's start and stop times are.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// State written for a session before it is launched (once per boot, and before a restart).
pub fn initial_state(kind: SessionKind, id: &str, run_block: bool) -> Vec<(String, String)> {
    vec![
        (state_key(kind, id, &["runblock"]), run_block.to_string()),
        (state_key(kind, id, &["detail", "stoptime"]), "0".into()),
        (state_key(kind, id, &["started"]), String::new()),
    ]
}

/// A successful launch: the start time before `started`, so that a reader who sees `started` also
/// sees a start time later than the stop time (running), never a stale one.
pub fn launched_state(kind: SessionKind, id: &str, start: i64) -> Vec<(String, String)> {
    vec![
        (state_key(kind, id, &["runblock"]), "false".into()),
        (
            state_key(kind, id, &["detail", "starttime"]),
            start.to_string(),
        ),
        (state_key(kind, id, &["started"]), "true".into()),
    ]
}

/// A failed launch: the status first, then `started` with the reason.
pub fn failed_state(
    kind: SessionKind,
    id: &str,
    status: i32,
    reason: &str,
) -> Vec<(String, String)> {
    vec![
        (state_key(kind, id, &["runblock"]), "false".into()),
        (state_key(kind, id, &["status"]), status.to_string()),
        (state_key(kind, id, &["started"]), reason.to_string()),
    ]
}

/// An exit: the status before the stop time, so that a reader who sees the session stopped
/// (stop time at or after start time) already sees its status.
pub fn exited_state(kind: SessionKind, id: &str, status: i32, stop: i64) -> Vec<(String, String)> {
    vec![
        (state_key(kind, id, &["status"]), status.to_string()),
        (
            state_key(kind, id, &["detail", "stoptime"]),
            stop.to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_have_vics_spelling() {
        assert_eq!(
            state_key(SessionKind::Session, "a", &["started"]),
            "guestinfo.vice..sessions|a.started"
        );
        assert_eq!(
            state_key(SessionKind::Exec, "e", &["detail", "stoptime"]),
            "guestinfo.vice..execs|e.detail.stoptime@non-persistent"
        );
    }

    #[test]
    fn write_orders_let_a_torn_read_conclude_correctly() {
        let launched = launched_state(SessionKind::Session, "a", 10);
        let pos = |v: &[(String, String)], k: &str| {
            v.iter().position(|(key, _)| key.ends_with(k)).unwrap()
        };
        assert!(pos(&launched, ".starttime") < pos(&launched, ".started"));
        let exited = exited_state(SessionKind::Session, "a", 3, 11);
        assert!(pos(&exited, ".status") < pos(&exited, ".stoptime"));
        let failed = failed_state(SessionKind::Session, "a", 127, "x");
        assert!(pos(&failed, ".status") < pos(&failed, ".started"));
    }
}
