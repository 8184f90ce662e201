//! Guestinfo transports behind one trait: the VMware backdoor (in the tether crate), RPC over a
//! byte stream ([`stream`]), and a `.vmx`-style file ([`vmx`]) for development and tests.

pub mod stream;
pub mod tools;
pub mod vmx;

use std::collections::BTreeMap;

use crate::extraconfig::{self, KeyValues, Source};
use crate::rpc::{Reply, Request, RpcError, NO_VALUE};

#[derive(Debug, thiserror::Error)]
pub enum GuestInfoError {
    #[error("guestinfo transport: {0}")]
    Io(#[from] std::io::Error),
    #[error("guestinfo RPC: {0}")]
    Rpc(#[from] RpcError),
    #[error("the host refused {request}: {reason}")]
    Refused { request: String, reason: String },
    #[error("guestinfo is not available: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Protocol(String),
}

/// Reads and writes guestinfo keys. `get` returns the raw value (`None` when the host holds no
/// such key); the VIC meanings of `""` and `<nil>` are applied by the decoder, not here.
pub trait GuestInfo: Send {
    fn get(&mut self, key: &str) -> Result<Option<String>, GuestInfoError>;
    fn set(&mut self, key: &str, value: &str) -> Result<(), GuestInfoError>;
    /// Sets several keys in order (a transport that can do it in one go overrides this).
    fn set_many(&mut self, pairs: &[(String, String)]) -> Result<(), GuestInfoError> {
        pairs.iter().try_for_each(|(k, v)| self.set(k, v))
    }
    /// Picks up changes made by the host since the last read (a file transport re-reads its file).
    fn refresh(&mut self) -> Result<(), GuestInfoError> {
        Ok(())
    }
    /// Every key under `prefix`, for a host store that can list them (`None`: it cannot).
    fn list(&mut self, _prefix: &str) -> Option<Vec<(String, String)>> {
        None
    }
    /// The tools' TCLO channel: sends the previous reply (empty at first) and returns the host's
    /// next request (empty: none pending). `Ok(None)`: this transport has no TCLO channel.
    fn tclo(&mut self, _reply: &[u8]) -> Result<Option<Vec<u8>>, GuestInfoError> {
        Ok(None)
    }
    /// One RPCI request of the tools (`tools.set.version ...`) and its raw reply; `Ok(None)`:
    /// this transport carries only guestinfo.
    fn rpci(&mut self, _request: &[u8]) -> Result<Option<Vec<u8>>, GuestInfoError> {
        Ok(None)
    }
}

/// The request that carries a TCLO poll over the stream transport: `tclo ` and the reply.
pub const TCLO_REQUEST: &[u8] = b"tclo ";

/// Sends raw RPCI request bytes and returns the raw reply bytes.
pub type RawCall<'a> = dyn FnMut(&[u8]) -> Result<Vec<u8>, GuestInfoError> + 'a;

/// Runs one request against a transport that speaks raw RPCI (`call` sends the bytes and returns
/// the reply bytes), with VMX reply semantics.
pub fn rpc_get(call: &mut RawCall<'_>, key: &str) -> Result<Option<String>, GuestInfoError> {
    let request = Request::get(key);
    match Reply::parse(&call(&request.to_bytes()?)?)? {
        Reply::Ok(data) => Ok(Some(String::from_utf8_lossy(&data).into_owned())),
        Reply::Fail(reason) if reason == NO_VALUE => Ok(None),
        Reply::Fail(reason) => Err(GuestInfoError::Refused {
            request: format!("info-get {key}"),
            reason,
        }),
    }
}

/// The `info-set` counterpart of [`rpc_get`].
pub fn rpc_set(call: &mut RawCall<'_>, key: &str, value: &str) -> Result<(), GuestInfoError> {
    let request = Request::set(key, value);
    match Reply::parse(&call(&request.to_bytes()?)?)? {
        Reply::Ok(_) => Ok(()),
        Reply::Fail(reason) => Err(GuestInfoError::Refused {
            request: format!("info-set {key}"),
            reason,
        }),
    }
}

/// Answers one RPCI request from `store`, as the VMX would. Used by every host-side server.
pub fn serve_request(store: &mut dyn GuestInfo, request: &[u8]) -> Reply {
    let request = match Request::parse(request) {
        Ok(r) => r,
        Err(e) => return Reply::Fail(e.to_string()),
    };
    match request {
        Request::Get { key } => match store.get(&key) {
            Ok(Some(value)) => Reply::ok(value),
            Ok(None) => Reply::fail(NO_VALUE),
            Err(e) => Reply::Fail(e.to_string()),
        },
        Request::Set { key, value } => {
            if !key.starts_with(crate::rpc::GUESTINFO_PREFIX) {
                return Reply::fail("Permission denied");
            }
            match store.set(&key, &value) {
                Ok(()) => Reply::ok(""),
                Err(e) => Reply::Fail(e.to_string()),
            }
        }
        Request::GetAll { prefix } => match store.list(&prefix) {
            Some(pairs) => Reply::ok(vmx::render(
                pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )),
            None => Reply::fail("Unknown command"),
        },
        Request::GetAllDeflated { prefix } => match store.list(&prefix) {
            Some(pairs) => Reply::ok(miniz_oxide::deflate::compress_to_vec_zlib(
                vmx::render(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).as_bytes(),
                6,
            )),
            None => Reply::fail("Unknown command"),
        },
        Request::Other(_) => Reply::fail("Unknown command"),
    }
}

impl GuestInfo for KeyValues {
    fn get(&mut self, key: &str) -> Result<Option<String>, GuestInfoError> {
        Ok(KeyValues::get(self, key).map(str::to_string))
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), GuestInfoError> {
        self.insert(key, value);
        Ok(())
    }

    fn list(&mut self, prefix: &str) -> Option<Vec<(String, String)>> {
        Some(
            self.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

/// Lets the extraconfig decoder read through a transport.
pub struct AsSource<'a>(pub &'a mut dyn GuestInfo);

impl Source for AsSource<'_> {
    fn get(&mut self, key: &str) -> Result<Option<String>, String> {
        self.0.get(key).map_err(|e| e.to_string())
    }
}

/// Writes encoded keys back as VIC's guest sink does: keys the host owns (those containing `/`) are
/// dropped, and empty values go as `<nil>`. Returns how many keys were written.
pub fn write_back(
    gi: &mut dyn GuestInfo,
    pairs: &BTreeMap<String, String>,
) -> Result<usize, GuestInfoError> {
    let mut written = 0;
    for (key, value) in pairs {
        if extraconfig::is_read_only_key(key) {
            continue;
        }
        let value = if value.is_empty() {
            extraconfig::NIL
        } else {
            value
        };
        gi.set(key, value)?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_sink_drops_host_keys_and_writes_nil() {
        let mut store = KeyValues::new();
        let pairs: BTreeMap<String, String> = [
            ("guestinfo.vice./sessions|a/cmd/Path", "/bin/sh"),
            ("guestinfo.vice..sessions|a.started", "true"),
            ("guestinfo.vice..sessions|a.detail.stoptime", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(write_back(&mut store, &pairs).unwrap(), 2);
        assert_eq!(store.get("guestinfo.vice./sessions|a/cmd/Path"), None);
        assert_eq!(
            store.get("guestinfo.vice..sessions|a.started"),
            Some("true")
        );
        assert_eq!(
            store.get("guestinfo.vice..sessions|a.detail.stoptime"),
            Some("<nil>")
        );
    }

    #[test]
    fn server_answers_like_the_vmx() {
        let mut store = KeyValues::new();
        store.insert("guestinfo.a", "x y");
        assert_eq!(
            serve_request(&mut store, b"info-get guestinfo.A"),
            Reply::ok("x y")
        );
        assert_eq!(
            serve_request(&mut store, b"info-get guestinfo.b"),
            Reply::fail(NO_VALUE)
        );
        assert_eq!(
            serve_request(&mut store, b"info-set guestinfo.b 1 2"),
            Reply::ok("")
        );
        assert_eq!(store.get("guestinfo.b"), Some("1 2"));
        assert_eq!(
            serve_request(&mut store, b"info-set other.b 1"),
            Reply::fail("Permission denied")
        );
        assert_eq!(
            serve_request(&mut store, b"log hello"),
            Reply::fail("Unknown command")
        );
    }

    #[test]
    fn client_maps_replies() {
        let mut store = KeyValues::new();
        store.insert("guestinfo.a", "v");
        let mut call = |req: &[u8]| -> Result<Vec<u8>, GuestInfoError> {
            Ok(serve_request(&mut store, req).to_bytes())
        };
        assert_eq!(
            rpc_get(&mut call, "guestinfo.a").unwrap(),
            Some("v".to_string())
        );
        assert_eq!(rpc_get(&mut call, "guestinfo.none").unwrap(), None);
        rpc_set(&mut call, "guestinfo.b", "w").unwrap();
        let err = rpc_set(&mut call, "nope", "w").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the host refused info-set nope: Permission denied"
        );
    }
}
