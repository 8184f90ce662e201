//! How single values are written: decimal integers, Go's boolean forms, base64 bytes and IPs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value stored under one key.
pub trait Scalar {
    /// The text to write, or `None` when the value produces no key (empty bytes, absent IP).
    fn encode(&self) -> Option<String>;
    /// Parses the text read back; the error says what was expected.
    fn decode(&mut self, text: &str) -> Result<(), String>;
}

impl Scalar for String {
    fn encode(&self) -> Option<String> {
        Some(self.clone())
    }

    fn decode(&mut self, text: &str) -> Result<(), String> {
        text.clone_into(self);
        Ok(())
    }
}

macro_rules! integer_scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            fn encode(&self) -> Option<String> {
                Some(self.to_string())
            }

            fn decode(&mut self, text: &str) -> Result<(), String> {
                *self = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("expected an integer ({}), found {text:?}", stringify!($t)))?;
                Ok(())
            }
        }
    )*};
}

integer_scalar!(i32, i64);

impl Scalar for bool {
    fn encode(&self) -> Option<String> {
        Some(self.to_string())
    }

    /// Go's `strconv.ParseBool` forms.
    fn decode(&mut self, text: &str) -> Result<(), String> {
        *self = match text.trim() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => return Err(format!("expected true or false, found {text:?}")),
        };
        Ok(())
    }
}

/// A byte string, base64 in guestinfo and in JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Scalar for Bytes {
    fn encode(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| base64::engine::general_purpose::STANDARD.encode(&self.0))
    }

    fn decode(&mut self, text: &str) -> Result<(), String> {
        self.0 = decode_base64(text)?;
        Ok(())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        decode_base64(&text)
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("bad base64 ({e})"))
}

/// An IP address or mask as Go's `net.IP` holds it: 4 bytes (written as `a.b.c.d`) or 16 bytes
/// (written as IPv6; an IPv4 address in 16-byte form is `::ffff:a.b.c.d`). The form is kept so that
/// re-encoding gives the same bytes back.
impl Scalar for IpAddr {
    fn encode(&self) -> Option<String> {
        let bytes = match self {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        Some(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    fn decode(&mut self, text: &str) -> Result<(), String> {
        let bytes = decode_base64(text)?;
        *self = match bytes.len() {
            4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
            16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&bytes);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            n => return Err(format!("an IP address has 4 or 16 bytes, this one has {n}")),
        };
        Ok(())
    }
}

/// An IP that may be absent: Go's nil `net.IP`, which produces no key.
impl Scalar for Option<IpAddr> {
    fn encode(&self) -> Option<String> {
        self.as_ref().and_then(Scalar::encode)
    }

    fn decode(&mut self, text: &str) -> Result<(), String> {
        if decode_base64(text)?.is_empty() {
            *self = None;
            return Ok(());
        }
        let mut ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        ip.decode(text)?;
        *self = Some(ip);
        Ok(())
    }
}
