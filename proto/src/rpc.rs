//! GuestRPC ("RPCI") requests and replies as the VMX understands them: `info-get <key>` and
//! `info-set <key> <value>`, answered by `1 <data>` (success) or `0 <reason>` (failure).
//! Shared by every guestinfo transport, and by the host side that serves them.

/// The largest request a guest may send (`GUESTMSG_MAX_IN_SIZE`).
pub const MAX_REQUEST: usize = 64 * 1024;
/// What the VMX answers for a key it does not hold.
pub const NO_VALUE: &str = "No value found";
/// Keys a guest may read and write start with this.
pub const GUESTINFO_PREFIX: &str = "guestinfo.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RpcError {
    #[error("the reply is empty")]
    EmptyReply,
    #[error("the reply does not start with \"1 \" or \"0 \": {0:?}")]
    BadReply(String),
    #[error("the request is not valid UTF-8")]
    NotUtf8,
    #[error("the request is {len} bytes, more than the {MAX_REQUEST} a guest may send")]
    TooLarge { len: usize },
}

/// A request from the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Get {
        key: String,
    },
    Set {
        key: String,
        value: String,
    },
    /// `info-get-all <prefix>`: every key under the prefix at once, as `.vmx` lines. Our
    /// extension for the stream transport (a VMX answers it `0 Unknown command`, and the guest
    /// falls back to one `info-get` a key): under emulation each round trip costs milliseconds.
    GetAll {
        prefix: String,
    },
    /// `info-get-all-z <prefix>`: the same lines, zlib-compressed (our extension too; a host that
    /// does not know it answers `0 Unknown command` and the guest asks `info-get-all`). A
    /// container's config is mostly its 64-digit ID over and over: 3.3 KB become 0.4 KB, which
    /// over a UART is some 180 fewer interrupts of a 16-byte FIFO.
    GetAllDeflated {
        prefix: String,
    },
    /// Anything else (`log …`, `tools.set.version …`): answered `0 Unknown command` by our hosts.
    Other(String),
}

impl Request {
    pub fn get(key: &str) -> Self {
        Request::Get {
            key: key.to_string(),
        }
    }

    pub fn set(key: &str, value: &str) -> Self {
        Request::Set {
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    /// The request's bytes, checked against the guest's size limit.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RpcError> {
        let text = match self {
            Request::Get { key } => format!("info-get {key}"),
            Request::Set { key, value } => format!("info-set {key} {value}"),
            Request::GetAll { prefix } => format!("info-get-all {prefix}"),
            Request::GetAllDeflated { prefix } => format!("info-get-all-z {prefix}"),
            Request::Other(text) => text.clone(),
        };
        if text.len() > MAX_REQUEST {
            return Err(RpcError::TooLarge { len: text.len() });
        }
        Ok(text.into_bytes())
    }

    /// Parses a request as the VMX does: the command runs to the first space, for `info-set` the
    /// key to the next space and the value is all the rest. Trailing NULs are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, RpcError> {
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let text = std::str::from_utf8(&bytes[..end]).map_err(|_| RpcError::NotUtf8)?;
        let (cmd, rest) = text.split_once(' ').unwrap_or((text, ""));
        Ok(match cmd {
            "info-get" if !rest.is_empty() => Request::Get {
                key: rest.trim().to_string(),
            },
            "info-get-all" if !rest.trim().is_empty() => Request::GetAll {
                prefix: rest.trim().to_string(),
            },
            "info-get-all-z" if !rest.trim().is_empty() => Request::GetAllDeflated {
                prefix: rest.trim().to_string(),
            },
            "info-set" => match rest.split_once(' ') {
                Some((key, value)) if !key.is_empty() => Request::Set {
                    key: key.to_string(),
                    value: value.to_string(),
                },
                _ => Request::Other(text.to_string()),
            },
            _ => Request::Other(text.to_string()),
        })
    }
}

/// A reply from the host.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(Vec<u8>),
    Fail(String),
}

impl Reply {
    pub fn ok(data: impl Into<Vec<u8>>) -> Self {
        Reply::Ok(data.into())
    }

    pub fn fail(reason: &str) -> Self {
        Reply::Fail(reason.to_string())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let (flag, data): (&[u8], &[u8]) = match self {
            Reply::Ok(data) => (b"1 ", data),
            Reply::Fail(reason) => (b"0 ", reason.as_bytes()),
        };
        [flag, data].concat()
    }

    /// Parses `1 <data>` or `0 <reason>`. A bare `1` or `0` is accepted as having no data.
    pub fn parse(bytes: &[u8]) -> Result<Self, RpcError> {
        let (flag, data) = match bytes {
            [] => return Err(RpcError::EmptyReply),
            [flag] => (*flag, &[][..]),
            [flag, b' ', data @ ..] => (*flag, data),
            _ => (0, bytes),
        };
        match flag {
            b'1' => Ok(Reply::Ok(data.to_vec())),
            b'0' => Ok(Reply::Fail(
                String::from_utf8_lossy(data)
                    .trim_end_matches('\0')
                    .to_string(),
            )),
            _ => Err(RpcError::BadReply(
                String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_request_keeps_spaces_in_the_value() {
        let r = Request::parse(b"info-set guestinfo.a b c  d").unwrap();
        assert_eq!(r, Request::set("guestinfo.a", "b c  d"));
    }

    #[test]
    fn trailing_nul_is_ignored() {
        assert_eq!(
            Request::parse(b"info-get guestinfo.x\0").unwrap(),
            Request::get("guestinfo.x")
        );
    }

    #[test]
    fn set_without_value_is_not_a_set() {
        assert!(matches!(
            Request::parse(b"info-set guestinfo.x").unwrap(),
            Request::Other(_)
        ));
        assert!(matches!(
            Request::parse(b"info-get").unwrap(),
            Request::Other(_)
        ));
    }

    #[test]
    fn request_round_trips() {
        for r in [
            Request::get("guestinfo.k"),
            Request::set("guestinfo.k", "v w"),
            Request::GetAll {
                prefix: "guestinfo.".into(),
            },
            Request::GetAllDeflated {
                prefix: "guestinfo.".into(),
            },
        ] {
            assert_eq!(Request::parse(&r.to_bytes().unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn oversized_request_is_refused_before_sending() {
        let big = "x".repeat(MAX_REQUEST);
        assert_eq!(
            Request::set("guestinfo.k", &big).to_bytes(),
            Err(RpcError::TooLarge {
                len: MAX_REQUEST + "info-set guestinfo.k ".len()
            })
        );
    }

    #[test]
    fn replies_parse() {
        assert_eq!(Reply::parse(b"1 value").unwrap(), Reply::ok("value"));
        assert_eq!(Reply::parse(b"1 ").unwrap(), Reply::ok(""));
        assert_eq!(Reply::parse(b"1").unwrap(), Reply::ok(""));
        assert_eq!(
            Reply::parse(b"0 No value found").unwrap(),
            Reply::fail(NO_VALUE)
        );
        assert_eq!(Reply::parse(b"").unwrap_err(), RpcError::EmptyReply);
        assert!(matches!(
            Reply::parse(b"2 what").unwrap_err(),
            RpcError::BadReply(_)
        ));
        assert!(matches!(
            Reply::parse(b"1x").unwrap_err(),
            RpcError::BadReply(_)
        ));
    }

    #[test]
    fn reply_round_trips() {
        for r in [Reply::ok("a b"), Reply::fail("Permission denied")] {
            assert_eq!(Reply::parse(&r.to_bytes()).unwrap(), r);
        }
    }

    proptest::proptest! {
        #[test]
        fn parsers_are_total(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Request::parse(&bytes);
            let _ = Reply::parse(&bytes);
        }
    }
}
