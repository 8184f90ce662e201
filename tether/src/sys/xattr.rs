//! Extended attributes of a path, not following a final symlink (the volume copy-up keeps them:
//! security capabilities, ACLs, SELinux labels, user attributes).
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a path"))
}

/// Calls `f(buffer)` with a growing buffer until the value fits; `f` returns the length or -1.
fn sized(mut f: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = f(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 20 {
            return Err(e);
        }
        let len = buf.len() * 4;
        buf.resize(len, 0);
    }
}

/// The names of `path`'s extended attributes (none where the filesystem has none).
pub fn list(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let p = c_path(path)?;
    let names = sized(|buf| {
        // SAFETY: llistxattr writes at most `buf.len()` bytes into the live buffer and reads the
        // NUL-terminated path.
        unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    });
    match names {
        Ok(b) => Ok(b
            .split(|&c| c == 0)
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The value of attribute `name` of `path`.
pub fn get(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let p = c_path(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    sized(|buf| {
        // SAFETY: lgetxattr writes at most `buf.len()` bytes into the live buffer and reads the
        // two NUL-terminated strings.
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    })
}

/// Sets attribute `name` of `path` to `value`.
pub fn set(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let p = c_path(path)?;
    let n = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lsetxattr reads the two NUL-terminated strings and `value.len()` bytes of the live
    // slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An attribute's name for messages.
pub fn display(name: &[u8]) -> String {
    OsStr::from_bytes(name).to_string_lossy().into_owned()
}
