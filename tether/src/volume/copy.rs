//! Copy-up (VIC's `CopyMode` 2, docker's named volumes): the image's files at a volume's path go
//! into the volume when it is empty, before it is mounted there: contents, owners, modes,
//! timestamps, symlinks, device nodes and FIFOs, extended attributes; hard links stay linked.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::sys::xattr;

/// Whether `dir` holds nothing but (possibly) `lost+found`.
pub fn is_empty(dir: &Path) -> Result<bool, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        if e.file_name() != "lost+found" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Copies everything under `from` into the directory `to` (which exists), and gives `to`
/// `from`'s owner, mode and times.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let mut links = HashMap::new();
    copy_dir(from, to, &mut links)?;
    let meta = std::fs::symlink_metadata(from).map_err(|e| fail(from, e))?;
    attributes(from, to, &meta)
}

fn fail(p: &Path, e: impl std::fmt::Display) -> String {
    format!("copying {}: {e}", p.display())
}

/// Hard links already copied: (device, inode) of the source to its copy.
type Links = HashMap<(u64, u64), std::path::PathBuf>;

fn copy_dir(from: &Path, to: &Path, links: &mut Links) -> Result<(), String> {
    let entries = std::fs::read_dir(from).map_err(|e| fail(from, e))?;
    for e in entries {
        let e = e.map_err(|e| fail(from, e))?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let meta = std::fs::symlink_metadata(&src).map_err(|e| fail(&src, e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&dst).map_err(|e| fail(&dst, e))?;
            copy_dir(&src, &dst, links)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| fail(&src, e))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| fail(&dst, e))?;
        } else {
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    std::fs::hard_link(first, &dst).map_err(|e| fail(&dst, e))?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), dst.clone());
            }
            if kind.is_file() {
                std::fs::copy(&src, &dst).map_err(|e| fail(&src, e))?;
            } else {
                let sflag = if kind.is_fifo() {
                    SFlag::S_IFIFO
                } else if kind.is_char_device() {
                    SFlag::S_IFCHR
                } else if kind.is_block_device() {
                    SFlag::S_IFBLK
                } else {
                    // A socket: meaningless without its process.
                    continue;
                };
                let mode = Mode::from_bits_truncate(meta.mode() & 0o7777);
                nix::sys::stat::mknod(&dst, sflag, mode, meta.rdev()).map_err(|e| fail(&dst, e))?;
            }
        }
        attributes(&src, &dst, &meta)?;
    }
    Ok(())
}

/// Owner, mode (not through a symlink), extended attributes and times of `src` onto `dst`.
fn attributes(src: &Path, dst: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dst,
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| fail(dst, e))?;
    let is_link = meta.file_type().is_symlink();
    if !is_link {
        // After the owner: chown clears set-user-ID and set-group-ID bits.
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| fail(dst, e))?;
    }
    for name in xattr::list(src).map_err(|e| fail(src, e))? {
        let value = xattr::get(src, &name).map_err(|e| fail(src, e))?;
        xattr::set(dst, &name, &value)
            .map_err(|e| fail(dst, format!("attribute {}: {e}", xattr::display(&name))))?;
    }
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| fail(dst, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_copied_with_links_modes_times_and_attributes() {
        let t = tempfile::tempdir().unwrap();
        let (from, to) = (t.path().join("from"), t.path().join("to"));
        std::fs::create_dir_all(from.join("sub/deeper")).unwrap();
        std::fs::create_dir(&to).unwrap();
        std::fs::write(from.join("sub/file"), "hello").unwrap();
        std::fs::set_permissions(
            from.join("sub/file"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::hard_link(from.join("sub/file"), from.join("hard")).unwrap();
        std::os::unix::fs::symlink("sub/file", from.join("link")).unwrap();
        nix::unistd::mkfifo(&from.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let old = TimeSpec::new(1_000_000, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &from.join("sub/file"),
            &old,
            &old,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        // A user attribute where the filesystem takes one (tmpfs does on recent kernels).
        let has_xattr = xattr::set(&from.join("sub/deeper"), b"user.vic", b"1").is_ok();
        std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o751)).unwrap();

        copy_tree(&from, &to).unwrap();
        assert_eq!(
            std::fs::read_to_string(to.join("sub/file")).unwrap(),
            "hello"
        );
        let m = std::fs::metadata(to.join("sub/file")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(m.mtime(), 1_000_000);
        assert_eq!(
            m.ino(),
            std::fs::metadata(to.join("hard")).unwrap().ino(),
            "still one file"
        );
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            Path::new("sub/file")
        );
        assert!(std::fs::symlink_metadata(to.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(to.join("sub/deeper").is_dir());
        assert_eq!(
            std::fs::metadata(&to).unwrap().mode() & 0o7777,
            0o751,
            "the volume's root takes the directory's mode"
        );
        if has_xattr {
            assert_eq!(
                xattr::get(&to.join("sub/deeper"), b"user.vic").unwrap(),
                b"1"
            );
        }
    }

    #[test]
    fn lost_and_found_alone_is_empty() {
        let t = tempfile::tempdir().unwrap();
        assert!(is_empty(t.path()).unwrap());
        std::fs::create_dir(t.path().join("lost+found")).unwrap();
        assert!(is_empty(t.path()).unwrap());
        std::fs::write(t.path().join("x"), "").unwrap();
        assert!(!is_empty(t.path()).unwrap());
    }
}
