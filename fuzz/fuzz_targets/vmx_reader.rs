//! A `.vmx`-style file as the tether's file transport and `vch` read it: the line parser, then
//! the whole config decoded from what it found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::config::ExecutorConfig;
use tether_proto::extraconfig::KeyValues;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pairs) = tether_proto::guestinfo::vmx::parse(text) {
        // What was read renders and reads back the same.
        let rendered = tether_proto::guestinfo::vmx::render(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let again = tether_proto::guestinfo::vmx::parse(&rendered).expect("our own rendering");
        assert_eq!(pairs, again);
        let mut kv: KeyValues = pairs.into_iter().collect();
        let _ = ExecutorConfig::decode(&mut kv);
    }
});
