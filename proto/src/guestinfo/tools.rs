//! The host's side of the tools' channels, as a VMX keeps them: requests queued for the guest's
//! TCLO polls, the guest's replies, and the tools' own RPCI requests (`tools.set.version`, power
//! state changes). Served on the stream transport beside guestinfo ([`super::stream::serve_with_tools`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What the guest's tools meet on the host.
pub trait ToolsHost: Send {
    /// The guest's reply to the previous request (empty at first or when there was none);
    /// returns the next request (empty: none pending).
    fn tclo(&mut self, reply: &[u8]) -> Vec<u8>;
    /// One of the tools' RPCI requests; the reply (`1 ...` / `0 ...`).
    fn rpci(&mut self, request: &[u8]) -> Vec<u8>;
}

#[derive(Default)]
struct State {
    pending: VecDeque<Vec<u8>>,
    /// Replies to requests taken, in order, as `(request, reply)`.
    answered: Vec<(Vec<u8>, Vec<u8>)>,
    /// The request the guest took last and has not answered yet.
    outstanding: Option<Vec<u8>>,
    rpci: Vec<Vec<u8>>,
    last_poll: Option<SystemTime>,
}

/// A [`ToolsHost`] with a queue, shared by the server and whoever sends requests.
#[derive(Clone, Default)]
pub struct ToolsQueue(Arc<Mutex<State>>);

impl ToolsQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `request` for the guest.
    pub fn push(&self, request: impl Into<Vec<u8>>) {
        self.state().pending.push_back(request.into());
    }

    /// Queues `request` and waits (at most `limit`) for the guest's reply to it.
    pub fn request(&self, request: impl Into<Vec<u8>>, limit: Duration) -> Option<Vec<u8>> {
        let request = request.into();
        let before = self.state().answered.len();
        self.push(request.clone());
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some((_, reply)) = self.state().answered[before..]
                .iter()
                .find(|(q, _)| *q == request)
            {
                return Some(reply.clone());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The tools' RPCI requests so far.
    pub fn rpci_requests(&self) -> Vec<Vec<u8>> {
        self.state().rpci.clone()
    }

    /// When the guest last polled (whether its tools run).
    pub fn last_poll(&self) -> Option<SystemTime> {
        self.state().last_poll
    }
}

impl ToolsHost for ToolsQueue {
    fn tclo(&mut self, reply: &[u8]) -> Vec<u8> {
        let mut s = self.state();
        s.last_poll = Some(SystemTime::now());
        if let Some(request) = s.outstanding.take() {
            s.answered.push((request, reply.to_vec()));
        }
        let next = s.pending.pop_front().unwrap_or_default();
        if !next.is_empty() {
            s.outstanding = Some(next.clone());
        }
        next
    }

    fn rpci(&mut self, request: &[u8]) -> Vec<u8> {
        self.state().rpci.push(request.to_vec());
        b"1 ".to_vec()
    }
}
