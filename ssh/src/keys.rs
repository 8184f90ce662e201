//! Host and user keys: Ed25519 and RSA (PKCS#1 v1.5 with SHA-1, SHA-256 or SHA-512), read from PEM
//! PKCS#1, PKCS#8 and OpenSSH files, with SSH's public-key and signature encodings.

use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::traits::PublicKeyParts as _;

use super::wire::{Reader, Writer};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported key: {0}")]
    Unsupported(String),
    #[error("malformed key: {0}")]
    Malformed(String),
    #[error("{0} cannot sign with this key")]
    CannotSign(&'static str),
    #[error("bad signature")]
    BadSignature,
}

/// The signature algorithms we speak.
pub const SSH_ED25519: &str = "ssh-ed25519";
pub const RSA_SHA2_512: &str = "rsa-sha2-512";
pub const RSA_SHA2_256: &str = "rsa-sha2-256";
pub const SSH_RSA: &str = "ssh-rsa";

/// The smallest RSA modulus (bytes) that holds a PKCS#1 v1.5 signature with a given digest:
/// digest + DigestInfo prefix (19 bytes for SHA-2, 15 for SHA-1) + 11 bytes of padding.
fn rsa_can_sign(modulus_bytes: usize, alg: &str) -> bool {
    let needed = match alg {
        RSA_SHA2_512 => 64 + 19 + 11,
        RSA_SHA2_256 => 32 + 19 + 11,
        SSH_RSA => 20 + 15 + 11,
        _ => return false,
    };
    modulus_bytes >= needed
}

/// A private key.
#[derive(Clone)]
pub enum PrivateKey {
    Ed25519(Box<ed25519_dalek::SigningKey>),
    Rsa(Box<rsa::PrivateKey>),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({})", self.public().to_openssh())
    }
}

impl PrivateKey {
    /// A new random Ed25519 key.
    pub fn generate_ed25519() -> Self {
        let mut seed = [0u8; 32];
        super::random(&mut seed);
        PrivateKey::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Reads a PEM key: `RSA PRIVATE KEY` (PKCS#1), `PRIVATE KEY` (PKCS#8, RSA or Ed25519), or
    /// `OPENSSH PRIVATE KEY` (unencrypted).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let malformed = |e: &dyn std::fmt::Display| KeyError::Malformed(e.to_string());
        let text = text.trim();
        if text.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
            let k = rsa::PrivateKey::from_pkcs1_pem(text).map_err(|e| malformed(&e))?;
            return Ok(PrivateKey::Rsa(Box::new(k)));
        }
        if text.starts_with("-----BEGIN PRIVATE KEY-----") {
            if let Ok(k) = <rsa::PrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_pem(text) {
                return Ok(PrivateKey::Rsa(Box::new(k)));
            }
            let k = ed25519_dalek::SigningKey::from_pkcs8_pem(text).map_err(|e| malformed(&e))?;
            return Ok(PrivateKey::Ed25519(Box::new(k)));
        }
        if text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
            let k = ssh_key::PrivateKey::from_openssh(text).map_err(|e| malformed(&e))?;
            if k.is_encrypted() {
                return Err(KeyError::Unsupported("encrypted OpenSSH key".into()));
            }
            if let Some(kp) = k.key_data().ed25519() {
                let sk = ed25519_dalek::SigningKey::from_bytes(&kp.private.to_bytes());
                return Ok(PrivateKey::Ed25519(Box::new(sk)));
            }
            if let Some(kp) = k.key_data().rsa() {
                let rk = rsa::PrivateKey::try_from(kp).map_err(|e| malformed(&e))?;
                return Ok(PrivateKey::Rsa(Box::new(rk)));
            }
            return Err(KeyError::Unsupported(format!("{} key", k.algorithm())));
        }
        Err(KeyError::Unsupported(
            "not a PEM private key this implementation reads".into(),
        ))
    }

    pub fn public(&self) -> PublicKey {
        match self {
            PrivateKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key().to_bytes()),
            PrivateKey::Rsa(k) => PublicKey::Rsa {
                e: k.e_bytes().into_vec(),
                n: k.n_bytes().into_vec(),
            },
        }
    }

    /// The signature algorithms this key can make, best first. A small RSA key (VIC makes 512-bit
    /// ones) is not offered for what it cannot sign.
    pub fn algorithms(&self) -> Vec<&'static str> {
        match self {
            PrivateKey::Ed25519(_) => vec![SSH_ED25519],
            PrivateKey::Rsa(k) => [RSA_SHA2_512, RSA_SHA2_256, SSH_RSA]
                .into_iter()
                .filter(|a| rsa_can_sign(k.size(), a))
                .collect(),
        }
    }

    /// Signs `data` with `alg`; returns SSH's signature blob (`string alg, string signature`).
    pub fn sign(&self, alg: &str, data: &[u8]) -> Result<Vec<u8>, KeyError> {
        let raw: Vec<u8> = match (self, alg) {
            (PrivateKey::Ed25519(k), SSH_ED25519) => k.sign(data).to_bytes().to_vec(),
            (PrivateKey::Rsa(k), RSA_SHA2_512) => {
                rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new((**k).clone())
                    .try_sign(data)
                    .map_err(|_| KeyError::CannotSign(RSA_SHA2_512))?
                    .to_vec()
            }
            (PrivateKey::Rsa(k), RSA_SHA2_256) => {
                rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**k).clone())
                    .try_sign(data)
                    .map_err(|_| KeyError::CannotSign(RSA_SHA2_256))?
                    .to_vec()
            }
            (PrivateKey::Rsa(k), SSH_RSA) => {
                rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new((**k).clone())
                    .try_sign(data)
                    .map_err(|_| KeyError::CannotSign(SSH_RSA))?
                    .to_vec()
            }
            _ => {
                return Err(KeyError::Unsupported(format!(
                    "signing {alg} with this key"
                )))
            }
        };
        let alg = match alg {
            SSH_ED25519 => SSH_ED25519,
            RSA_SHA2_512 => RSA_SHA2_512,
            RSA_SHA2_256 => RSA_SHA2_256,
            _ => SSH_RSA,
        };
        Ok(Writer::new().string(alg).string(raw).finish())
    }
}

/// A public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    Ed25519([u8; 32]),
    Rsa { e: Vec<u8>, n: Vec<u8> },
}

impl PublicKey {
    pub fn key_type(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => SSH_ED25519,
            PublicKey::Rsa { .. } => SSH_RSA,
        }
    }

    /// SSH's public key blob.
    pub fn blob(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            PublicKey::Ed25519(k) => w.string(SSH_ED25519).string(k),
            PublicKey::Rsa { e, n } => w.string(SSH_RSA).mpint(e).mpint(n),
        };
        w.finish()
    }

    pub fn from_blob(blob: &[u8]) -> Result<Self, KeyError> {
        let bad = |e: super::wire::WireError| KeyError::Malformed(e.to_string());
        let mut r = Reader::new(blob);
        let key = match r.utf8().map_err(bad)? {
            SSH_ED25519 => {
                let k: [u8; 32] = r
                    .string()
                    .map_err(bad)?
                    .try_into()
                    .map_err(|_| KeyError::Malformed("an Ed25519 key has 32 bytes".into()))?;
                PublicKey::Ed25519(k)
            }
            SSH_RSA => {
                let e = r.mpint().map_err(bad)?.to_vec();
                let n = r.mpint().map_err(bad)?.to_vec();
                if n.len() > 2048 || e.len() > 64 {
                    return Err(KeyError::Malformed("RSA key too large".into()));
                }
                PublicKey::Rsa { e, n }
            }
            other => return Err(KeyError::Unsupported(format!("key type {other:?}"))),
        };
        if !r.is_empty() {
            return Err(KeyError::Malformed("trailing bytes after the key".into()));
        }
        Ok(key)
    }

    /// `ssh-ed25519 AAAA…` as in authorized_keys.
    pub fn to_openssh(&self) -> String {
        use base64::Engine as _;
        format!(
            "{} {}",
            self.key_type(),
            base64::engine::general_purpose::STANDARD.encode(self.blob())
        )
    }

    /// Reads `TYPE BASE64 [comment]` (an authorized_keys or .pub line).
    pub fn from_openssh(line: &str) -> Result<Self, KeyError> {
        use base64::Engine as _;
        let mut words = line.split_whitespace();
        let (Some(_), Some(b64)) = (words.next(), words.next()) else {
            return Err(KeyError::Malformed("expected TYPE BASE64".into()));
        };
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| KeyError::Malformed(e.to_string()))?;
        Self::from_blob(&blob)
    }

    /// Verifies SSH signature blob `sig` over `data`; `alg` is the algorithm negotiated or claimed,
    /// which the blob must name.
    pub fn verify(&self, alg: &str, data: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        let mut r = Reader::new(sig);
        let named = r.utf8().map_err(|_| KeyError::BadSignature)?;
        let raw = r.string().map_err(|_| KeyError::BadSignature)?;
        if named != alg {
            return Err(KeyError::BadSignature);
        }
        match self {
            PublicKey::Ed25519(k) => {
                let vk = ed25519_dalek::VerifyingKey::from_bytes(k)
                    .map_err(|_| KeyError::BadSignature)?;
                let s = ed25519_dalek::Signature::from_slice(raw)
                    .map_err(|_| KeyError::BadSignature)?;
                if alg != SSH_ED25519 {
                    return Err(KeyError::BadSignature);
                }
                vk.verify_strict(data, &s)
                    .map_err(|_| KeyError::BadSignature)
            }
            PublicKey::Rsa { e, n } => {
                let n = rsa::BoxedUint::from_be_slice_vartime(n);
                let e = rsa::BoxedUint::from_be_slice_vartime(e);
                // VIC's keys are 512 bits: accept small keys, as the peer chose them.
                let pk = rsa::PublicKey::new_with_size_limits(n, e, 512..=16384)
                    .map_err(|e| KeyError::Malformed(e.to_string()))?;
                let s =
                    rsa::pkcs1v15::Signature::try_from(raw).map_err(|_| KeyError::BadSignature)?;
                let ok = match alg {
                    RSA_SHA2_512 => {
                        rsa::pkcs1v15::VerifyingKey::<sha2::Sha512>::new(pk).verify(data, &s)
                    }
                    RSA_SHA2_256 => {
                        rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk).verify(data, &s)
                    }
                    SSH_RSA => rsa::pkcs1v15::VerifyingKey::<sha1::Sha1>::new(pk).verify(data, &s),
                    _ => return Err(KeyError::BadSignature),
                };
                ok.map_err(|_| KeyError::BadSignature)
            }
        }
    }

    /// Whether this key can verify signatures of `alg`.
    pub fn supports(&self, alg: &str) -> bool {
        matches!(
            (self, alg),
            (PublicKey::Ed25519(_), SSH_ED25519)
                | (PublicKey::Rsa { .. }, RSA_SHA2_512 | RSA_SHA2_256 | SSH_RSA)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA512: &str = include_str!("../tests/data/rsa512.pem");

    #[test]
    fn vics_512_bit_key_signs_sha1_and_sha256_but_is_not_offered_for_sha512() {
        let k = PrivateKey::from_pem(RSA512).unwrap();
        assert_eq!(k.algorithms(), [RSA_SHA2_256, SSH_RSA]);
        let public = k.public();
        for alg in [SSH_RSA, RSA_SHA2_256] {
            let sig = k.sign(alg, b"data").unwrap();
            public.verify(alg, b"data", &sig).unwrap();
            assert_eq!(
                public.verify(alg, b"other", &sig),
                Err(KeyError::BadSignature)
            );
        }
        assert_eq!(
            k.sign(RSA_SHA2_512, b"data"),
            Err(KeyError::CannotSign(RSA_SHA2_512))
        );
    }

    #[test]
    fn ed25519_round_trip_and_blob() {
        let k = PrivateKey::generate_ed25519();
        let sig = k.sign(SSH_ED25519, b"x").unwrap();
        let p = PublicKey::from_blob(&k.public().blob()).unwrap();
        assert_eq!(p, k.public());
        p.verify(SSH_ED25519, b"x", &sig).unwrap();
        assert_eq!(PublicKey::from_openssh(&p.to_openssh()).unwrap(), p);
        // A signature claiming another algorithm is refused.
        assert!(p.verify(SSH_RSA, b"x", &sig).is_err());
    }

    #[test]
    fn pkcs8_keys_from_openssl() {
        let dir = tempfile::tempdir().unwrap();
        for (alg, want) in [("ed25519", SSH_ED25519), ("rsa", RSA_SHA2_512)] {
            let path = dir.path().join(alg);
            let ok = std::process::Command::new("openssl")
                .args(["genpkey", "-algorithm", alg, "-out"])
                .arg(&path)
                .status();
            if !ok.is_ok_and(|s| s.success()) {
                eprintln!("skipped: openssl cannot make a PKCS#8 {alg} key here");
                return;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"));
            let k = PrivateKey::from_pem(&text).unwrap();
            assert_eq!(k.algorithms()[0], want);
            let sig = k.sign(want, b"m").unwrap();
            k.public().verify(want, b"m", &sig).unwrap();
        }
    }

    #[test]
    fn malformed_blobs_are_errors() {
        for blob in [
            &b""[..],
            b"\0\0\0\x0bssh-ed25519\0\0\0\x02ab",
            b"\0\0\0\x03dss",
            b"\xff\xff\xff\xff",
        ] {
            assert!(PublicKey::from_blob(blob).is_err());
        }
        assert!(PrivateKey::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nnot base64\n-----END RSA PRIVATE KEY-----"
        )
        .is_err());
        assert!(PrivateKey::from_pem("hello").is_err());
    }
}
