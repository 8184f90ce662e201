//! Any text as a `.vmx`-style file, decoded as an executor config: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::config::ExecutorConfig;
use tether_proto::extraconfig::KeyValues;
use tether_proto::guestinfo::vmx;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(pairs) = vmx::parse(text) else { return };
    let mut kv: KeyValues = pairs.into_iter().collect();
    if let Ok((cfg, _)) = ExecutorConfig::decode(&mut kv) {
        // Whatever decoded must encode, and decode again to the same config.
        let mut again: KeyValues = cfg.encode().into_iter().collect();
        let (back, _) = ExecutorConfig::decode(&mut again).expect("our own encoding decodes");
        assert_eq!(back.sessions.len(), cfg.sessions.len());
    }
});
