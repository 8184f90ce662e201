//! The toolbox's TCLO dispatcher against whatever the host sends (guest operations with any
//! header, body and credential): an answer every time, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::toolbox::{vix, Container, Out, Signal, Toolbox};

struct Nothing;
impl Container for Nothing {
    fn id(&self) -> Option<String> {
        Some("c0ffee".into())
    }
    fn volume_labels(&self) -> Vec<String> {
        vec!["vol".into()]
    }
    fn signal(&self, _: Signal, _: bool) -> Result<(), String> {
        Ok(())
    }
    fn reload(&self) {}
    fn halt(&self) {}
    fn primary_ip(&self) -> Option<String> {
        None
    }
}

struct Sink;
impl Out for Sink {
    fn send(&mut self, _: &[u8]) -> Result<Vec<u8>, String> {
        Ok(b"1 ".to_vec())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut t = Toolbox::new(Nothing, Box::new(Sink));
    // As given, and as the body of a relayed guest operation behind a valid header.
    assert!(!t.dispatch(data).is_empty());
    assert!(!t.dispatch(&vix::relayed(data)).is_empty());
    let start = vix::request(vix::OP_START_PROGRAM, data, &vix::credential("c0ffee", ""), 1);
    assert!(!t.dispatch(&vix::relayed(&start)).is_empty());
});
