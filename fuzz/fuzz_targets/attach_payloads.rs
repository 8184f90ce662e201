//! The payloads of the attach channel's requests as the tether reads them: `window-change`
//! (four u32s, clamped), `signal`/`group-signal` (a name or number), and the signal parser
//! behind `docker kill -s` and the tools' `kill` program.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(size) = tether::attach::window_change(data) {
        assert!(size.iter().all(|&v| u32::from(v) <= u32::from(u16::MAX)));
    }
    if let Ok(sig) = tether::attach::signal_request(data) {
        assert!(sig > 0 && sig < 65, "{sig}");
    }
    let _ = tether_proto::signal::parse(&String::from_utf8_lossy(data));
});
