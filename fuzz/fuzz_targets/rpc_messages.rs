//! RPCI request and reply parsers, and the stream framing: total on any bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::guestinfo::stream::read_frame;
use tether_proto::rpc::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    let _ = Request::parse(data);
    let _ = Reply::parse(data);
    let mut input = data;
    while let Ok(Some(_)) = read_frame(&mut input) {}
});
