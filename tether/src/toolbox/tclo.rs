//! The TCLO loop, as vmtoolsd and VIC's toolbox poll it: each poll sends the previous reply
//! (empty at first) and takes the next request; the delay between polls is 10 ms times a factor
//! that grows 1, 2, 4, 8, 10 while nothing comes and drops to 0 when something does; a channel
//! error waits 5 s before the channel is tried again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Container, Toolbox};

/// The channel the loop polls.
pub trait Line {
    /// Sends `reply`, returns the next request (empty: none). `Ok(None)`: there is no TCLO
    /// channel on this transport, and never will be.
    fn poll(&mut self, reply: &[u8]) -> Result<Option<Vec<u8>>, String>;
}

/// The poll interval's unit, and the largest factor while idle (100 ms).
const TICK: Duration = Duration::from_millis(10);
const MAX_FACTOR: u32 = 10;
/// After a channel error (5 s).
const RESET_FACTOR: u32 = 500;

/// The next factor while idle: 0 → 1 → 2 → 4 → 8 → 10.
pub fn backoff(factor: u32) -> u32 {
    match factor {
        0 => 1,
        f if f >= MAX_FACTOR => f,
        f => (f * 2).min(MAX_FACTOR),
    }
}

/// Polls `line` until `stop` is set or the transport turns out to have no TCLO channel,
/// answering each request with `toolbox`. `sleep` waits (a test's clock, or the thread's).
pub fn run<C: Container>(
    line: &mut dyn Line,
    toolbox: &mut Toolbox<C>,
    stop: &AtomicBool,
    sleep: &dyn Fn(Duration),
) {
    let mut reply: Vec<u8> = Vec::new();
    let mut factor = 0u32;
    let mut failing = false;
    while !stop.load(Ordering::Relaxed) {
        sleep(TICK * factor);
        toolbox.tick();
        match line.poll(&reply) {
            Ok(Some(request)) => {
                if failing {
                    tracing::info!("toolbox: the TCLO channel is back");
                    failing = false;
                }
                reply.clear();
                if request.is_empty() {
                    // With no reply, a factor past the idle ceiling (the reset's) comes down.
                    factor = backoff(factor.min(MAX_FACTOR));
                } else {
                    reply = toolbox.dispatch(&request);
                    factor = 0;
                }
            }
            Ok(None) => {
                tracing::info!("toolbox: this host has no TCLO channel; not polling it");
                return;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("toolbox: the TCLO channel failed ({e}); again in 5 s");
                    failing = true;
                }
                reply.clear();
                factor = RESET_FACTOR;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    #[test]
    fn the_poll_delay_backs_off_to_a_tenth_of_a_second() {
        let mut f = 0;
        let mut seen = Vec::new();
        for _ in 0..7 {
            f = backoff(f);
            seen.push(f);
        }
        assert_eq!(seen, [1, 2, 4, 8, 10, 10, 10]);
    }

    /// A scripted line: what each poll returns, and what was sent.
    struct Script {
        answers: VecDeque<Result<Option<Vec<u8>>, String>>,
        sent: Vec<Vec<u8>>,
        stop: std::rc::Rc<AtomicBool>,
    }

    impl Line for Script {
        fn poll(&mut self, reply: &[u8]) -> Result<Option<Vec<u8>>, String> {
            self.sent.push(reply.to_vec());
            match self.answers.pop_front() {
                Some(a) => a,
                None => {
                    self.stop.store(true, Ordering::Relaxed);
                    Ok(Some(Vec::new()))
                }
            }
        }
    }

    #[test]
    fn each_poll_carries_the_previous_reply_and_errors_wait_five_seconds() {
        let stop = std::rc::Rc::new(AtomicBool::new(false));
        let mut line = Script {
            answers: VecDeque::from([
                Ok(Some(b"reset".to_vec())),
                Ok(Some(Vec::new())),
                Ok(Some(b"ping".to_vec())),
                Err("the channel closed".into()),
                Ok(Some(b"bogus".to_vec())),
                Ok(Some(Vec::new())),
            ]),
            sent: Vec::new(),
            stop: stop.clone(),
        };
        let (mut t, _) = crate::toolbox::fake::toolbox(Some("c"));
        let waits = RefCell::new(Vec::new());
        run(&mut line, &mut t, &stop, &|d| waits.borrow_mut().push(d));
        assert_eq!(
            line.sent,
            [
                b"".to_vec(),
                b"OK ATR toolbox".to_vec(),
                b"".to_vec(),
                b"OK ".to_vec(),
                b"".to_vec(),
                b"Unknown Command".to_vec(),
                b"".to_vec(),
            ]
        );
        let ms: Vec<u128> = waits.borrow().iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 0, 10, 0, 5000, 0, 10]);
    }

    #[test]
    fn a_host_without_the_channel_is_not_polled_again() {
        let stop = std::rc::Rc::new(AtomicBool::new(false));
        let mut line = Script {
            answers: VecDeque::from([Ok(None)]),
            sent: Vec::new(),
            stop: stop.clone(),
        };
        let (mut t, _) = crate::toolbox::fake::toolbox(Some("c"));
        run(&mut line, &mut t, &stop, &|_| {});
        assert_eq!(line.sent.len(), 1);
        assert!(!stop.load(Ordering::Relaxed));
    }
}
