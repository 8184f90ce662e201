//! The backdoor message channel against a host whose register values come from the fuzzer:
//! never a panic, never an unbounded allocation or loop.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether::guestinfo::backdoor::{call, Hypervisor, Regs};

struct Scripted<'a> {
    data: &'a [u8],
    at: usize,
}

impl Scripted<'_> {
    fn word(&mut self) -> u32 {
        let mut w = [0u8; 4];
        for b in &mut w {
            *b = self.data.get(self.at).copied().unwrap_or(0);
            self.at += 1;
        }
        u32::from_le_bytes(w)
    }
}

impl Hypervisor for Scripted<'_> {
    fn low_bandwidth(&mut self, r: &mut Regs) {
        r.ax = self.word();
        r.bx = self.word();
        r.cx = self.word();
        r.dx = self.word();
        r.si = self.word();
        r.di = self.word();
    }
    fn high_bandwidth_out(&mut self, r: &mut Regs, _: &[u8]) {
        r.bx = self.word();
    }
    fn high_bandwidth_in(&mut self, r: &mut Regs, buf: &mut [u8]) {
        r.bx = self.word();
        for b in buf.iter_mut().take(64) {
            *b = self.word() as u8;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut hv = Scripted { data, at: 0 };
    let _ = call(&mut hv, b"info-get guestinfo.vice./common/id");
});
