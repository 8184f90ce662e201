//! Any bytes from the host on the attach line before SSH: the tether's side of VIC's SYN/ACK
//! handshake. It must answer or refuse, never panic or hang, whatever arrives (garbage, half a
//! handshake, a restarted host's bytes in the middle).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt as _;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (mut tether, mut host) = tokio::io::duplex(1 << 16);
        let _ = host.write_all(data).await;
        drop(host);
        let _ = tether_proto::handshake::serve(&mut tether).await;
    });
});
