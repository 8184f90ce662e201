//! Any bytes from a client after its version line, into our SSH server: the packet decoder, the
//! KEXINIT parser and everything reachable before keys are agreed. Never a panic or a hang.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ssh::{self, PrivateKey, ServerConfig};
use tokio::io::AsyncWriteExt as _;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let config = Arc::new(ServerConfig::new(vec![PrivateKey::generate_ed25519()]));
        let server = tokio::spawn(ssh::serve(a, config, ssh::NoHandler));
        let _ = b.write_all(b"SSH-2.0-fuzz\r\n").await;
        let _ = b.write_all(data).await;
        drop(b);
        let _ = server.await;
    });
});
