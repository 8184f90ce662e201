//! Arbitrary messages (each prefixed by a 2-byte length in the input) into an authenticated
//! server connection, and the key and signature decoders: every message decoder must refuse bad
//! input cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssh::{self, kex::KexInit, PublicKey};

fuzz_target!(|data: &[u8]| {
    let _ = KexInit::parse(data);
    if let Ok(k) = PublicKey::from_blob(data) {
        let _ = k.verify("ssh-rsa", b"x", data);
        let _ = k.verify("ssh-ed25519", b"x", data);
    }
    let mut payloads = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        payloads.push(rest[2..2 + n].to_vec());
        rest = &rest[2 + n..];
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _ = rt.block_on(ssh::fuzz_authenticated_server(payloads));
});
