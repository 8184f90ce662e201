//! The host's side of the tools' channels, as a VMX keeps them: requests queued for the guest's
//! TCLO polls, the guest's replies, and the tools' own RPCI requests (`tools.set.version`, power
//! state changes). Served on the stream transport beside guestinfo ([`super::stream::serve_with_tools`]).

use std::collections::{HashMap, VecDeque};
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
    /// Requests for the guest, each with a number (to match its reply).
    pending: VecDeque<(u64, Vec<u8>)>,
    next: u64,
    /// The request the guest took last and has not answered yet.
    outstanding: Option<u64>,
    /// The requests someone waits on, and their replies once they come: kept only while
    /// waited for, so a long-lived host does not accumulate them.
    waiting: HashMap<u64, Option<Vec<u8>>>,
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

    fn enqueue(&self, request: Vec<u8>, wait: bool) -> u64 {
        let mut s = self.state();
        let id = s.next;
        s.next += 1;
        s.pending.push_back((id, request));
        if wait {
            s.waiting.insert(id, None);
        }
        id
    }

    /// Queues `request` for the guest (its reply is not kept).
    pub fn push(&self, request: impl Into<Vec<u8>>) {
        self.enqueue(request.into(), false);
    }

    /// Queues `request` and waits (at most `limit`) for the guest's reply to it.
    pub fn request(&self, request: impl Into<Vec<u8>>, limit: Duration) -> Option<Vec<u8>> {
        let id = self.enqueue(request.into(), true);
        let deadline = Instant::now() + limit;
        loop {
            let reply = self.state().waiting.get_mut(&id).and_then(Option::take);
            if reply.is_some() || Instant::now() >= deadline {
                // Answered or given up: forgotten either way (an unanswered request that is
                // still queued goes too).
                let mut s = self.state();
                s.waiting.remove(&id);
                s.pending.retain(|(p, _)| *p != id);
                return reply;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
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
        if let Some(id) = s.outstanding.take() {
            if let Some(slot) = s.waiting.get_mut(&id) {
                *slot = Some(reply.to_vec());
            }
        }
        let (id, next) = s.pending.pop_front().unzip();
        s.outstanding = id;
        next.unwrap_or_default()
    }

    fn rpci(&mut self, request: &[u8]) -> Vec<u8> {
        self.state().rpci.push(request.to_vec());
        b"1 ".to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_waiter_gets_its_own_reply_and_nothing_is_kept_after() {
        let q = ToolsQueue::default();
        q.push("reset");
        let host = {
            let mut q = q.clone();
            std::thread::spawn(move || {
                // The guest's polls: the previous reply out, the next request in.
                let mut reply = Vec::new();
                for _ in 0..400 {
                    let request = q.tclo(&reply);
                    reply = match request.as_slice() {
                        b"" => Vec::new(),
                        r => [b"re: ".as_slice(), r].concat(),
                    };
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let waiters: Vec<_> = ["ping", "ping", "OS_Halt"]
            .into_iter()
            .map(|r| {
                let q = q.clone();
                std::thread::spawn(move || q.request(r, Duration::from_secs(5)))
            })
            .collect();
        let replies: Vec<_> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(replies[0].as_deref(), Some(&b"re: ping"[..]));
        assert_eq!(replies[1].as_deref(), Some(&b"re: ping"[..]));
        assert_eq!(replies[2].as_deref(), Some(&b"re: OS_Halt"[..]));
        host.join().unwrap();
        let s = q.state();
        assert!(s.waiting.is_empty() && s.pending.is_empty(), "nothing kept");
        drop(s);
        // Nobody polling: the request is given up and leaves the queue.
        let idle = ToolsQueue::default();
        assert_eq!(idle.request("ping", Duration::from_millis(50)), None);
        assert!(idle.state().pending.is_empty());
    }
}
