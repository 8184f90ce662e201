//! Key exchange: KEXINIT and algorithm negotiation (RFC 4253 §7), curve25519-sha256 (RFC 8731),
//! the exchange hash, key derivation (§7.2), and the strict-KEX and ext-info markers.

use sha2::{Digest as _, Sha256};

use super::cipher;
use super::wire::{Reader, WireError, Writer};

pub const CURVE25519: &str = "curve25519-sha256";
pub const CURVE25519_LIBSSH: &str = "curve25519-sha256@libssh.org";
pub const STRICT_C: &str = "kex-strict-c-v00@openssh.com";
pub const STRICT_S: &str = "kex-strict-s-v00@openssh.com";
pub const EXT_INFO_C: &str = "ext-info-c";
pub const EXT_INFO_S: &str = "ext-info-s";

pub const KEX: &[&str] = &[CURVE25519, CURVE25519_LIBSSH];

/// What one side offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preferences {
    pub kex: Vec<String>,
    pub host_keys: Vec<String>,
    pub ciphers: Vec<String>,
    pub macs: Vec<String>,
}

impl Default for Preferences {
    fn default() -> Self {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Self {
            kex: v(KEX),
            host_keys: v(&[
                super::keys::SSH_ED25519,
                super::keys::RSA_SHA2_512,
                super::keys::RSA_SHA2_256,
                super::keys::SSH_RSA,
            ]),
            ciphers: v(cipher::CIPHERS),
            macs: v(cipher::MACS),
        }
    }
}

/// A parsed KEXINIT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KexInit {
    pub kex: Vec<String>,
    pub host_keys: Vec<String>,
    pub ciphers_c2s: Vec<String>,
    pub ciphers_s2c: Vec<String>,
    pub macs_c2s: Vec<String>,
    pub macs_s2c: Vec<String>,
    pub comp_c2s: Vec<String>,
    pub comp_s2c: Vec<String>,
    pub first_follows: bool,
}

impl KexInit {
    /// Our KEXINIT payload. `first` adds the strict-KEX and ext-info markers, which count only in
    /// the first exchange of a connection.
    pub fn build(p: &Preferences, server: bool, first: bool, host_keys: &[&str]) -> Vec<u8> {
        let mut cookie = [0u8; 16];
        super::random(&mut cookie);
        let mut kex: Vec<&str> = p.kex.iter().map(String::as_str).collect();
        if first {
            kex.push(if server { STRICT_S } else { STRICT_C });
            if !server {
                kex.push(EXT_INFO_C);
            }
        }
        let hk: Vec<&str> = if server {
            host_keys.to_vec()
        } else {
            p.host_keys.iter().map(String::as_str).collect()
        };
        let ciphers: Vec<&str> = p.ciphers.iter().map(String::as_str).collect();
        let macs: Vec<&str> = p.macs.iter().map(String::as_str).collect();
        let mut w = Writer::msg(super::msg::KEXINIT);
        w.raw(&cookie)
            .name_list(&kex)
            .name_list(&hk)
            .name_list(&ciphers)
            .name_list(&ciphers)
            .name_list(&macs)
            .name_list(&macs)
            .name_list(&["none"])
            .name_list(&["none"])
            .name_list(&[])
            .name_list(&[])
            .bool(false)
            .u32(0);
        w.finish()
    }

    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        if r.u8()? != super::msg::KEXINIT {
            return Err(WireError::Invalid("not a KEXINIT"));
        }
        r.take(16)?;
        let mut list = || -> Result<Vec<String>, WireError> {
            Ok(r.name_list()?.into_iter().map(str::to_string).collect())
        };
        let kex = list()?;
        let host_keys = list()?;
        let ciphers_c2s = list()?;
        let ciphers_s2c = list()?;
        let macs_c2s = list()?;
        let macs_s2c = list()?;
        let comp_c2s = list()?;
        let comp_s2c = list()?;
        list()?;
        list()?;
        let first_follows = r.bool()?;
        r.u32()?;
        Ok(Self {
            kex,
            host_keys,
            ciphers_c2s,
            ciphers_s2c,
            macs_c2s,
            macs_s2c,
            comp_c2s,
            comp_s2c,
            first_follows,
        })
    }
}

/// What the two KEXINITs agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agreed {
    pub kex: String,
    pub host_key: String,
    pub cipher_c2s: String,
    pub cipher_s2c: String,
    pub mac_c2s: String,
    pub mac_s2c: String,
    /// Both sides asked for strict KEX (meaningful in the first exchange only).
    pub strict: bool,
    /// The client can take SSH_MSG_EXT_INFO.
    pub ext_info_c: bool,
    /// The guess the peer sent with `first_kex_packet_follows` was wrong and must be ignored.
    pub ignore_guess: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no common {what}: we offer {ours}, the peer offers {theirs}")]
pub struct NoCommon {
    pub what: &'static str,
    pub ours: String,
    pub theirs: String,
}

/// The first of the client's names that the server also has.
fn choose(
    what: &'static str,
    client: &[String],
    server: &[String],
    ours_is_client: bool,
) -> Result<String, NoCommon> {
    client
        .iter()
        .find(|c| server.contains(c))
        .cloned()
        .ok_or_else(|| {
            let (ours, theirs) = if ours_is_client {
                (client, server)
            } else {
                (server, client)
            };
            NoCommon {
                what,
                ours: ours.join(","),
                theirs: theirs.join(","),
            }
        })
}

/// Negotiates as RFC 4253 §7.1 says; MACs only for ciphers that need one.
pub fn negotiate(
    client: &KexInit,
    server: &KexInit,
    we_are_client: bool,
) -> Result<Agreed, NoCommon> {
    let real = |l: &[String]| -> Vec<String> {
        l.iter()
            .filter(|n| ![STRICT_C, STRICT_S, EXT_INFO_C, EXT_INFO_S].contains(&n.as_str()))
            .cloned()
            .collect()
    };
    let kex = choose(
        "key exchange",
        &real(&client.kex),
        &real(&server.kex),
        we_are_client,
    )?;
    let host_key = choose(
        "host key algorithm",
        &client.host_keys,
        &server.host_keys,
        we_are_client,
    )?;
    let cipher_c2s = choose(
        "cipher (client to server)",
        &client.ciphers_c2s,
        &server.ciphers_c2s,
        we_are_client,
    )?;
    let cipher_s2c = choose(
        "cipher (server to client)",
        &client.ciphers_s2c,
        &server.ciphers_s2c,
        we_are_client,
    )?;
    let mac = |cipher: &str, c: &[String], s: &[String], what| -> Result<String, NoCommon> {
        if cipher::is_aead(cipher) {
            Ok(String::new())
        } else {
            choose(what, c, s, we_are_client)
        }
    };
    let mac_c2s = mac(
        &cipher_c2s,
        &client.macs_c2s,
        &server.macs_c2s,
        "MAC (client to server)",
    )?;
    let mac_s2c = mac(
        &cipher_s2c,
        &client.macs_s2c,
        &server.macs_s2c,
        "MAC (server to client)",
    )?;
    let none = vec!["none".to_string()];
    choose("compression", &client.comp_c2s, &none, we_are_client)?;
    choose("compression", &client.comp_s2c, &none, we_are_client)?;
    // A guessed first packet is right only when the first kex and host key names match.
    let guessed_wrong = |init: &KexInit| {
        init.first_follows
            && (init.kex.first() != Some(&kex) || init.host_keys.first() != Some(&host_key))
    };
    let peer = if we_are_client { server } else { client };
    Ok(Agreed {
        strict: client.kex.iter().any(|k| k == STRICT_C)
            && server.kex.iter().any(|k| k == STRICT_S),
        ext_info_c: client.kex.iter().any(|k| k == EXT_INFO_C),
        ignore_guess: guessed_wrong(peer),
        kex,
        host_key,
        cipher_c2s,
        cipher_s2c,
        mac_c2s,
        mac_s2c,
    })
}

/// An X25519 key pair for one exchange.
pub struct Ephemeral {
    secret: x25519_dalek::EphemeralSecret,
    pub public: [u8; 32],
}

impl Ephemeral {
    pub fn new() -> Self {
        let secret = x25519_dalek::EphemeralSecret::random();
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Self { secret, public }
    }

    /// The shared secret with the peer's public value; all-zero (a small-order point) is refused.
    pub fn agree(self, peer: &[u8]) -> Result<[u8; 32], WireError> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| WireError::Invalid("an X25519 public value has 32 bytes"))?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer))
            .to_bytes();
        if shared == [0u8; 32] {
            return Err(WireError::Invalid("the X25519 shared secret is zero"));
        }
        Ok(shared)
    }
}

impl Default for Ephemeral {
    fn default() -> Self {
        Self::new()
    }
}

/// The exchange hash H of curve25519-sha256 (RFC 8731 §3.1; K is the shared secret as an mpint).
#[allow(clippy::too_many_arguments)]
pub fn exchange_hash(
    v_c: &[u8],
    v_s: &[u8],
    i_c: &[u8],
    i_s: &[u8],
    k_s: &[u8],
    q_c: &[u8],
    q_s: &[u8],
    shared: &[u8],
) -> [u8; 32] {
    let mut w = Writer::new();
    w.string(v_c)
        .string(v_s)
        .string(i_c)
        .string(i_s)
        .string(k_s)
        .string(q_c)
        .string(q_s)
        .mpint(shared);
    Sha256::digest(&w.0).into()
}

/// Key material for letter `x` ('A'…'F'), extended to `len` bytes (RFC 4253 §7.2).
pub fn derive(shared: &[u8], h: &[u8], session_id: &[u8], x: u8, len: usize) -> Vec<u8> {
    let k = Writer::new().mpint(shared).finish();
    let mut out = Sha256::new()
        .chain_update(&k)
        .chain_update(h)
        .chain_update([x])
        .chain_update(session_id)
        .finalize()
        .to_vec();
    while out.len() < len {
        let more = Sha256::new()
            .chain_update(&k)
            .chain_update(h)
            .chain_update(&out)
            .finalize();
        out.extend_from_slice(&more);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(kex: &[&str], ciphers: &[&str], macs: &[&str]) -> KexInit {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        KexInit {
            kex: v(kex),
            host_keys: v(&["ssh-rsa", "ssh-ed25519"]),
            ciphers_c2s: v(ciphers),
            ciphers_s2c: v(ciphers),
            macs_c2s: v(macs),
            macs_s2c: v(macs),
            comp_c2s: v(&["none"]),
            comp_s2c: v(&["none"]),
            first_follows: false,
        }
    }

    #[test]
    fn vics_client_profile_negotiates() {
        let vic = init(
            &[CURVE25519_LIBSSH, "ecdh-sha2-nistp256"],
            &[
                "aes128-ctr",
                "aes192-ctr",
                "aes256-ctr",
                "aes128-gcm@openssh.com",
                "arcfour256",
            ],
            &[
                "hmac-sha2-256-etm@openssh.com",
                "hmac-sha2-256",
                "hmac-sha1",
                "hmac-sha1-96",
            ],
        );
        let mut ours = init(
            &[CURVE25519, CURVE25519_LIBSSH, STRICT_S],
            cipher::CIPHERS,
            cipher::MACS,
        );
        ours.host_keys = vec!["rsa-sha2-256".into(), "ssh-rsa".into()];
        let a = negotiate(&vic, &ours, false).unwrap();
        assert_eq!(
            (a.kex.as_str(), a.host_key.as_str()),
            (CURVE25519_LIBSSH, "ssh-rsa")
        );
        assert_eq!(
            (a.cipher_c2s.as_str(), a.mac_c2s.as_str()),
            ("aes128-ctr", "hmac-sha2-256-etm@openssh.com")
        );
        assert!(!a.strict && !a.ext_info_c);
    }

    #[test]
    fn aead_needs_no_mac_and_markers_are_seen() {
        let c = init(
            &[CURVE25519, STRICT_C, EXT_INFO_C],
            &[cipher::CHACHA20_POLY1305],
            &["hmac-md5"],
        );
        let s = init(&[CURVE25519, STRICT_S], cipher::CIPHERS, cipher::MACS);
        let a = negotiate(&c, &s, true).unwrap();
        assert_eq!(a.mac_c2s, "");
        assert!(a.strict && a.ext_info_c);
    }

    #[test]
    fn nothing_in_common_says_what() {
        let c = init(
            &["diffie-hellman-group1-sha1"],
            cipher::CIPHERS,
            cipher::MACS,
        );
        let s = init(KEX, cipher::CIPHERS, cipher::MACS);
        let e = negotiate(&c, &s, false).unwrap_err();
        assert_eq!(e.what, "key exchange");
        assert!(e.to_string().contains("diffie-hellman-group1-sha1"));
    }

    #[test]
    fn kexinit_round_trips() {
        let p = Preferences::default();
        let bytes = KexInit::build(&p, true, true, &["ssh-ed25519"]);
        let k = KexInit::parse(&bytes).unwrap();
        assert!(k.kex.contains(&STRICT_S.to_string()));
        assert_eq!(k.host_keys, ["ssh-ed25519"]);
        assert_eq!(k.ciphers_c2s, p.ciphers);
        for n in 0..bytes.len() {
            let _ = KexInit::parse(&bytes[..n]);
        }
    }

    #[test]
    fn key_derivation_extends() {
        let k = derive(&[1, 2, 3], &[9; 32], &[9; 32], b'C', 64);
        assert_eq!(k.len(), 64);
        assert_eq!(
            &k[..32],
            &derive(&[1, 2, 3], &[9; 32], &[9; 32], b'C', 32)[..]
        );
        assert_ne!(k, derive(&[1, 2, 3], &[9; 32], &[9; 32], b'D', 64));
    }

    #[test]
    fn both_sides_agree_on_the_secret() {
        let (a, b) = (Ephemeral::new(), Ephemeral::new());
        let (pa, pb) = (a.public, b.public);
        assert_eq!(a.agree(&pb).unwrap(), b.agree(&pa).unwrap());
        assert!(Ephemeral::new().agree(&[0u8; 32]).is_err());
        assert!(Ephemeral::new().agree(&[1u8; 5]).is_err());
    }
}
