//! The output log's reader (VIC's framed format, read back by `vch logs`, `docker logs` and the
//! tests): the whole-file decoder and the incremental one of `docker logs -f`, which must agree
//! on whatever bytes the file holds, and the line framer that writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::iolog;

fuzz_target!(|data: &[u8]| {
    let whole = iolog::decode(data);
    // Fed in two pieces at any point, the incremental decoder never takes an entry it has not
    // seen whole, and never loses the bytes it left.
    let cut = data.first().map_or(0, |&b| usize::from(b) * data.len() / 256);
    let (first, used) = iolog::decode_complete(&data[..cut]);
    assert!(used <= cut);
    let (second, _) = iolog::decode_complete(&data[used..]);
    assert!(first.len() + second.len() <= whole.len() + 1);
    let mut framer = iolog::LineFramer::default();
    for chunk in framer.push(data) {
        assert!(!chunk.is_empty());
    }
    let _ = framer.flush();
});
