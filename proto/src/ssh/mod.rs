//! Our own SSH-2 (RFC 4253, 4252, 4254), both roles, on RustCrypto's building blocks, with what
//! VIC's attach protocol needs from an SSH library: global requests with reply payloads, channels
//! of any type with their extra data, and channel requests of any name.

pub mod cipher;
pub mod kex;
pub mod keys;
pub mod msg;
pub mod wire;

/// Fills `buf` from the operating system's random source.
pub fn random(buf: &mut [u8]) {
    // The OS source failing is not something to carry on from with weak randomness.
    getrandom::fill(buf).expect("the operating system's random source failed");
}
