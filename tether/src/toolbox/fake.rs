//! A container and an out channel for the toolbox's tests: each records what the toolbox did
//! (signals, reloads, halts, RPCI requests) in one shared log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Container, Out, Signal, Toolbox};

/// What the toolbox did, in order.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    /// Everything so far (and the log empty again).
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// A container with ID `id` (none: the config not read yet), one volume labelled `vol-data`,
/// the address 10.0.2.15, and a count of network changes a test may raise.
pub struct FakeContainer {
    pub id: Option<String>,
    pub log: Log,
    pub changes: Arc<AtomicU64>,
}

impl Container for FakeContainer {
    fn id(&self) -> Option<String> {
        self.id.clone()
    }
    fn volume_labels(&self) -> Vec<String> {
        vec!["vol-data".into()]
    }
    fn signal(&self, sig: Signal, group: bool) -> Result<(), String> {
        self.log.push(format!("signal {sig:?} group={group}"));
        Ok(())
    }
    fn reload(&self) {
        self.log.push("reload".into());
    }
    fn halt(&self) {
        self.log.push("halt".into());
    }
    fn primary_ip(&self) -> Option<String> {
        Some("10.0.2.15".into())
    }
    fn network_changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

impl FakeContainer {
    pub fn new(id: Option<&str>, log: &Log) -> Self {
        Self {
            id: id.map(str::to_string),
            log: log.clone(),
            changes: Arc::default(),
        }
    }
}

/// An out channel that logs each request as `out <request>` and answers `1 `.
pub struct FakeOut(pub Log);

impl Out for FakeOut {
    fn send(&mut self, request: &[u8]) -> Result<Vec<u8>, String> {
        self.0
            .push(format!("out {}", String::from_utf8_lossy(request)));
        Ok(b"1 ".to_vec())
    }
}

/// A toolbox for the container `id`, both fakes logging to the log returned.
pub fn toolbox(id: Option<&str>) -> (Toolbox<FakeContainer>, Log) {
    let log = Log::default();
    let c = FakeContainer::new(id, &log);
    (Toolbox::new(c, Box::new(FakeOut(log.clone()))), log)
}
