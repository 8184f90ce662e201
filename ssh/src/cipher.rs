//! The binary packet protocol's encryption and integrity, one direction at a time:
//! `chacha20-poly1305@openssh.com`, `aes128-gcm@openssh.com`, `aes256-gcm@openssh.com`, and
//! `aes128-ctr`/`aes256-ctr` with `hmac-sha2-256-etm@openssh.com`, `hmac-sha2-256` or `hmac-sha1`.

use std::ops::Range;

use aes_gcm::KeyInit as _;
use chacha20::cipher::{KeyIvInit as _, StreamCipher as _, StreamCipherSeek as _};
use hmac::Mac as _;
use subtle::ConstantTimeEq as _;

pub const CHACHA20_POLY1305: &str = "chacha20-poly1305@openssh.com";
pub const AES128_GCM: &str = "aes128-gcm@openssh.com";
pub const AES256_GCM: &str = "aes256-gcm@openssh.com";
pub const AES128_CTR: &str = "aes128-ctr";
pub const AES256_CTR: &str = "aes256-ctr";
pub const HMAC_SHA256_ETM: &str = "hmac-sha2-256-etm@openssh.com";
pub const HMAC_SHA256: &str = "hmac-sha2-256";
pub const HMAC_SHA1: &str = "hmac-sha1";

/// Ciphers, best first.
pub const CIPHERS: &[&str] = &[
    CHACHA20_POLY1305,
    AES128_GCM,
    AES256_GCM,
    AES128_CTR,
    AES256_CTR,
];
/// MACs for the CTR ciphers, best first.
pub const MACS: &[&str] = &[HMAC_SHA256_ETM, HMAC_SHA256, HMAC_SHA1];

/// The largest packet we accept (OpenSSH's limit).
pub const MAX_PACKET: u32 = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("bad packet length {0}")]
    BadLength(u32),
    #[error("message authentication failed")]
    BadMac,
    #[error("bad padding")]
    BadPadding,
}

/// Whether the cipher authenticates by itself (no MAC is negotiated for it).
pub fn is_aead(cipher: &str) -> bool {
    matches!(cipher, CHACHA20_POLY1305 | AES128_GCM | AES256_GCM)
}

/// (key, IV) lengths a cipher needs from the key exchange.
pub fn key_lengths(cipher: &str) -> (usize, usize) {
    match cipher {
        CHACHA20_POLY1305 => (64, 0),
        AES128_GCM => (16, 12),
        AES256_GCM => (32, 12),
        AES128_CTR => (16, 16),
        AES256_CTR => (32, 16),
        _ => (0, 0),
    }
}

/// Key length of a MAC.
pub fn mac_key_length(mac: &str) -> usize {
    match mac {
        HMAC_SHA256_ETM | HMAC_SHA256 => 32,
        HMAC_SHA1 => 20,
        _ => 0,
    }
}

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;
type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

enum Engine {
    None,
    Ctr128(Box<Aes128Ctr>),
    Ctr256(Box<Aes256Ctr>),
    Gcm128(Box<aes_gcm::Aes128Gcm>, [u8; 12]),
    Gcm256(Box<aes_gcm::Aes256Gcm>, [u8; 12]),
    ChaCha { main: [u8; 32], header: [u8; 32] },
}

enum MacAlg {
    None,
    Sha256(Vec<u8>),
    Sha1(Vec<u8>),
}

impl MacAlg {
    fn len(&self) -> usize {
        match self {
            MacAlg::None => 0,
            MacAlg::Sha256(_) => 32,
            MacAlg::Sha1(_) => 20,
        }
    }

    fn compute(&self, seq: u32, data: &[u8]) -> Vec<u8> {
        match self {
            MacAlg::None => Vec::new(),
            MacAlg::Sha256(k) => {
                let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(k)
                    .expect("HMAC takes any key length");
                m.update(&seq.to_be_bytes());
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            MacAlg::Sha1(k) => {
                let mut m =
                    hmac::Hmac::<sha1::Sha1>::new_from_slice(k).expect("HMAC takes any key length");
                m.update(&seq.to_be_bytes());
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }
}

/// One direction's packet protection.
pub struct Direction {
    engine: Engine,
    mac: MacAlg,
    etm: bool,
}

impl Direction {
    /// No protection: before the first key exchange.
    pub fn none() -> Self {
        Self {
            engine: Engine::None,
            mac: MacAlg::None,
            etm: false,
        }
    }

    /// Keys as derived by the key exchange; lengths as [`key_lengths`] and [`mac_key_length`] say.
    pub fn new(cipher: &str, mac: &str, key: &[u8], iv: &[u8], mac_key: &[u8]) -> Self {
        let engine = match cipher {
            CHACHA20_POLY1305 => {
                let mut main = [0u8; 32];
                let mut header = [0u8; 32];
                main.copy_from_slice(&key[..32]);
                header.copy_from_slice(&key[32..64]);
                Engine::ChaCha { main, header }
            }
            AES128_GCM | AES256_GCM => {
                let mut nonce = [0u8; 12];
                nonce.copy_from_slice(&iv[..12]);
                if cipher == AES128_GCM {
                    Engine::Gcm128(
                        Box::new(aes_gcm::Aes128Gcm::new_from_slice(key).expect("16-byte key")),
                        nonce,
                    )
                } else {
                    Engine::Gcm256(
                        Box::new(aes_gcm::Aes256Gcm::new_from_slice(key).expect("32-byte key")),
                        nonce,
                    )
                }
            }
            AES128_CTR => Engine::Ctr128(Box::new(
                Aes128Ctr::new_from_slices(key, iv).expect("key and IV lengths"),
            )),
            AES256_CTR => Engine::Ctr256(Box::new(
                Aes256Ctr::new_from_slices(key, iv).expect("key and IV lengths"),
            )),
            _ => Engine::None,
        };
        let (mac, etm) = if is_aead(cipher) {
            (MacAlg::None, false)
        } else {
            match mac {
                HMAC_SHA256_ETM => (MacAlg::Sha256(mac_key.to_vec()), true),
                HMAC_SHA256 => (MacAlg::Sha256(mac_key.to_vec()), false),
                HMAC_SHA1 => (MacAlg::Sha1(mac_key.to_vec()), false),
                _ => (MacAlg::None, false),
            }
        };
        Self { engine, mac, etm }
    }

    fn block(&self) -> usize {
        match self.engine {
            Engine::None | Engine::ChaCha { .. } => 8,
            _ => 16,
        }
    }

    fn tag_len(&self) -> usize {
        match self.engine {
            Engine::Gcm128(..) | Engine::Gcm256(..) | Engine::ChaCha { .. } => 16,
            _ => self.mac.len(),
        }
    }

    /// Whether the length field is left out of encryption and padding (EtM and AEAD modes).
    fn length_apart(&self) -> bool {
        self.etm
            || matches!(
                self.engine,
                Engine::Gcm128(..) | Engine::Gcm256(..) | Engine::ChaCha { .. }
            )
    }

    fn ctr(&mut self, data: &mut [u8]) {
        match &mut self.engine {
            Engine::Ctr128(c) => c.apply_keystream(data),
            Engine::Ctr256(c) => c.apply_keystream(data),
            _ => {}
        }
    }

    /// Builds, pads, encrypts and authenticates one packet carrying `payload` (tests; the writer
    /// seals into its batch with [`Self::seal_into`]).
    #[cfg(test)]
    pub fn seal(&mut self, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(seq, &[bytes::Bytes::copy_from_slice(payload)], &mut out);
        out
    }

    /// [`Self::seal`] of the payload made of `parts` in order, appending the packet to `out` (the
    /// writer's batch: neither the payload nor the packet has a buffer of its own). Not generic
    /// on purpose: it is compiled here, with the ciphers, at this crate's optimisation level,
    /// whatever crate runs the writer (a generic one was built at the tether's size-optimised
    /// level, and the ChaCha20 rounds stopped being inlined: a third more CPU per byte).
    pub fn seal_into(&mut self, seq: u32, parts: &[bytes::Bytes], out: &mut Vec<u8>) {
        let payload_len: usize = parts.iter().map(bytes::Bytes::len).sum();
        let block = self.block();
        let counted = if self.length_apart() {
            1 + payload_len
        } else {
            5 + payload_len
        };
        let mut pad = block - counted % block;
        if pad < 4 {
            pad += block;
        }
        let len = 1 + payload_len + pad;
        let base = out.len();
        out.reserve(4 + len + self.tag_len());
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(pad as u8);
        for part in parts {
            out.extend_from_slice(part);
        }
        let start = out.len();
        out.resize(start + pad, 0);
        super::random_padding(&mut out[start..]);
        let buf = &mut out[base..];
        let tag = match &mut self.engine {
            Engine::None => None,
            Engine::Ctr128(_) | Engine::Ctr256(_) => {
                if self.etm {
                    let (_, body) = buf.split_at_mut(4);
                    self.ctr(body);
                    Some(self.mac.compute(seq, buf))
                } else {
                    let tag = self.mac.compute(seq, buf);
                    self.ctr(buf);
                    Some(tag)
                }
            }
            Engine::Gcm128(aead, nonce) => Some(gcm_seal(&**aead, nonce, buf)),
            Engine::Gcm256(aead, nonce) => Some(gcm_seal(&**aead, nonce, buf)),
            Engine::ChaCha { main, header } => {
                let nonce = u64::from(seq).to_be_bytes();
                chacha20::ChaCha20Legacy::new(&(*header).into(), &nonce.into())
                    .apply_keystream(&mut buf[..4]);
                let mut c = chacha20::ChaCha20Legacy::new(&(*main).into(), &nonce.into());
                let mut poly_key = [0u8; 32];
                c.apply_keystream(&mut poly_key);
                c.seek(64u64);
                c.apply_keystream(&mut buf[4..]);
                Some(poly1305_tag(&poly_key, buf).to_vec())
            }
        };
        if let Some(tag) = tag {
            out.extend_from_slice(&tag);
        }
    }

    /// How many bytes to read before the packet's length can be known.
    pub fn first_len(&self) -> usize {
        match self.engine {
            Engine::Ctr128(_) | Engine::Ctr256(_) if !self.etm => 16,
            _ => 4,
        }
    }

    /// The packet length from the first [`Self::first_len`] bytes (decrypting them in place where
    /// the length is encrypted with the rest), checked; and how many more bytes make the packet.
    pub fn packet_length(&mut self, seq: u32, first: &mut [u8]) -> Result<usize, CipherError> {
        let raw = match &self.engine {
            Engine::ChaCha { header, .. } => {
                let mut len = [first[0], first[1], first[2], first[3]];
                let nonce = u64::from(seq).to_be_bytes();
                chacha20::ChaCha20Legacy::new(&(*header).into(), &nonce.into())
                    .apply_keystream(&mut len);
                u32::from_be_bytes(len)
            }
            Engine::Ctr128(_) | Engine::Ctr256(_) if !self.etm => {
                self.ctr(first);
                u32::from_be_bytes([first[0], first[1], first[2], first[3]])
            }
            _ => u32::from_be_bytes([first[0], first[1], first[2], first[3]]),
        };
        let block = self.block();
        let counted = if self.length_apart() {
            raw as usize
        } else {
            raw as usize + 4
        };
        if !(5..=MAX_PACKET).contains(&raw) || counted % block != 0 {
            return Err(CipherError::BadLength(raw));
        }
        Ok(4 + raw as usize + self.tag_len() - first.len())
    }

    /// Authenticates and decrypts a whole packet (as read: the first bytes, already passed to
    /// [`Self::packet_length`], and the rest). Returns where the payload is.
    pub fn open(&mut self, seq: u32, packet: &mut [u8]) -> Result<Range<usize>, CipherError> {
        let tag_len = self.tag_len();
        let body_end = packet.len() - tag_len;
        match &mut self.engine {
            Engine::None => {}
            Engine::Ctr128(_) | Engine::Ctr256(_) => {
                if self.etm {
                    let tag = self.mac.compute(seq, &packet[..body_end]);
                    if !bool::from(tag.ct_eq(&packet[body_end..])) {
                        return Err(CipherError::BadMac);
                    }
                    let (_, body) = packet[..body_end].split_at_mut(4);
                    self.ctr(body);
                } else {
                    // The first block was decrypted to learn the length.
                    let first = self.first_len();
                    let (_, rest) = packet[..body_end].split_at_mut(first);
                    self.ctr(rest);
                    let tag = self.mac.compute(seq, &packet[..body_end]);
                    if !bool::from(tag.ct_eq(&packet[body_end..])) {
                        return Err(CipherError::BadMac);
                    }
                }
            }
            Engine::Gcm128(aead, nonce) => gcm_open(&**aead, nonce, packet, body_end)?,
            Engine::Gcm256(aead, nonce) => gcm_open(&**aead, nonce, packet, body_end)?,
            Engine::ChaCha { main, .. } => {
                let nonce = u64::from(seq).to_be_bytes();
                let mut c = chacha20::ChaCha20Legacy::new(&(*main).into(), &nonce.into());
                let mut poly_key = [0u8; 32];
                c.apply_keystream(&mut poly_key);
                let tag = poly1305_tag(&poly_key, &packet[..body_end]);
                if !bool::from(tag.as_slice().ct_eq(&packet[body_end..])) {
                    return Err(CipherError::BadMac);
                }
                c.seek(64u64);
                c.apply_keystream(&mut packet[4..body_end]);
            }
        }
        let pad = usize::from(packet[4]);
        let payload_end = body_end.checked_sub(pad).filter(|&e| e >= 5 && pad >= 4);
        match payload_end {
            Some(end) => Ok(5..end),
            None => Err(CipherError::BadPadding),
        }
    }
}

/// AES-GCM (RFC 5647): the length is the associated data, the rest is encrypted, the tag follows.
fn gcm_seal<A>(aead: &A, nonce: &mut [u8; 12], packet: &mut [u8]) -> Vec<u8>
where
    A: aes_gcm::aead::AeadInOut<NonceSize = aes_gcm::aead::consts::U12>,
{
    let (aad, body) = packet.split_at_mut(4);
    let tag = aead
        .encrypt_inout_detached(&(*nonce).into(), aad, body.into())
        .expect("GCM encrypts any packet size we make");
    increment(nonce);
    tag.to_vec()
}

/// Checks and decrypts a GCM packet whose tag starts at `body_end`.
fn gcm_open<A>(
    aead: &A,
    nonce: &mut [u8; 12],
    packet: &mut [u8],
    body_end: usize,
) -> Result<(), CipherError>
where
    A: aes_gcm::aead::AeadInOut<NonceSize = aes_gcm::aead::consts::U12>,
{
    let (head, tag) = packet.split_at_mut(body_end);
    let (aad, body) = head.split_at_mut(4);
    let tag = aes_gcm::aead::Tag::<A>::try_from(&*tag).map_err(|_| CipherError::BadMac)?;
    aead.decrypt_inout_detached(&(*nonce).into(), aad, body.into(), &tag)
        .map_err(|_| CipherError::BadMac)?;
    increment(nonce);
    Ok(())
}

fn poly1305_tag(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    use poly1305::universal_hash::KeyInit as _;
    let tag = poly1305::Poly1305::new(key.into()).compute_unpadded(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag);
    out
}

/// GCM's invocation counter: the last 8 bytes of the nonce, big-endian (RFC 5647 §7.1).
fn increment(nonce: &mut [u8; 12]) {
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&nonce[4..]);
    let next = u64::from_be_bytes(counter).wrapping_add(1);
    nonce[4..].copy_from_slice(&next.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: &str, mac: &str) -> (Direction, Direction) {
        let (k, iv) = key_lengths(cipher);
        let key: Vec<u8> = (0..k as u8).collect();
        let ivb: Vec<u8> = (100..100 + iv as u8).collect();
        let mk: Vec<u8> = (50..50 + mac_key_length(mac) as u8).collect();
        (
            Direction::new(cipher, mac, &key, &ivb, &mk),
            Direction::new(cipher, mac, &key, &ivb, &mk),
        )
    }

    fn round_trip(
        sealer: &mut Direction,
        opener: &mut Direction,
        seq: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, CipherError> {
        let mut packet = sealer.seal(seq, payload);
        let first = opener.first_len();
        let more = opener.packet_length(seq, &mut packet[..first])?;
        assert_eq!(first + more, packet.len());
        let range = opener.open(seq, &mut packet)?;
        Ok(packet[range].to_vec())
    }

    #[test]
    fn every_cipher_and_mac_round_trips_over_many_packets() {
        let combos = [
            (CHACHA20_POLY1305, ""),
            (AES128_GCM, ""),
            (AES256_GCM, ""),
            (AES128_CTR, HMAC_SHA256_ETM),
            (AES128_CTR, HMAC_SHA256),
            (AES256_CTR, HMAC_SHA1),
            ("none", ""),
        ];
        for (c, m) in combos {
            let (mut s, mut o) = pair(c, m);
            for (seq, len) in [0usize, 1, 15, 16, 17, 1000, 32768].iter().enumerate() {
                let payload: Vec<u8> = (0..*len).map(|i| i as u8).collect();
                let got = round_trip(&mut s, &mut o, seq as u32, &payload).unwrap();
                assert_eq!(got, payload, "{c} {m} len {len}");
            }
        }
    }

    /// One of each way a packet is authenticated: the two AEADs, MAC after and before encryption.
    const AUTHENTICATED: [(&str, &str); 4] = [
        (CHACHA20_POLY1305, ""),
        (AES128_GCM, ""),
        (AES128_CTR, HMAC_SHA256_ETM),
        (AES128_CTR, HMAC_SHA256),
    ];

    #[test]
    fn a_payload_sealed_from_parts_opens_as_the_parts_in_order() {
        for (c, m) in AUTHENTICATED {
            let (mut s, mut o) = pair(c, m);
            // A channel data header, a whole chunk, a slice of one, an empty part, one byte.
            let chunk = bytes::Bytes::from((0..40_000u32).map(|i| i as u8).collect::<Vec<_>>());
            let parts = [
                bytes::Bytes::from_static(&[94, 0, 0, 0, 7, 0, 0, 0x60, 0x01]),
                chunk.slice(..20_000),
                chunk.slice(39_990..),
                bytes::Bytes::new(),
                bytes::Bytes::from_static(b"x"),
            ];
            let mut packet = Vec::new();
            s.seal_into(5, &parts, &mut packet);
            let first = o.first_len();
            let more = o.packet_length(5, &mut packet[..first]).unwrap();
            assert_eq!(first + more, packet.len(), "{c} {m}: one whole packet");
            let range = o.open(5, &mut packet).unwrap();
            assert_eq!(packet[range], parts.concat(), "{c} {m}");
        }
    }

    #[test]
    fn tampering_is_detected() {
        for (c, m) in AUTHENTICATED {
            let (mut s, mut o) = pair(c, m);
            let mut packet = s.seal(3, b"hello world");
            let last = packet.len() - 1;
            packet[last - 20] ^= 1;
            let first = o.first_len();
            let r = o
                .packet_length(3, &mut packet[..first])
                .and_then(|_| o.open(3, &mut packet).map(drop));
            assert!(r.is_err(), "{c} {m}");
        }
    }

    #[test]
    fn wrong_sequence_number_fails() {
        let (mut s, mut o) = pair(CHACHA20_POLY1305, "");
        let mut packet = s.seal(1, b"x");
        let first = o.first_len();
        let r = o
            .packet_length(2, &mut packet[..first])
            .and_then(|_| o.open(2, &mut packet).map(drop));
        assert!(r.is_err());
    }

    #[test]
    fn absurd_lengths_are_refused() {
        let mut o = Direction::none();
        let mut first = [0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            o.packet_length(0, &mut first),
            Err(CipherError::BadLength(u32::MAX))
        );
        let mut first = [0, 0, 0, 1];
        assert!(o.packet_length(0, &mut first).is_err());
    }
}
