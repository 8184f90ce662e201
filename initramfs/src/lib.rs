//! A cpio archive in the "newc" format the kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`): for each entry a 110-byte ASCII
//! header (`070701` and 13 fields of 8 hex digits), the name with its NUL padded to 4 bytes, the
//! data padded to 4 bytes; then an entry named `TRAILER!!!`. Optionally gzip-compressed.

pub mod modules;

use std::io::Write;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("entry name {0:?}: must be relative, without `..`, NUL or a trailing slash")]
    BadName(String),
    #[error("entry {0:?} is larger than the format's 4 GiB")]
    TooLarge(String),
    #[error("writing the archive: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice(u32, u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: String,
    mode: u32,
    kind: Kind,
}

/// An archive being built. Entries are written in the order added; add directories before what
/// they hold.
#[derive(Default, Debug)]
pub struct Archive {
    entries: Vec<Entry>,
}

fn check(name: &str) -> Result<String, CpioError> {
    let n = name.trim_start_matches('/');
    if n.is_empty()
        || n.contains('\0')
        || n.ends_with('/')
        || n.split('/').any(|p| p == ".." || p.is_empty())
    {
        return Err(CpioError::BadName(name.to_string()));
    }
    Ok(n.to_string())
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, name: &str, perm: u32) -> Result<&mut Self, CpioError> {
        self.push(name, S_IFDIR | (perm & 0o7777), Kind::Dir)
    }

    pub fn file(&mut self, name: &str, perm: u32, data: Vec<u8>) -> Result<&mut Self, CpioError> {
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge(name.to_string()));
        }
        self.push(name, S_IFREG | (perm & 0o7777), Kind::File(data))
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> Result<&mut Self, CpioError> {
        self.push(name, S_IFLNK | 0o777, Kind::Symlink(target.to_string()))
    }

    /// A character device node (e.g. `dev/console` 5:1), there before devtmpfs is mounted.
    pub fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        self.push(
            name,
            S_IFCHR | (perm & 0o7777),
            Kind::CharDevice(major, minor),
        )
    }

    fn push(&mut self, name: &str, mode: u32, kind: Kind) -> Result<&mut Self, CpioError> {
        let name = check(name)?;
        self.entries.push(Entry { name, mode, kind });
        Ok(self)
    }

    /// The uncompressed archive.
    pub fn write(&self, w: &mut impl Write) -> Result<(), CpioError> {
        let mut out = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let (data, rdev, nlink): (&[u8], (u32, u32), u32) = match &e.kind {
                Kind::Dir => (&[], (0, 0), 2),
                Kind::File(d) => (d, (0, 0), 1),
                Kind::Symlink(t) => (t.as_bytes(), (0, 0), 1),
                Kind::CharDevice(ma, mi) => (&[], (*ma, *mi), 1),
            };
            entry(&mut out, i as u32 + 1, e.mode, nlink, rdev, &e.name, data);
        }
        entry(&mut out, 0, 0, 1, (0, 0), TRAILER, &[]);
        w.write_all(&out)?;
        Ok(())
    }

    /// The archive, gzip-compressed (what the kernel's initramfs unpacker takes).
    pub fn write_gzip(&self, w: &mut impl Write) -> Result<(), CpioError> {
        let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::best());
        self.write(&mut gz)?;
        gz.finish()?;
        Ok(())
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(MAGIC.as_bytes());
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc() {
        let mut a = Archive::new();
        a.dir("bin", 0o755)
            .unwrap()
            .file("/bin/x", 0o755, b"hello".to_vec())
            .unwrap();
        let mut out = Vec::new();
        a.write(&mut out).unwrap();
        assert_eq!(&out[..6], b"070701");
        // First header: ino 1, directory 0755, nlink 2, name "bin" (4 with NUL).
        assert_eq!(&out[6..22], b"00000001000041ed");
        assert_eq!(&out[110..114], b"bin\0");
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/x\0"), "leading slashes are dropped");
        // The trailer's header (110) and name with NUL (11) padded to 124: four zero bytes end it.
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }

    #[test]
    fn names_are_checked() {
        let mut a = Archive::new();
        for bad in ["", "/", "a/../b", "a//b", "dir/", "nul\0"] {
            assert!(a.file(bad, 0o644, Vec::new()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gnu_cpio_reads_it_back() {
        let dir = std::env::temp_dir().join(format!("cpio-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let have = std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_ok();
        if !have {
            eprintln!("skipped: GNU cpio is not installed");
            return;
        }
        let mut a = Archive::new();
        a.dir("etc", 0o755)
            .unwrap()
            .file("etc/motd", 0o644, b"odd length!".to_vec())
            .unwrap()
            .symlink("motd", "etc/motd")
            .unwrap();
        let mut gz = Vec::new();
        a.write_gzip(&mut gz).unwrap();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("gzip -dc | cpio -id --quiet")
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&gz).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(dir.join("etc/motd")).unwrap(), b"odd length!");
        assert_eq!(
            std::fs::read_link(dir.join("motd")).unwrap(),
            std::path::PathBuf::from("etc/motd")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
