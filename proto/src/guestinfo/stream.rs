//! Guestinfo RPC over a byte stream (a serial port, vsock, TCP or a Unix socket): the same RPCI
//! requests and replies as the backdoor carries, each in a frame of a 4-byte little-endian length
//! and the raw bytes (the framing of govmomi's toolbox Unix channel). This is how the host serves
//! guestinfo to a containerVM under QEMU/KVM and to the tether in process mode.

use std::io::{self, Read, Write};

use super::{rpc_get, rpc_set, serve_request, GuestInfo, GuestInfoError};

/// The largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a frame of {} bytes is over the {MAX_FRAME}-byte limit",
                payload.len()
            ),
        ));
    }
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the peer announced a frame of {len} bytes, over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(payload))
}

/// The guest side: a guestinfo transport over any byte stream. At each refresh it asks for every
/// `guestinfo.` key at once (`info-get-all-z`, else `info-get-all`) and answers reads from that
/// snapshot until the next refresh; a host without either extension gets one `info-get` a key.
pub struct StreamGuestInfo<S> {
    stream: S,
    snapshot: Option<crate::extraconfig::KeyValues>,
}

impl<S: Read + Write + Send> StreamGuestInfo<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            snapshot: None,
        }
    }

    /// Sends one raw request and returns the raw reply.
    pub fn call(&mut self, request: &[u8]) -> Result<Vec<u8>, GuestInfoError> {
        write_frame(&mut self.stream, request)?;
        read_frame(&mut self.stream)?.ok_or_else(|| {
            GuestInfoError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the host closed the guestinfo channel",
            ))
        })
    }
}

impl<S: Read + Write + Send> GuestInfo for StreamGuestInfo<S> {
    fn get(&mut self, key: &str) -> Result<Option<String>, GuestInfoError> {
        match &self.snapshot {
            Some(s) if key.starts_with(SNAPSHOT_PREFIX) => Ok(s.get(key).map(str::to_string)),
            _ => rpc_get(&mut |req| self.call(req), key),
        }
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), GuestInfoError> {
        rpc_set(&mut |req| self.call(req), key, value)?;
        if let Some(s) = &mut self.snapshot {
            s.insert(key, value);
        }
        Ok(())
    }

    fn refresh(&mut self) -> Result<(), GuestInfoError> {
        use crate::rpc::{Reply, Request};
        let prefix = SNAPSHOT_PREFIX.to_string();
        let deflated = Request::GetAllDeflated {
            prefix: prefix.clone(),
        };
        let text = match Reply::parse(&self.call(&deflated.to_bytes()?)?)? {
            Reply::Ok(z) => Some(
                miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&z, MAX_SNAPSHOT).map_err(
                    |e| GuestInfoError::Protocol(format!("info-get-all-z: {:?}", e.status)),
                )?,
            ),
            // A host without the compressed form: the plain one, else a key at a time.
            Reply::Fail(_) => {
                match Reply::parse(&self.call(&Request::GetAll { prefix }.to_bytes()?)?)? {
                    Reply::Ok(text) => Some(text),
                    Reply::Fail(_) => None,
                }
            }
        };
        self.snapshot = text
            .map(|text| {
                super::vmx::parse(&String::from_utf8_lossy(&text))
                    .map(|pairs| pairs.into_iter().collect())
                    .map_err(|e| GuestInfoError::Protocol(format!("info-get-all: {e}")))
            })
            .transpose()?;
        Ok(())
    }

    /// `tclo <reply>` answered `1 <request>` (`1 ` alone: nothing pending), byte for byte what a
    /// VMX puts into the TCLO channel; a host without the channel answers `0 ...`.
    fn tclo(&mut self, reply: &[u8]) -> Result<Option<Vec<u8>>, GuestInfoError> {
        let answer = self.call(&[super::TCLO_REQUEST, reply].concat())?;
        Ok(answer.strip_prefix(b"1 ").map(<[u8]>::to_vec))
    }

    fn rpci(&mut self, request: &[u8]) -> Result<Option<Vec<u8>>, GuestInfoError> {
        self.call(request).map(Some)
    }
}

/// The most a compressed snapshot may inflate to (a VMX holds far less guestinfo than this).
const MAX_SNAPSHOT: usize = 16 << 20;

/// What a snapshot holds: every key a guest may read.
const SNAPSHOT_PREFIX: &str = crate::rpc::GUESTINFO_PREFIX;

/// The host side: answers requests from `stream` out of `store` until the stream ends.
pub fn serve(stream: &mut (impl Read + Write), store: &mut dyn GuestInfo) -> io::Result<()> {
    serve_with_tools(stream, store, None)
}

/// [`serve`], and the tools' channels when `tools` is given: `tclo <reply>` is answered
/// `1 <next request>`, and RPCI requests that are not guestinfo's go to `tools`. Without it, a
/// `tclo` poll is answered `0 Unknown command`, as by a host with no such channel.
pub fn serve_with_tools(
    stream: &mut (impl Read + Write),
    store: &mut dyn GuestInfo,
    mut tools: Option<&mut dyn super::tools::ToolsHost>,
) -> io::Result<()> {
    while let Some(request) = read_frame(stream)? {
        let bytes = match (
            request.strip_prefix(super::TCLO_REQUEST),
            tools.as_deref_mut(),
        ) {
            (Some(reply), Some(t)) => [b"1 ".as_slice(), &t.tclo(reply)].concat(),
            (None, Some(t)) if !request.starts_with(b"info-") => t.rpci(&request),
            _ => {
                // The host re-reads its store for every request so that changes made beside it
                // are seen.
                let reply = match store.refresh() {
                    Ok(()) => serve_request(store, &request),
                    Err(e) => crate::rpc::Reply::Fail(e.to_string()),
                };
                reply.to_bytes()
            }
        };
        write_frame(stream, &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::extraconfig::KeyValues;

    #[test]
    fn client_and_server_over_a_socket() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut store: KeyValues = [("guestinfo.vice./common/id", "abc")].into_iter().collect();
            serve(&mut b, &mut store).unwrap();
            store
        });
        let mut gi = StreamGuestInfo::new(a);
        assert_eq!(
            gi.get("guestinfo.vice./common/id").unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(gi.get("guestinfo.vice./nothing").unwrap(), None);
        gi.set("guestinfo.vice..sessions|abc.started", "true")
            .unwrap();
        // One request brings every key; reads come from it, writes go through and into it.
        gi.refresh().unwrap();
        assert!(gi.snapshot.is_some(), "the host lists its keys");
        assert_eq!(
            gi.get("guestinfo.vice./common/id").unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(
            gi.get("guestinfo.vice..sessions|abc.started")
                .unwrap()
                .as_deref(),
            Some("true")
        );
        assert_eq!(gi.get("guestinfo.vice./nothing").unwrap(), None);
        drop(gi);
        let store = server.join().unwrap();
        assert_eq!(
            store.get("guestinfo.vice..sessions|abc.started"),
            Some("true")
        );
    }

    /// A host that answers `Unknown command` to the requests starting with any of `refuse`;
    /// returns the commands it was sent.
    fn old_host(
        mut stream: UnixStream,
        refuse: &'static [&'static str],
    ) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut store: KeyValues = [("guestinfo.vice./common/id", "abc")].into_iter().collect();
            let mut seen = Vec::new();
            while let Some(request) = read_frame(&mut stream).unwrap() {
                let text = String::from_utf8_lossy(&request).to_string();
                let cmd = text.split(' ').next().unwrap_or("").to_string();
                let reply = if refuse.contains(&cmd.as_str()) {
                    crate::rpc::Reply::fail("Unknown command")
                } else {
                    crate::guestinfo::serve_request(&mut store, &request)
                };
                seen.push(cmd);
                write_frame(&mut stream, &reply.to_bytes()).unwrap();
            }
            seen
        })
    }

    #[test]
    fn a_snapshot_comes_compressed_else_plain_else_not_at_all() {
        for (refuse, snapshot, asked) in [
            (&[][..], true, &["info-get-all-z"][..]),
            (
                &["info-get-all-z"][..],
                true,
                &["info-get-all-z", "info-get-all"][..],
            ),
            (
                &["info-get-all-z", "info-get-all"][..],
                false,
                &["info-get-all-z", "info-get-all", "info-get"][..],
            ),
        ] {
            let (a, b) = UnixStream::pair().unwrap();
            let host = old_host(b, refuse);
            let mut gi = StreamGuestInfo::new(a);
            gi.refresh().unwrap();
            assert_eq!(gi.snapshot.is_some(), snapshot, "refusing {refuse:?}");
            // Read from the snapshot, or a key at a time.
            assert_eq!(
                gi.get("guestinfo.vice./common/id").unwrap().as_deref(),
                Some("abc")
            );
            drop(gi);
            assert_eq!(host.join().unwrap(), asked, "refusing {refuse:?}");
        }
    }

    #[test]
    fn a_compressed_snapshot_that_does_not_inflate_is_an_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let host = std::thread::spawn(move || {
            let _ = read_frame(&mut b).unwrap();
            write_frame(&mut b, b"1 not zlib at all").unwrap();
        });
        let mut gi = StreamGuestInfo::new(a);
        let e = gi.refresh().unwrap_err().to_string();
        assert!(e.contains("info-get-all-z"), "{e}");
        host.join().unwrap();
    }

    #[test]
    fn oversized_frame_is_refused_without_allocating() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0x7f];
        let err = read_frame(&mut input).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn truncated_frame_is_an_error_and_empty_stream_is_the_end() {
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).unwrap().is_none());
        let mut short: &[u8] = &[5, 0, 0, 0, b'a'];
        assert_eq!(
            read_frame(&mut short).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
        let mut half: &[u8] = &[5, 0];
        assert_eq!(
            read_frame(&mut half).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
