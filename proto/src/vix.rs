//! VIX guest operations, what a VCH and the guest's tools speak, as the VMX relays them
//! (`Vix_1_Relayed_Command`): the request header (little-endian, packed), the name/password
//! credential, the StartProgram body, and the reply
//! (`"<error> <errno> "` then the payload). Every length read from the host is checked against
//! what is there: a malformed request is an error value, never a panic.

/// Every request starts with it.
pub const MAGIC: u32 = 0xd00d_0001;
/// The packed request header: magic, version, four lengths, common flags (23 bytes), then
/// opcode, request flags, timeout, cookie, client handle, credential type (28).
pub const HEADER_LEN: usize = 51;

pub const OP_GET_TOOLS_STATE: u32 = 62;
pub const OP_START_PROGRAM: u32 = 185;
pub const OP_LIST_PROCESSES_EX: u32 = 186;
pub const OP_TERMINATE_PROCESS: u32 = 193;

/// `VIX_USER_CREDENTIAL_NAME_PASSWORD`.
pub const CREDENTIAL_NAME_PASSWORD: u32 = 1;
/// The reply's payload is binary (after a `#`), not a NUL-terminated string.
pub const FLAG_RETURNS_BINARY: u8 = 0x80;

/// VIX error codes (`vix.h`).
pub mod error {
    pub const OK: u32 = 0;
    pub const FAIL: u32 = 1;
    pub const INVALID_ARG: u32 = 3;
    pub const AUTHENTICATION_FAIL: u32 = 35;
    pub const UNRECOGNIZED_COMMAND_IN_GUEST: u32 = 3025;
    pub const INVALID_MESSAGE_HEADER: u32 = 10000;
    pub const INVALID_MESSAGE_BODY: u32 = 10001;
    pub const NO_SUCH_PROCESS: u32 = 20003;
}

/// The fields of a request header the guest acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub body_len: u32,
    pub credential_len: u32,
    pub common_flags: u8,
    pub opcode: u32,
    pub credential_type: u32,
}

/// A little-endian reader over a byte slice that reports running past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

/// A request: its header, body and credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: Header,
    pub body: &'a [u8],
    pub credential: &'a [u8],
}

/// Why a request could not be read: the VIX error to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub u32);

/// Parses a request (after the TCLO command name and its quoted argument).
pub fn parse(data: &[u8]) -> Result<Request<'_>, Malformed> {
    let bad_header = Malformed(error::INVALID_MESSAGE_HEADER);
    let mut r = Reader(data);
    let magic = r.u32().ok_or(bad_header)?;
    if magic != MAGIC {
        return Err(bad_header);
    }
    let _version = r.u16().ok_or(bad_header)?;
    let _total = r.u32().ok_or(bad_header)?;
    let _header_len = r.u32().ok_or(bad_header)?;
    let body_len = r.u32().ok_or(bad_header)?;
    let credential_len = r.u32().ok_or(bad_header)?;
    let common_flags = r.u8().ok_or(bad_header)?;
    let opcode = r.u32().ok_or(bad_header)?;
    let _request_flags = r.u32().ok_or(bad_header)?;
    let _timeout = r.u32().ok_or(bad_header)?;
    let _cookie = r.u64().ok_or(bad_header)?;
    let _client = r.u32().ok_or(bad_header)?;
    let credential_type = r.u32().ok_or(bad_header)?;
    let bad_body = Malformed(error::INVALID_MESSAGE_BODY);
    let body = r.take(body_len as usize).ok_or(bad_body)?;
    let credential = r.take(credential_len as usize).ok_or(bad_body)?;
    Ok(Request {
        header: Header {
            body_len,
            credential_len,
            common_flags,
            opcode,
            credential_type,
        },
        body,
        credential,
    })
}

/// The name of a name/password credential: two u32 lengths, then base64 of `name\0password\0`
/// (the password is not looked at).
pub fn credential_name(h: &Header, credential: &[u8]) -> Result<String, String> {
    use base64::Engine as _;
    if h.credential_type != CREDENTIAL_NAME_PASSWORD {
        return Err(format!("unsupported credential type {}", h.credential_type));
    }
    let trimmed = match credential.iter().rposition(|&b| b != 0) {
        Some(end) => &credential[..=end],
        None => &[][..],
    };
    let mut r = Reader(trimmed);
    let name_len = r.u32().ok_or("a truncated credential")? as usize;
    let _password_len = r.u32().ok_or("a truncated credential")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(r.0)
        .map_err(|e| format!("a credential that is not base64: {e}"))?;
    let name = decoded
        .get(..name_len)
        .ok_or("a credential shorter than its name")?;
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// A StartProgram request's program path and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartProgram {
    pub path: String,
    pub arguments: String,
}

/// Reads a StartProgram body: start-minimized flag, five u32 lengths (path, arguments, working
/// directory, environment count and length), then the NUL-terminated strings.
pub fn start_program(body: &[u8]) -> Result<StartProgram, Malformed> {
    let bad = Malformed(error::INVALID_MESSAGE_BODY);
    let mut r = Reader(body);
    let _minimized = r.u8().ok_or(bad)?;
    let path_len = r.u32().ok_or(bad)? as usize;
    let args_len = r.u32().ok_or(bad)? as usize;
    let _dir_len = r.u32().ok_or(bad)?;
    let _env_count = r.u32().ok_or(bad)?;
    let _env_len = r.u32().ok_or(bad)?;
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let path = text(r.take(path_len).ok_or(bad)?);
    let arguments = text(r.take(args_len).ok_or(bad)?);
    Ok(StartProgram { path, arguments })
}

/// A reply: `"<error> <errno> "`, then the payload, NUL-terminated (or after `#` when the
/// request asked for binary).
pub fn reply(h: Option<&Header>, err: u32, payload: &[u8]) -> Vec<u8> {
    let binary = h.is_some_and(|h| h.common_flags & FLAG_RETURNS_BINARY != 0);
    let mut out = format!("{err} 0 ").into_bytes();
    if binary {
        out.push(b'#');
    }
    out.extend_from_slice(payload);
    if !binary {
        out.push(0);
    }
    out
}

/// The TCLO command that carries a guest operation.
pub const RELAYED_COMMAND: &str = "Vix_1_Relayed_Command";

/// A guest operation as the VMX puts it into the TCLO channel: the command, a quoted request
/// name, a NUL, then the VIX `request`.
pub fn relayed(request: &[u8]) -> Vec<u8> {
    [format!("{RELAYED_COMMAND} \"vix\"\0").as_bytes(), request].concat()
}

/// A relayed StartProgram of `path arguments` with `user` as the name/password credential's
/// name (VIC's VCH: the container's ID).
pub fn start_program_as(user: &str, path: &str, arguments: &str) -> Vec<u8> {
    relayed(&request(
        OP_START_PROGRAM,
        &start_program_body(path, arguments),
        &credential(user, ""),
        CREDENTIAL_NAME_PASSWORD,
    ))
}

/// Builds a request as a VCH does (for tests and for `vch`'s side).
pub fn request(opcode: u32, body: &[u8], credential: &[u8], credential_type: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + body.len() + credential.len());
    let total = (HEADER_LEN + body.len() + credential.len()) as u32;
    v.extend_from_slice(&MAGIC.to_le_bytes());
    v.extend_from_slice(&5u16.to_le_bytes());
    v.extend_from_slice(&total.to_le_bytes());
    v.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    v.extend_from_slice(&(body.len() as u32).to_le_bytes());
    v.extend_from_slice(&(credential.len() as u32).to_le_bytes());
    v.push(0);
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&credential_type.to_le_bytes());
    v.extend_from_slice(body);
    v.extend_from_slice(credential);
    v
}

/// A name/password credential as a VCH sends it.
pub fn credential(name: &str, password: &str) -> Vec<u8> {
    use base64::Engine as _;
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_le_bytes());
    v.extend_from_slice(&(password.len() as u32).to_le_bytes());
    let raw = format!("{name}\0{password}\0");
    v.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(raw)
            .as_bytes(),
    );
    v.push(0);
    v
}

/// A StartProgram body as a VCH sends it.
pub fn start_program_body(path: &str, arguments: &str) -> Vec<u8> {
    let field = |s: &str| if s.is_empty() { 0 } else { s.len() as u32 + 1 };
    let mut v = vec![0u8];
    for len in [field(path), field(arguments), 0, 0, 0] {
        v.extend_from_slice(&len.to_le_bytes());
    }
    for s in [path, arguments] {
        if !s.is_empty() {
            v.extend_from_slice(s.as_bytes());
            v.push(0);
        }
    }
    v
}

/// A property of GetToolsState's reply (`vixOpenSource.h` ids, `vix.h` types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Property {
    Int32(i32, i32),
    String(i32, String),
    Bool(i32, bool),
}

/// Property ids the tools report.
pub mod property {
    pub const TOOLS_VERSION: i32 = 4500;
    pub const TOOLS_API_OPTIONS: i32 = 4501;
    pub const OS_FAMILY: i32 = 4502;
    pub const OS_VERSION: i32 = 4503;
    pub const GUEST_NAME: i32 = 4505;
    pub const TOOLS_PRODUCT_NAME: i32 = 4511;
    pub const OS_VERSION_SHORT: i32 = 4520;
    pub const START_PROGRAM_ENABLED: i32 = 4540;
    pub const LIST_PROCESSES_ENABLED: i32 = 4541;
    pub const TERMINATE_PROCESS_ENABLED: i32 = 4542;
}

/// A property list: each property's id, type and length (little-endian i32s), then its value
/// (a string NUL-terminated, a bool one byte).
pub fn property_list(props: &[Property]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in props {
        let (id, kind, value) = match p {
            Property::Int32(id, n) => (*id, 1i32, n.to_le_bytes().to_vec()),
            Property::String(id, s) => (*id, 2, [s.as_bytes(), &[0]].concat()),
            Property::Bool(id, b) => (*id, 3, vec![u8::from(*b)]),
        };
        v.extend_from_slice(&id.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&(value.len() as i32).to_le_bytes());
        v.extend_from_slice(&value);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_program_request_reads_back() {
        let body = start_program_body("kill", "TERM");
        let cred = credential("c0ffee", "secret");
        let req = request(OP_START_PROGRAM, &body, &cred, CREDENTIAL_NAME_PASSWORD);
        let r = parse(&req).unwrap();
        assert_eq!(r.header.opcode, OP_START_PROGRAM);
        assert_eq!(credential_name(&r.header, r.credential).unwrap(), "c0ffee");
        assert_eq!(
            start_program(r.body).unwrap(),
            StartProgram {
                path: "kill".into(),
                arguments: "TERM".into()
            }
        );
    }

    #[test]
    fn truncated_or_foreign_requests_are_errors_not_panics() {
        let body = start_program_body("reload", "");
        let req = request(OP_START_PROGRAM, &body, &credential("a", ""), 1);
        for cut in 0..req.len() {
            let _ = parse(&req[..cut]).map(|r| {
                let _ = credential_name(&r.header, r.credential);
                let _ = start_program(r.body);
            });
        }
        assert_eq!(
            parse(&req[..10]),
            Err(Malformed(error::INVALID_MESSAGE_HEADER))
        );
        assert_eq!(
            parse(&req[..HEADER_LEN + 3]),
            Err(Malformed(error::INVALID_MESSAGE_BODY))
        );
        let mut wrong = req.clone();
        wrong[0] ^= 1;
        assert_eq!(parse(&wrong), Err(Malformed(error::INVALID_MESSAGE_HEADER)));
        // A body length past the end.
        let mut long = req.clone();
        long[14..18].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&long), Err(Malformed(error::INVALID_MESSAGE_BODY)));
        let h = parse(&req).unwrap().header;
        assert!(credential_name(&h, b"\x01\0\0\0\0\0\0\0!!!").is_err());
        assert!(credential_name(
            &Header {
                credential_type: 7,
                ..h
            },
            b""
        )
        .is_err());
    }

    #[test]
    fn properties_are_header_then_value() {
        let list = property_list(&[
            Property::Int32(4501, 1),
            Property::String(4505, "web".into()),
            Property::Bool(4540, true),
        ]);
        let mut want = Vec::new();
        for x in [4501i32, 1, 4, 1] {
            want.extend_from_slice(&x.to_le_bytes());
        }
        for x in [4505i32, 2, 4] {
            want.extend_from_slice(&x.to_le_bytes());
        }
        want.extend_from_slice(b"web\0");
        for x in [4540i32, 3, 1] {
            want.extend_from_slice(&x.to_le_bytes());
        }
        want.push(1);
        assert_eq!(list, want);
    }

    #[test]
    fn replies_are_error_errno_then_the_payload() {
        assert_eq!(reply(None, 0, b"4242"), b"0 0 4242\0");
        let h = Header {
            body_len: 0,
            credential_len: 0,
            common_flags: FLAG_RETURNS_BINARY,
            opcode: 0,
            credential_type: 1,
        };
        assert_eq!(reply(Some(&h), 35, b"\x01\x02"), b"35 0 #\x01\x02");
    }
}
